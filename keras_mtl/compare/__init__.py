"""The comparison: strategies against each other and against single-task
learning, on real data, over several seeds.

    python -m keras_mtl.compare                          # Multi-Fashion
    python -m keras_mtl.compare --dataset=yeast --strategies=ew,uw,pcgrad

trains every chosen strategy of `keras_mtl.weighting` and the single-task
baselines (one model per task, same network) with the same data, optimizer,
epochs and seeds, then writes a markdown table and a CSV (every task metric,
mean ± std over seeds; Δm% against single-task learning in both conventions;
time per step and its ratio to equal weighting) and PNG figures (task
weights over training, per-task metric bars, metric against training time).

Modules, top floor of the package (they only use the floors below):

- `problems`: per data set, the loader, the network and the metrics
  (Multi-MNIST/Multi-Fashion with the LeNet of Sener & Koltun, yeast with an
  MLP, the Turkish treebank with an embedding + BiGRU, dense digits with a
  small encoder-decoder);
- `runner`: trains one configuration (a strategy, or the single-task
  baselines, with one seed) and returns a `RunResult`;
- `comparison`: `ComparisonConfig` and `run_comparison`, the loop over
  seeds and methods and the files written;
- `report`: Δm% in both conventions, the summary table, markdown and CSV;
- `plots`: the figures (matplotlib, imported only there);
- `__main__`: the absl command line.

Δm%, the relative multi-task performance against single-task learning
(STL), has two sign conventions in the literature; both are reported:

- "Δm% ↓ (Nash-MTL)": Navon et al., Multi-Task Learning as a Bargaining
  Game, ICML 2022 (arXiv:2202.01017), and the tables that follow it (FAMO,
  ...): Δm% = 100/K Σ_k (-1)^δ_k (M_m,k - M_b,k) / M_b,k over all K metrics,
  δ_k = 1 when higher is better. Lower is better; positive = worse than STL.
- "Δm% ↑ (Maninis/LibMTL)": Maninis et al., Attentive Single-Tasking of
  Multiple Tasks, CVPR 2019 (arXiv:1904.08918), Vandenhende et al.'s survey
  (TPAMI 2021) and LibMTL's `count_improvement`:
  Δm% = 100/T Σ_t (-1)^l_t (M_m,t - M_b,t) / M_b,t, l_t = 1 when lower is
  better (several metrics of a task averaged first). Higher is better;
  positive = better than STL.

With one metric per task, as in every problem here but dense digits, one
is the negative of the other. See `keras_mtl.compare.report`.
"""

from keras_mtl.utils.backend import require_tensorflow

# Checked first, so that a missing TensorFlow is named before anything else.
require_tensorflow("keras_mtl.compare (its data pipelines are tf.data)")

from keras_mtl.compare.comparison import (  # noqa: E402
    DEFAULT_STRATEGIES,
    ComparisonConfig,
    run_comparison,
)
from keras_mtl.compare.problems import PROBLEMS, Problem  # noqa: E402
from keras_mtl.compare.report import delta_m_drop, delta_m_improvement  # noqa: E402
from keras_mtl.compare.runner import (  # noqa: E402
    RunResult,
    train_single_task,
    train_strategy,
)

__all__ = [
    "DEFAULT_STRATEGIES",
    "PROBLEMS",
    "ComparisonConfig",
    "Problem",
    "RunResult",
    "delta_m_drop",
    "delta_m_improvement",
    "run_comparison",
    "train_single_task",
    "train_strategy",
]
