"""Step time of keras_mtl on the active Keras backend, as ratios (issue 16).

The same network, batches and optimizer (Adam), trained as:

- plain: a `keras.Model` with one output per task and
  `compile(loss={task: "sparse_categorical_crossentropy"})`;
- ew: `MultiTaskModel` with equal weighting (one backward pass);
- grads: `MultiTaskModel` with a gradient method that only averages the
  per-task gradients (the cost of the per-task gradients alone);
- mgda, upgrad: two gradient methods.

Networks: the LeNet of `shared/methods.md` C3 on 28x28 inputs, and a
small ResNet-style CNN (`--net=resnet`, `--image_size`). Printed per
(net, batch, T): ms per step of each, ew / plain (target 1.05), mgda /
grads and upgrad / grads (target 1.10), and on JAX the per-task
pullbacks' construction (`--pullbacks=vmap,loop`, see
`keras_mtl/models/gradient_paths/jax_paths.py`). Peak device memory where
the backend reports it (JAX on GPU); "n/a" on the CPU. Every model is
compiled with XLA (JAX has no other mode). Runs without TensorFlow under
`KERAS_BACKEND=jax` (`scripts/gpu_check.sh`).

    python benchmarks/backend_step_time.py
    KERAS_BACKEND=jax python benchmarks/backend_step_time.py --tasks=2,8
    KERAS_BACKEND=jax python benchmarks/backend_step_time.py --net=resnet \
        --image_size=128 --batch_sizes=256 --tasks=2,8,40 --json=out.json
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from keras import ops  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.weighting.gradient_aggregation import GradientAggregation  # noqa: E402

flags.DEFINE_enum("net", "lenet", ["lenet", "resnet"], "Network.")
flags.DEFINE_integer("image_size", 64, "Input size of the ResNet-style CNN.")
flags.DEFINE_list("batch_sizes", ["256"], "Batch sizes.")
flags.DEFINE_list("tasks", ["2", "8"], "Numbers of tasks.")
flags.DEFINE_list(
    "kinds", ["plain", "ew", "grads", "mgda", "upgrad"], "Models to time."
)
flags.DEFINE_list(
    "pullbacks", [], "On JAX, also time 'grads' with these constructions."
)
flags.DEFINE_integer("steps", 10, "Steps per timed epoch.")
flags.DEFINE_integer("rounds", 5, "Timed rounds (medians are reported).")
flags.DEFINE_string("json", None, "Also write the results to this file.")
FLAGS = flags.FLAGS


class RowMean(GradientAggregation):
    """The mean of the per-task gradients: what a gradient method costs
    besides its own solver."""

    def call(self, grads, losses=None, training=True, task_mask=None):
        num = ops.shape(grads)[0]
        weights = ops.ones((num,), grads.dtype) / num
        return ops.matmul(weights[None, :], grads)[0], weights


def lenet_trunk(inputs):
    x = keras.layers.Conv2D(10, 5)(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(20, 5)(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.layers.Dense(50, activation="relu")(x)


def resnet_trunk(inputs):
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(inputs)
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        shortcut = x
        y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same")(x)
        y = keras.layers.BatchNormalization()(y)
        y = keras.layers.ReLU()(y)
        y = keras.layers.Conv2D(filters, 3, padding="same")(y)
        y = keras.layers.BatchNormalization()(y)
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = keras.layers.Conv2D(filters, 1, strides=stride)(shortcut)
        x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    return keras.layers.GlobalAveragePooling2D()(x)


def input_shape():
    if FLAGS.net == "lenet":
        return (28, 28, 1)
    return (FLAGS.image_size, FLAGS.image_size, 3)


def build(kind, tasks):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape())
    shared = (lenet_trunk if FLAGS.net == "lenet" else resnet_trunk)(inputs)
    outputs = {
        task: keras.layers.Dense(10, activation="softmax", name=task)(shared)
        for task in tasks
    }
    loss = {task: "sparse_categorical_crossentropy" for task in tasks}
    if kind == "plain":
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss=loss, jit_compile=True)
        return model
    strategy = RowMean() if kind.startswith("grads") else kind
    model = keras_mtl.MultiTaskModel(inputs, outputs)
    model.compile(
        optimizer="adam", loss=loss, loss_weighting=strategy, jit_compile=True
    )
    return model


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def peak_memory():
    """Peak bytes of the first device where the backend reports it."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure(batch_size, num_tasks):
    tasks = [f"task_{t}" for t in range(num_tasks)]
    rng = np.random.default_rng(0)
    n = batch_size * FLAGS.steps
    x = rng.random((n, *input_shape()), dtype=np.float32)
    y = {task: rng.integers(0, 10, n) for task in tasks}
    kinds = list(FLAGS.kinds)
    if keras.backend.backend() == "jax":
        kinds += [f"grads ({how})" for how in FLAGS.pullbacks]
    models, timers, failed = {}, {}, {}
    for kind in kinds:
        _set_pullback(kind)  # read when the step is traced, in this fit
        try:
            model = build(kind.split()[0], tasks)
            model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
        except Exception as error:  # noqa: BLE001 - reported, others go on
            failed[kind] = f"{type(error).__name__}: {str(error)[:200]}"
            print(f"{kind} failed: {failed[kind]}", flush=True)
            continue
        models[kind], timers[kind] = model, EpochTimer()
    _set_pullback("")
    kinds = list(models)
    for _ in range(FLAGS.rounds):
        for kind in kinds:
            models[kind].fit(
                x,
                y,
                batch_size=batch_size,
                epochs=1,
                verbose=0,
                shuffle=False,
                callbacks=[timers[kind]],
            )
    ms = {
        kind: 1e3 * float(np.median(timers[kind].times)) / FLAGS.steps for kind in kinds
    }
    return ms, peak_memory(), failed


def _set_pullback(kind):
    if keras.backend.backend() != "jax":
        return
    from keras_mtl.models.gradient_paths import jax_paths

    jax_paths.PULLBACK_OVERRIDE = kind[7:-1] if kind.startswith("grads (") else None


def main(_):
    device = keras.backend.backend()
    if device == "jax":
        import jax

        device += f" on {jax.devices()[0].device_kind}"
    print(f"backend: {device}, net: {FLAGS.net}")
    print("| batch | T | model | ms/step | ratio |")
    print("|---|---|---|---|---|")
    results = []
    for batch_size in map(int, FLAGS.batch_sizes):
        for num_tasks in map(int, FLAGS.tasks):
            ms, peak, failed = measure(batch_size, num_tasks)
            for kind, value in ms.items():
                base = "plain" if kind == "ew" else "grads"
                ratio = ""
                if kind in ("ew", "mgda", "upgrad") and base in ms:
                    ratio = f"{value / ms[base]:.3f} x {base}"
                print(
                    f"| {batch_size} | {num_tasks} | {kind} | {value:.2f} | {ratio} |"
                )
            results.append(
                {
                    "backend": device,
                    "net": FLAGS.net,
                    "image_size": input_shape()[0],
                    "batch_size": batch_size,
                    "tasks": num_tasks,
                    "ms_per_step": ms,
                    "peak_bytes": peak,
                    "failed": failed,
                }
            )
            if FLAGS.json:  # after every cell: a time limit keeps what ran
                with open(FLAGS.json, "w") as f:
                    json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
