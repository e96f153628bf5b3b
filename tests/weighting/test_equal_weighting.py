"""Tests of EqualWeighting."""

import numpy as np
import pytest
from backend_grads import value_and_grad
from backends import compiled
from keras import ops

import keras_mtl
from keras_mtl.weighting import EqualWeighting

pytestmark = pytest.mark.both_backends


def test_objective_is_the_plain_sum_with_unit_weights():
    losses = ops.convert_to_tensor([0.3, 2.0, 5.5])
    total, weights = EqualWeighting()(losses)
    np.testing.assert_allclose(float(total), 7.8, rtol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(weights), [1.0, 1.0, 1.0])


def test_gradient_of_objective_is_one_per_task_and_weights_are_constant():
    _, (grad,) = value_and_grad(EqualWeighting(), [1.0, 4.0])
    np.testing.assert_array_equal(grad, [1.0, 1.0])


def test_names_and_config_round_trip():
    for name in ["ew", "EW", "equal", "linear_scalarization", "EqualWeighting"]:
        assert isinstance(keras_mtl.weighting.get(name), EqualWeighting)
    strategy = EqualWeighting(name="my_ew")
    clone = EqualWeighting.from_config(strategy.get_config())
    assert clone.get_config() == strategy.get_config()
    assert not strategy.stateful and strategy.requires == "losses"


def test_single_task_and_xla():
    strategy = EqualWeighting()
    fn = compiled(lambda x: strategy(x))
    total, weights = fn(ops.convert_to_tensor([2.5]))
    assert float(total) == 2.5 and weights.shape == (1,)
