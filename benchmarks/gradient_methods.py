"""Step time of every gradient-based strategy, as ratios measured in one run.

For T = 2, 4, 8 tasks on a small CNN, with XLA off and on, the script times
`MultiTaskModel.fit` steps for equal weighting (one backward pass), for the
per-task gradients alone (a strategy that only sums the rows of the (T, P)
matrix: the cost of the gradient engine), and for every registered strategy
that needs per-task gradients, plus the representation-gradient ("UB")
variants. It prints milliseconds per step, the ratio to equal weighting,
the ratio to the per-task gradients alone (the cost of the aggregation
itself) and the allocator's peak memory.

    python benchmarks/gradient_methods.py                 # everything
    python benchmarks/gradient_methods.py --tasks=2,4 --methods=mgda,pcgrad --xla=true
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import time_fit_steps  # noqa: E402
from absl import app, flags  # noqa: E402
from keras import ops  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.weighting.gradient_aggregation import GradientAggregation  # noqa: E402

flags.DEFINE_list("tasks", ["2", "4", "8"], "Numbers of tasks.")
flags.DEFINE_list("methods", [], "Strategy names (default: every gradient method).")
flags.DEFINE_list("xla", ["false", "true"], "XLA settings to run.")
flags.DEFINE_integer("steps", 20, "Timed steps per epoch.")
flags.DEFINE_integer("repeats", 3, "Timed epochs (the median is reported).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
FLAGS = flags.FLAGS


class SumRows(GradientAggregation):
    """The per-task gradients and nothing else: update = sum of rows."""

    supports_rep_grad = True

    def call(self, grads, losses=None, training=True):
        return ops.sum(grads, axis=0), ops.ones((grads.shape[0],))


def small_cnn(num_tasks):
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    outputs = {f"task_{t}": keras.layers.Dense(10)(h) for t in range(num_tasks)}
    return keras_mtl.MultiTaskModel(inputs, outputs)


def dataset(num_tasks, batch_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size * 4, 32, 32, 3)).astype("float32")
    y = {
        f"task_{t}": rng.integers(0, 10, size=(batch_size * 4,)).astype("int32")
        for t in range(num_tasks)
    }
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat()


def gradient_methods():
    names = []
    for name in keras_mtl.weighting.available():
        cls = keras_mtl.weighting.registry.lookup(name)
        if cls.requires in ("gradients", "gramian"):
            names.append(name)
    return names


def variants(names):
    """(label, strategy factory) pairs, with the rep_grad and Nash options."""
    result = [("ew", lambda: "ew"), ("per-task grads", SumRows)]
    result.append(("per-task rep grads", lambda: SumRows(rep_grad=True)))
    for name in names:
        cls = keras_mtl.weighting.registry.lookup(name)
        result.append((name, lambda cls=cls: cls()))
        if cls.supports_rep_grad:
            result.append((f"{name} (rep_grad)", lambda cls=cls: cls(rep_grad=True)))
        if name == "nash_mtl":
            result.append(
                ("nash_mtl (every 50)", lambda cls=cls: cls(update_weights_every=50))
            )
    return result


def main(argv):
    del argv
    names = FLAGS.methods or gradient_methods()
    print(
        f"{'T':>2} {'xla':>5}  {'method':<24} {'ms/step':>8} {'x EW':>6} "
        f"{'x grads':>8} {'peak MB':>8}"
    )
    for num_tasks in [int(t) for t in FLAGS.tasks]:
        for xla in [v.lower() == "true" for v in FLAGS.xla]:
            data = dataset(num_tasks, FLAGS.batch_size)
            reference = {}
            for label, factory in variants(names):
                keras.utils.set_random_seed(0)
                model = small_cnn(num_tasks)
                model.compile(
                    optimizer="sgd",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    loss_weighting=factory(),
                    jit_compile=xla,
                )
                seconds, peak = time_fit_steps(model, data, FLAGS.steps, FLAGS.repeats)
                reference.setdefault(label, seconds)
                ew = reference["ew"]
                grads = reference.get(
                    "per-task rep grads" if "rep_grad" in label else "per-task grads",
                    seconds,
                )
                row = (
                    f"{num_tasks:>2} {str(xla):>5}  {label:<24} {1e3 * seconds:>8.2f} "
                    f"{seconds / ew:>6.2f} {seconds / grads:>8.2f} "
                )
                print(row + f"{peak / 2**20:>8.1f}", flush=True)


if __name__ == "__main__":
    app.run(main)
