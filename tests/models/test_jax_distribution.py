"""Keras' distribution API on JAX: the same training on two devices.

`keras.distribution.DataParallel` over the two host devices that
`conftest.py` asks XLA for under JAX gives the same weights and strategy
state as one device on the same global batches, for a loss-based, a
stateful and a gradient-based strategy, and for the strategies that cut
each batch into sub-batches (MoDo, Auto-Lambda: the step sees the global
batch, so its sub-batches are one device's). `keras.distribution.ModelParallel`
with the trunk's kernel sharded over the two devices gives the same
training too. (TensorFlow keeps `tf.distribute`:
tests/models/test_distributed_training.py.)
"""

import keras
import numpy as np
import pytest
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp

pytestmark = [
    pytest.mark.both_backends,
    pytest.mark.skipif(
        keras.backend.backend() != "jax", reason="keras.distribution is JAX's"
    ),
]


def _train(strategy, initial, distribution=None):
    keras.distribution.set_distribution(distribution)
    try:
        model = two_task_mlp(batch_norm=True)
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss=TWO_TASK_LOSSES,
            loss_weighting=strategy,
        )
        if initial is not None:
            for variable, value in zip(model.weights, initial):
                variable.assign(value)
        start = [np.array(v.numpy()) for v in model.weights]
        x, y = two_task_data(n=32)
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        kernel = model.get_layer("trunk").kernel.value
        shards = {tuple(s.data.shape) for s in kernel.addressable_shards}
        return start, [(v.path, np.array(v.numpy())) for v in model.weights], shards
    finally:
        keras.distribution.set_distribution(None)


@pytest.mark.parametrize("strategy", ["ew", "dwa", "upgrad", "modo", "auto_lambda"])
def test_data_parallel_on_two_devices_matches_one_device(strategy):
    devices = keras.distribution.list_devices()
    assert len(devices) >= 2, devices
    initial, single, _ = _train(strategy, None)
    _, parallel, _ = _train(
        strategy, initial, keras.distribution.DataParallel(devices=devices[:2])
    )
    assert len(single) == len(parallel)
    for (path, a), (_, b) in zip(single, parallel):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.parametrize("strategy", ["ew", "dwa", "upgrad"])
def test_model_parallel_with_a_sharded_trunk_matches_one_device(strategy):
    """The trunk's (8, 16) kernel split by columns over the two devices (a
    (1, 2) mesh: no data parallelism), everything else replicated."""
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices[:2])
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["trunk/kernel"] = (None, "model")
    layout_map["trunk/bias"] = ("model",)
    distribution = keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )
    initial, single, _ = _train(strategy, None)
    _, parallel, shards = _train(strategy, initial, distribution)
    assert shards == {(8, 8)}  # each device holds half of the (8, 16) kernel
    for (path, a), (_, b) in zip(single, parallel):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=path)
