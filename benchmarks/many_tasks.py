"""Step time and peak memory from 2 to 100 tasks, as ratios to equal weighting.

An MLP trunk (256 -> 128 -> 64) with one 1-unit binary head per task, batch
128. For every number of tasks the script times equal weighting, the
per-task gradients alone (a strategy that sums the rows of the (T, P)
matrix), loss-based strategies (up to 100 tasks) and gradient methods (up to
40 tasks), and prints milliseconds per step, the ratio to equal weighting at
the same T, the ratio to the per-task gradients alone, and the allocator's
peak memory during the timed steps.

    python benchmarks/many_tasks.py
    python benchmarks/many_tasks.py --tasks=2,10 --loss_methods=dwa \
        --gradient_methods=mgda
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import time_fit_steps  # noqa: E402
from absl import app, flags  # noqa: E402
from gradient_methods import SumRows  # noqa: E402

import keras_mtl  # noqa: E402

flags.DEFINE_list("tasks", ["2", "10", "40", "100"], "Numbers of tasks.")
flags.DEFINE_list("loss_methods", ["dwa", "uw", "slaw", "famo", "rlw"], "Loss-based.")
flags.DEFINE_list(
    "gradient_methods", ["mgda", "pcgrad", "nash_mtl", "upgrad"], "Gradient-based."
)
flags.DEFINE_integer("max_gradient_tasks", 40, "Largest T for gradient methods.")
flags.DEFINE_integer("steps", 10, "Timed steps per epoch.")
flags.DEFINE_bool("jit_compile", False, "Compile the steps with XLA.")
FLAGS = flags.FLAGS


def mlp(num_tasks):
    inputs = keras.Input((256,))
    h = keras.layers.Dense(128, activation="relu")(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    outputs = {f"t{t}": keras.layers.Dense(1)(h) for t in range(num_tasks)}
    return keras_mtl.MultiTaskModel(inputs, outputs)


def dataset(num_tasks, batch=128):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 2, 256)).astype("float32")
    y = {
        f"t{t}": rng.integers(0, 2, size=(batch * 2, 1)).astype("float32")
        for t in range(num_tasks)
    }
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()


def main(argv):
    del argv
    print(
        f"{'T':>4}  {'method':<16} {'ms/step':>8} {'x EW':>6} {'x grads':>8} "
        f"{'peak MB':>8}"
    )
    for num_tasks in [int(t) for t in FLAGS.tasks]:
        data = dataset(num_tasks)
        methods = [("ew", "ew"), *((m, m) for m in FLAGS.loss_methods)]
        if num_tasks <= FLAGS.max_gradient_tasks:
            methods.append(("per-task grads", SumRows))
            methods += [(m, m) for m in FLAGS.gradient_methods]
        reference = {}
        for label, identifier in methods:
            keras.utils.set_random_seed(0)
            model = mlp(num_tasks)
            strategy = identifier() if callable(identifier) else identifier
            model.compile(
                optimizer="sgd",
                loss=keras.losses.BinaryCrossentropy(from_logits=True),
                loss_weighting=strategy,
                jit_compile=FLAGS.jit_compile,
            )
            seconds, peak = time_fit_steps(model, data, FLAGS.steps)
            reference.setdefault(label, seconds)
            grads = reference.get("per-task grads", float("nan"))
            print(
                f"{num_tasks:>4}  {label:<16} {1e3 * seconds:>8.2f} "
                f"{seconds / reference['ew']:>6.2f} {seconds / grads:>8.2f} "
                f"{peak / 2**20:>8.1f}",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
