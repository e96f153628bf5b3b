"""What `MultiTaskModel` adds to a plain Keras training step, as ratios.

The same network (the LeNet of Multi-MNIST, `shared/methods.md` C3: conv 10
k5, max-pool, ReLU, conv 20 k5, dropout, max-pool, ReLU, dense 50, and per
task dense 50 -> dropout -> dense 10), the same optimizer (Adam) and the
same batches, trained two ways:

- plain: a `keras.Model` with the same two outputs and
  `compile(loss={task: "sparse_categorical_crossentropy"})`;
- ew: a `keras_mtl.MultiTaskModel` with `loss_weighting="ew"`.

For batch 32 and 256, XLA off and on, it prints ms per step of each, the
ratio ew / plain (median over rounds of the ratio within a round: the two
run in turns on the same cached batches, so a change in the machine's
load hits both) and the allocator's peak memory over a few timed steps of
each (TensorFlow's CPU allocator; without XLA only, since XLA allocates
its buffers outside it). Targets (issue 14): at most 1.05x at batch 32 and
1.02x at batch 256.

    python benchmarks/step_overhead.py
    python benchmarks/step_overhead.py --batch_sizes=32 --xla=false --rounds=15
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import step_runner  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_mtl  # noqa: E402

flags.DEFINE_list("batch_sizes", ["32", "256"], "Batch sizes.")
flags.DEFINE_list("xla", ["false", "true"], "XLA settings to run.")
flags.DEFINE_integer("steps", 50, "Timed steps per round.")
flags.DEFINE_integer("rounds", 9, "Timed rounds (medians are reported).")
flags.DEFINE_integer("tasks", 2, "Number of tasks (heads).")
flags.DEFINE_bool(
    "mechanisms",
    False,
    "Also time ew with each way of skipping a non-finite step forced "
    "(StepGuard.mechanism 'cond' and 'select'), as ratios to plain.",
)
FLAGS = flags.FLAGS


def lenet_outputs(inputs, tasks):
    """The shared LeNet and one head per task (methods.md C3)."""
    x = keras.layers.Conv2D(10, 5)(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(20, 5)(x)
    x = keras.layers.SpatialDropout2D(0.5)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    shared = keras.layers.Dense(50, activation="relu")(x)
    outputs = {}
    for task in tasks:
        h = keras.layers.Dense(50, activation="relu")(shared)
        h = keras.layers.Dropout(0.5)(h)
        outputs[task] = keras.layers.Dense(10, activation="softmax", name=task)(h)
    return outputs


def build(kind, tasks, jit_compile, mechanism=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    outputs = lenet_outputs(inputs, tasks)
    loss = {task: "sparse_categorical_crossentropy" for task in tasks}
    if kind == "plain":
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss=loss, jit_compile=jit_compile)
    else:
        model = keras_mtl.MultiTaskModel(inputs, outputs)
        model.compile(
            optimizer="adam", loss=loss, loss_weighting="ew", jit_compile=jit_compile
        )
        model._guard.mechanism = mechanism
    return model


def data(tasks, batch_size):
    rng = np.random.default_rng(0)
    n = batch_size * 8
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    y = {task: rng.integers(0, 10, n) for task in tasks}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def peak_bytes(run):
    """The CPU allocator's peak during `run()`, above what was in use."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        base = tf.config.experimental.get_memory_info("CPU:0")["current"]
        run()
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] - base
    except (ValueError, RuntimeError):
        return float("nan")


def measure(batch_size, jit_compile):
    tasks = [f"task_{t}" for t in range(FLAGS.tasks)]
    batches = data(tasks, batch_size).cache().repeat()
    kinds = {"plain": None, "ew": None}
    if FLAGS.mechanisms:
        kinds.update({"ew (cond)": "cond", "ew (select)": "select"})
    runners = {}
    for kind, mechanism in kinds.items():
        model = build(kind.split()[0], tasks, jit_compile, mechanism)
        model.fit(batches, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
        runners[kind] = step_runner(model, iter(batches), FLAGS.steps)
        runners[kind]()  # warm-up
    memory = {kind: peak_bytes(run) for kind, run in runners.items()}
    times = {kind: [] for kind in runners}
    ratios = {kind: [] for kind in runners if kind != "plain"}
    for round_ in range(FLAGS.rounds):
        order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        elapsed = {}
        for kind in order:
            start = time.perf_counter()
            runners[kind]()
            elapsed[kind] = (time.perf_counter() - start) / FLAGS.steps
            times[kind].append(elapsed[kind])
        for kind in ratios:
            ratios[kind].append(elapsed[kind] / elapsed["plain"])
    median = {kind: float(np.median(t)) for kind, t in times.items()}
    return median, ratios, memory


def main(_):
    print(
        "| batch | XLA | model | ms/step | x plain (IQR) | peak MB over "
        "the timed steps |"
    )
    print("|---|---|---|---|---|---|")
    for batch_size in map(int, FLAGS.batch_sizes):
        for xla in FLAGS.xla:
            jit = xla.lower() == "true"
            median, ratios, memory = measure(batch_size, jit)
            for kind, ms in median.items():
                if kind == "plain":
                    ratio = "1"
                else:
                    q1, q2, q3 = np.percentile(ratios[kind], [25, 50, 75])
                    ratio = f"{q2:.3f} ({q1:.3f}-{q3:.3f})"
                # XLA allocates its buffers outside TensorFlow's allocator.
                peak = "n/a" if jit else f"{memory[kind] / 2**20:.2f}"
                print(
                    f"| {batch_size} | {jit} | {kind} | {1e3 * ms:.2f} | {ratio} "
                    f"| {peak} |",
                    flush=True,
                )


if __name__ == "__main__":
    app.run(main)
