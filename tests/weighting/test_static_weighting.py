"""Tests of StaticWeighting."""

import numpy as np
import pytest
from keras import ops

import keras_mtl
from keras_mtl.weighting import StaticWeighting

pytestmark = pytest.mark.both_backends


def test_list_weights_scale_each_task():
    total, weights = StaticWeighting([2.0, 0.5])(ops.convert_to_tensor([1.0, 4.0]))
    assert float(total) == 4.0
    np.testing.assert_array_equal(ops.convert_to_numpy(weights), [2.0, 0.5])


def test_dict_weights_follow_the_model_task_order():
    strategy = StaticWeighting({"b": 3.0, "a": 1.0})
    strategy.set_task_names(["a", "b"])
    total, weights = strategy(ops.convert_to_tensor([1.0, 1.0]))
    np.testing.assert_array_equal(ops.convert_to_numpy(weights), [1.0, 3.0])
    assert float(total) == 4.0


@pytest.mark.parametrize(
    "weights, message",
    [
        ([1.0, -1.0], "non-negative"),
        ([1.0, float("nan")], "finite"),
        ([], "empty"),
        ("1,2", "sequence"),
    ],
)
def test_bad_weights_are_rejected(weights, message):
    with pytest.raises(ValueError, match=message):
        StaticWeighting(weights)


def test_task_mismatch_is_rejected():
    strategy = StaticWeighting({"a": 1.0, "typo": 2.0})
    with pytest.raises(ValueError, match=r"missing \['b'\], unknown \['typo'\]"):
        strategy.set_task_names(["a", "b"])
    with pytest.raises(ValueError, match="2 weights but the model has 3"):
        StaticWeighting([1.0, 2.0]).set_task_names(["a", "b", "c"])
    with pytest.raises(ValueError, match="needs the task names"):
        StaticWeighting({"a": 1.0}).build((1,))


def test_config_round_trip_keeps_the_argument_form():
    for weights in ([1.0, 2.0], {"x": 1.0, "y": 0.25}):
        strategy = StaticWeighting(weights)
        config = strategy.get_config()
        assert config["weights"] == weights
        assert StaticWeighting.from_config(config).get_config() == config
    assert isinstance(
        keras_mtl.weighting.get({"class_name": "fixed", "config": {"weights": [1, 2]}}),
        StaticWeighting,
    )


def test_get_by_name_says_that_weights_are_needed():
    with pytest.raises(ValueError, match=r"needs the arguments \['weights'\]"):
        keras_mtl.weighting.get("static")
