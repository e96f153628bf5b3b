"""Tests of `UnfoldTasks` (the inverse of `FoldTasks`)."""

import keras
import numpy as np
import pytest
from backends import compiled

from keras_mtl.layers.fold_tasks import FoldTasks
from keras_mtl.layers.unfold_tasks import UnfoldTasks

pytestmark = pytest.mark.both_backends


def test_splits_blocks_in_order_and_inverts_fold():
    x = np.arange(12.0, dtype="float32").reshape(6, 2)
    parts = [keras.ops.convert_to_numpy(p) for p in UnfoldTasks(3)(x)]
    for t, part in enumerate(parts):
        np.testing.assert_array_equal(part, x[2 * t : 2 * t + 2])
    small = x[:2]
    for part in UnfoldTasks(4)(FoldTasks(4)(small)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(part), small)


def test_symbolic_shapes_mask_and_xla():
    assert UnfoldTasks(2).compute_output_shape((6, 3)) == [(3, 3), (3, 3)]
    assert UnfoldTasks(2).compute_output_shape((None, 3)) == [(None, 3)] * 2
    with pytest.raises(ValueError, match="multiple"):
        UnfoldTasks(4).compute_output_shape((6, 3))
    tokens = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 2, mask_zero=True)(tokens)
    parts = UnfoldTasks(2)(FoldTasks(2)(embedded))
    model = keras.Model(tokens, parts)
    for output in model(np.array([[1, 0], [2, 3]])):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(output._keras_mask),
            [[True, False], [True, True]],
        )
    layer = UnfoldTasks(3)
    x = np.arange(6.0, dtype="float32").reshape(6, 1)
    parts = compiled(lambda v: layer(v), jit_compile=True)(x)
    assert len(parts) == 3
    for t, part in enumerate(parts):
        np.testing.assert_array_equal(np.array(part), x[2 * t : 2 * t + 2])


def test_config_round_trip_and_bad_argument():
    layer = UnfoldTasks(5)
    config = layer.get_config()
    assert config["num_tasks"] == 5
    assert UnfoldTasks.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(restored, UnfoldTasks) and restored.num_tasks == 5
    for bad in (0, "2", None):
        with pytest.raises(ValueError, match="num_tasks"):
            UnfoldTasks(bad)
