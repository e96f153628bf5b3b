"""Keras' distribution API on JAX: the same training on two devices.

`keras.distribution.DataParallel` over the two host devices that
`conftest.py` asks XLA for under JAX gives the same weights and strategy
state as one device on the same global batches, for a loss-based, a
stateful and a gradient-based strategy. (TensorFlow keeps `tf.distribute`:
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
        return start, [(v.path, np.array(v.numpy())) for v in model.weights]
    finally:
        keras.distribution.set_distribution(None)


@pytest.mark.parametrize("strategy", ["ew", "dwa", "upgrad"])
def test_data_parallel_on_two_devices_matches_one_device(strategy):
    devices = keras.distribution.list_devices()
    assert len(devices) >= 2, devices
    initial, single = _train(strategy, None)
    _, parallel = _train(
        strategy, initial, keras.distribution.DataParallel(devices=devices[:2])
    )
    assert len(single) == len(parallel)
    for (path, a), (_, b) in zip(single, parallel):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=path)
