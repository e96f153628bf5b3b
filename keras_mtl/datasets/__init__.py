"""Real multi-task data sets that a machine reaching only package registries can get.

One module per data set, each with `load(...)` (a batched `tf.data.Dataset`
of `(inputs, {task: target})`, or `(inputs, targets, sample_weights)`) and
`load_arrays(...)` (numpy):

- `multi_mnist`: Multi-MNIST, Multi-Fashion, Multi-(Fashion+MNIST); tasks
  "left" and "right" (10 classes each).
- `turkish_treebank`: token tagging; tasks "upos", "xpos", "case", "deprel",
  with per-token sample weights that are 0 on padding.
- `yeast`: 14 binary tasks "label_0".."label_13" on 103 features.
- `dense_digits`: pixel-wise "segmentation", "edges" and "depth" on two
  overlapping real digits (scikit-learn's digits, offline).

`TaskSampler` trains on one data set per task: each batch comes from one
task's data set, drawn uniformly, in proportion to the sizes or annealed,
and the other tasks' targets are marked missing.

`load_arrays` needs only numpy (and scikit-learn for the digits of
`dense_digits`), on every Keras backend. `load` and
`TaskSampler` build `tf.data` pipelines and need TensorFlow (an ImportError
says what to install where it is missing); Keras feeds `tf.data` to the
JAX backend too.

`paths` finds the files (argument, `KERAS_MTL_DATA_DIR`, per-data-set
variables, the packages' install places) and says how to fetch them;
`scripts/fetch_data.sh` fetches all of them.
"""

from keras_mtl.datasets import (
    dense_digits,
    multi_mnist,
    paths,
    turkish_treebank,
    yeast,
)
from keras_mtl.datasets.task_sampler import TaskSampler

__all__ = [
    "TaskSampler",
    "dense_digits",
    "multi_mnist",
    "paths",
    "turkish_treebank",
    "yeast",
]
