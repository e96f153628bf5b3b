"""Loss-weighting strategies on the scale-imbalanced regression toy.

The MTRegression problem of GradNorm, reused by SLAW (methods.md C1):
T tasks f_t(x) = sigma_t * tanh((B + E_t) x) with x in R^250 ~ N(0, 0.01^2),
a shared B ~ N(0, 10^2) and per-task E_t ~ N(0, 3.5^2) (100 x 250), outputs
in R^100, 10,000 samples split 90/10. The model is a 4-layer tanh trunk of
100 units with one linear head per task, trained with Adam (lr 7e-4,
gradient clipping 0.5, batch 304) as in the SLAW authors' configs.

For every loss-based strategy the script prints:
- the normalised test loss, mean_t MSE_t / sigma_t^2 (lower is better; what
  balanced methods improve);
- the weight error against the ideal weights w* = T (1/sigma^2) / sum(1/sigma^2):
  mean_t (T w_t / sum(w) - w*_t)^2, with w the strategy's effective
  weights averaged over the last epoch;
- the training step time under XLA (and without) as a ratio to equal
  weighting; each strategy is timed in alternation with its own equal
  weighting reference (`_timing.time_interleaved`: the compiled training
  step alone, on batches held in memory), so that the ratio is not the
  machine's load drifting between two measurements;
- for strategies that recompute the losses after the update (FAMO), the
  target "one extra forward pass": (EW step + forward pass) / EW step,
  with the forward pass (and task losses) timed on the same batch.

DTP needs a per-task KPI in [0, 1], which regression has not: it runs with
the cosine similarity of prediction and target as KPI, and its equal
weighting reference computes the same metric.

    python benchmarks/loss_weighting_regression.py   # 10 tasks, sigma_t = t
    python benchmarks/loss_weighting_regression.py --sigmas=1,10 --steps=3000
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import time_interleaved  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_mtl  # noqa: E402

flags.DEFINE_list("sigmas", [str(t) for t in range(1, 11)], "Output scales.")
flags.DEFINE_list("strategies", [], "Names (default: every loss-based strategy).")
flags.DEFINE_integer("steps", 2000, "Training steps per strategy (paper: 9,900).")
flags.DEFINE_integer("timing_steps", 100, "Steps per timed epoch.")
flags.DEFINE_integer("timing_rounds", 7, "Timed epochs per model (median).")
flags.DEFINE_integer("seed", 0, "Seed of the data and the initial weights.")
FLAGS = flags.FLAGS

BATCH = 304
# Strategies that cannot run on this problem with default arguments.
_SKIPPED = {"static": "needs explicit weights"}
# Strategies that need a per-task KPI metric in [0, 1]: regression tasks have
# none, so they (and their equal-weighting timing reference) are compiled
# with the cosine similarity of prediction and target as the KPI (DTP clips
# it to [epsilon, max_kpi]).
_KPI = {"dtp": "cosine_similarity"}


def mtregression(sigmas, seed, samples=10_000):
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 10.0, size=(100, 250))
    x = rng.normal(0.0, 0.01, size=(samples, 250)).astype("float32")
    targets = {}
    for t, sigma in enumerate(sigmas):
        weights = base + rng.normal(0.0, 3.5, size=(100, 250))
        targets[f"task_{t}"] = (sigma * np.tanh(x @ weights.T)).astype("float32")
    cut = int(0.9 * samples)
    train = (x[:cut], {k: v[:cut] for k, v in targets.items()})
    test = (x[cut:], {k: v[cut:] for k, v in targets.items()})
    return train, test


def build_model(num_tasks):
    inputs = keras.Input((250,))
    h = inputs
    for i in range(4):
        h = keras.layers.Dense(100, activation="tanh", name=f"trunk_{i}")(h)
    outputs = {f"task_{t}": keras.layers.Dense(100)(h) for t in range(num_tasks)}
    return keras_mtl.MultiTaskModel(inputs, outputs, name="mtregression")


def loss_strategies():
    names = []
    for name in keras_mtl.weighting.available():
        cls = keras_mtl.weighting.registry.lookup(name)
        if cls.requires == "losses" and name not in _SKIPPED:
            names.append(name)
    return names


def compiled(name, num_tasks, jit_compile, kpi=None):
    """The model compiled with strategy `name`; with `kpi`, every task also
    gets that metric (and a strategy with a `kpi` argument uses it)."""
    keras.utils.set_random_seed(FLAGS.seed)
    model = build_model(num_tasks)
    strategy = name
    if kpi is not None and name != "ew":
        strategy = {"class_name": name, "config": {"kpi": kpi}}
    model.compile(
        optimizer=keras.optimizers.Adam(7e-4, clipnorm=0.5),
        loss="mse",
        loss_weighting=strategy,
        metrics=[kpi] if kpi else None,
        jit_compile=jit_compile,
    )
    return model


def main(argv):
    del argv
    sigmas = np.array([float(s) for s in FLAGS.sigmas])
    num_tasks = len(sigmas)
    (x, y), (x_test, y_test) = mtregression(sigmas, FLAGS.seed)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(9000, seed=0)
    train = train.batch(BATCH, drop_remainder=True).repeat()
    ideal = (1 / sigmas**2) / np.sum(1 / sigmas**2) * num_tasks
    names = FLAGS.strategies or loss_strategies()
    for name, reason in _SKIPPED.items():
        print(f"skipped {name}: {reason}")
    print(
        f"{num_tasks} tasks, sigmas {sigmas.tolist()}, {FLAGS.steps} steps of "
        f"batch {BATCH}.\n"
        f"{'strategy':<10} {'norm. loss':>10} {'weight err':>10} "
        f"{'x EW':>8} {'target':>7} {'x EW XLA':>8} {'target':>7} "
        f"{'EW ms/step':>10} {'(XLA)':>6}"
    )
    for name in ["ew", *[n for n in names if n != "ew"]]:
        model = compiled(name, num_tasks, jit_compile=False, kpi=_KPI.get(name))
        epochs = max(1, FLAGS.steps // 100)
        history = model.fit(train, steps_per_epoch=100, epochs=epochs, verbose=0)
        result = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
        normalised = np.mean(
            [result[f"task_{t}_loss"] / s**2 for t, s in enumerate(sigmas)]
        )
        weights = np.array(
            [history.history[f"task_{t}_weight"][-1] for t in range(num_tasks)]
        )
        weight_error = np.mean((num_tasks * weights / weights.sum() - ideal) ** 2)
        row = f"{name:<10} {normalised:>10.4f} {weight_error:>10.4f}"
        references = []
        for xla in (False, True):
            ratio, target, reference = timing_ratio(name, num_tasks, xla, train)
            row += f" {ratio:>8.3f}" + (f" {target:>7.3f}" if target else " " * 8)
            references.append(reference)
        row += f" {1e3 * references[0]:>10.2f} {1e3 * references[1]:>6.2f}"
        print(row, flush=True)


def timing_ratio(name, num_tasks, jit_compile, train):
    """(strategy / EW step time, the extra-forward target or None, EW's
    seconds per step)."""
    kpi = _KPI.get(name)
    strategy_model = compiled(name, num_tasks, jit_compile, kpi)
    candidates = {
        "ew": compiled("ew", num_tasks, jit_compile, kpi),
        name: strategy_model,
    }
    extra_forward = strategy_model.loss_weighting.uses_post_step_losses
    if extra_forward:
        candidates["forward"] = forward_runner(strategy_model, train, jit_compile)
    times = time_interleaved(candidates, train, FLAGS.timing_steps, FLAGS.timing_rounds)
    target = None
    if extra_forward:
        target = (times["ew"] + times["forward"]) / times["ew"]
    return times[name] / times["ew"], target, times["ew"]


def forward_runner(model, train, jit_compile):
    """Runs `timing_steps` forward passes with the task losses, compiled
    like the training step, on batches held in memory (as the timed steps
    of `time_interleaved`)."""
    iterator = iter(train.take(8).cache().repeat())
    losses = {t: keras.losses.MeanSquaredError() for t in model.task_names}

    @tf.function(jit_compile=jit_compile)
    def forward(x, y):
        pred = model(x, training=True)
        return tf.add_n([losses[t](y[t], pred[t]) for t in model.task_names])

    def run():
        for _ in range(FLAGS.timing_steps):
            x, y = next(iterator)
            forward(x, y).numpy()

    return run


if __name__ == "__main__":
    app.run(main)
