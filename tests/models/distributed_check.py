"""Run by test_distributed_training.py in a fresh process (devices must be
configured before TensorFlow starts): trains the same model for one epoch on
one device and under MirroredStrategy on two logical CPUs, for each strategy
named on the command line, and prints the largest differences as JSON."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp  # noqa: E402

import keras_mtl  # noqa: E402


def replica_order(num_samples, batch_size, parts, replicas=2):
    """The sample order whose batches, on one device, cut into `parts`
    sub-batches as `replicas` replicas cut the batches of the original
    order: sub-batch i of a batch holds part i of every replica's share."""
    share = batch_size // replicas
    bounds = [i * share // parts for i in range(parts + 1)]
    order = []
    for start in range(0, num_samples, batch_size):
        for i in range(parts):
            for r in range(replicas):
                first = start + r * share
                order += range(first + bounds[i], first + bounds[i + 1])
    return np.array(order)


def train(name, distribution):
    """`name` is a strategy name, with ":gramian" for
    `per_task_gradients="gramian"` (on a trunk of three 64-unit layers, so
    that the Gramian is summed stage by stage), or ":split" for a strategy
    that cuts each batch into sub-batches (`batches_per_step`): batches of
    12, and on one device the samples reordered by `replica_order`, so that
    its sub-batches hold the samples of the replicas' sub-batches."""
    name, _, variant = name.partition(":")
    per_task = variant if variant == "gramian" else ""
    keras.utils.set_random_seed(0)
    with distribution.scope():
        model = two_task_mlp(hidden=64, depth=3) if per_task else two_task_mlp()
        if per_task:
            assert model._backward_stages() is not None
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=TWO_TASK_LOSSES,
            loss_weighting=keras_mtl.weighting.get(name),
            per_task_gradients=per_task or "matrix",
        )
    x, y = two_task_data(n=48 if variant == "split" else 64)
    batch_size = 16
    if variant == "split":
        batch_size = 12
        if distribution.num_replicas_in_sync == 1:
            parts = model.loss_weighting.batches_per_step
            order = replica_order(len(x), batch_size, parts)
            x, y = x[order], {task: v[order] for task, v in y.items()}
    history = model.fit(x, y, batch_size=batch_size, epochs=2, shuffle=False, verbose=0)
    state = [v.numpy() for v in model.weights]
    state += [v.numpy() for v in model.loss_weighting.weights]
    return state, history.history


def main(names):
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {}
    for name in names:
        one, one_logs = train(name, tf.distribute.get_strategy())
        two, two_logs = train(name, mirrored)
        report[name] = {
            "max_state_diff": max(
                float(np.max(np.abs(a - b))) if a.size else 0.0
                for a, b in zip(one, two)
            ),
            "max_log_diff": max(
                abs(a - b)
                for key in one_logs
                for a, b in zip(one_logs[key], two_logs[key])
            ),
            "num_state": len(one),
        }
    report["explicit_jit"] = explicit_jit(mirrored)
    print("RESULT " + json.dumps(report))


def explicit_jit(distribution):
    """What compile(jit_compile=True) says under `distribution`."""
    with distribution.scope():
        model = two_task_mlp()
        try:
            model.compile(optimizer="sgd", loss=TWO_TASK_LOSSES, jit_compile=True)
        except ValueError as error:
            return str(error)
    return "accepted"


if __name__ == "__main__":
    main(sys.argv[1:])
