"""One worker of a two-worker `MultiWorkerMirroredStrategy` job.

Run by test_multi_worker_training.py, one process per worker, each with
`TF_CONFIG` in its environment naming the cluster and its own task index:

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:PORT0", "127.0.0.1:PORT1"]},
                "task": {"type": "worker", "index": 0}}' \
        python tests/models/multi_worker_check.py ew uw pcgrad

For each strategy named on the command line, every worker trains the same
two-task model for two epochs of four global batches under the multi-worker
strategy (one replica per worker, the global batch split between them), then
trains it again on one device of this process on the same global batches, and
prints the largest differences of weights, strategy state and logs as JSON on
a line starting with `RESULT `.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

# Created first: the collective ops are configured at program start.
_MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING,
        timeout_seconds=60.0,
    )
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp  # noqa: E402

import keras_mtl  # noqa: E402

GLOBAL_BATCH = 16
STEPS = 4
EPOCHS = 2


class RowCounter(keras.callbacks.Callback):
    """Counts the examples this worker's replica trains on (the batch split
    is what makes the comparison meaningful: a worker that trained on the
    whole global batch would give one device's result too)."""

    def __init__(self):
        super().__init__()
        self.rows = tf.Variable(0, dtype=tf.int64, trainable=False)

    def set_model(self, model):
        super().set_model(model)
        step = type(model).train_step
        rows = self.rows

        def counting_step(data):
            x = keras.utils.unpack_x_y_sample_weight(data)[0]
            rows.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
            return step(model, data)

        model.train_step = counting_step


def train(name, distribution):
    keras.utils.set_random_seed(0)
    with distribution.scope():
        model = two_task_mlp()
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=TWO_TASK_LOSSES,
            loss_weighting=keras_mtl.weighting.get(name),
        )
    initial = _state(model)
    x, y = two_task_data(n=STEPS * GLOBAL_BATCH)
    counter = RowCounter()
    history = model.fit(
        x,
        y,
        batch_size=GLOBAL_BATCH,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=[counter],
    )
    rows = int(counter.rows.numpy())
    return initial, _state(model), history.history, rows, model.jit_compile


def _state(model):
    variables = [*model.weights, *model.loss_weighting.weights]
    return [np.array(v.numpy()) for v in variables]


def max_diff(one, two):
    return max(
        (float(np.max(np.abs(a - b))) if a.size else 0.0 for a, b in zip(one, two)),
        default=0.0,
    )


def main(names):
    report = {
        "task_index": _MULTI_WORKER.cluster_resolver.task_id,
        "num_replicas_in_sync": _MULTI_WORKER.num_replicas_in_sync,
    }
    for name in names:
        _, two, two_logs, two_rows, two_jit = train(name, _MULTI_WORKER)
        initial, one, one_logs, one_rows, _ = train(name, tf.distribute.get_strategy())
        report[name] = {
            "max_state_diff": max_diff(one, two),
            "max_log_diff": max(
                abs(a - b)
                for key in one_logs
                for a, b in zip(one_logs[key], two_logs[key])
            ),
            # Training must move the state: equal untrained models would
            # pass the comparison trivially.
            "max_change": max_diff(one, initial),
            "num_state": len(one),
            "log_keys_match": sorted(one_logs) == sorted(two_logs),
            "rows_one_device": one_rows,
            "rows_this_worker": two_rows,
            # What the default jit_compile="auto" became under the strategy.
            "jit_compile": two_jit,
        }
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
