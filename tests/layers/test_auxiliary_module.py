"""Tests of the AuxiliaryModule layer."""

import keras
import numpy as np
import pytest
from soft_sharing_checks import assert_no_gradient, gradients

from keras_mtl.layers import AuxiliaryModule

pytestmark = pytest.mark.both_backends


def test_vector_taps_give_one_feature_per_task():
    taps = [keras.Input((6,)), keras.Input((5,))]
    module = AuxiliaryModule(num_tasks=3, units=[4, 7])
    features = module(taps)
    assert [tuple(f.shape) for f in features] == [(None, 7)] * 3
    # Level 2 of task t reads h_2 (5) + its own (4) + the 2 others (4 each).
    assert module.branches[1][0].kernel.shape == (5 + 4 * 3, 7)
    assert AuxiliaryModule(2, units=4, cross_connect=False)(taps)[0].shape == (None, 4)


def test_feature_maps_are_resized_to_the_last_tap():
    taps = [keras.Input((16, 16, 3)), keras.Input((8, 8, 5))]
    features = AuxiliaryModule(num_tasks=2, units=6)(taps)
    assert [tuple(f.shape) for f in features] == [(None, 8, 8, 6)] * 2
    pooled = AuxiliaryModule(num_tasks=2, units=6, pooling="global")(taps)
    assert tuple(pooled[0].shape) == (None, 6)


def test_cross_connection_lets_every_branch_see_the_others():
    """With cross connections task 0's output depends on task 1's branch."""
    module = AuxiliaryModule(num_tasks=2, units=3)
    rng = np.random.default_rng(0)
    h1, h2 = rng.normal(size=(2, 4, 5)).astype("float32")
    module([h1, h2])
    (grad,), _ = gradients(
        lambda: keras.ops.sum(module([h1, h2])[0]), [module.branches[0][1].kernel]
    )
    assert grad is not None and float(np.abs(np.array(grad)).sum()) > 0
    separate = AuxiliaryModule(num_tasks=2, units=3, cross_connect=False)
    separate([h1, h2])
    (grad,), _ = gradients(
        lambda: keras.ops.sum(separate([h1, h2])[0]), [separate.branches[0][1].kernel]
    )
    assert_no_gradient(grad)


def test_config_round_trip_and_bad_arguments():
    module = AuxiliaryModule(num_tasks=2, units=[3, 4], cross_connect=False)
    config = module.get_config()
    assert AuxiliaryModule.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="num_tasks"):
        AuxiliaryModule(num_tasks=0)
    with pytest.raises(ValueError, match="pooling"):
        AuxiliaryModule(num_tasks=2, pooling="max")
    with pytest.raises(ValueError, match="mix vectors"):
        AuxiliaryModule(2)([keras.Input((4,)), keras.Input((4, 4, 2))])
    np.testing.assert_equal(module.units, [3, 4])
