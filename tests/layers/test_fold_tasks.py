"""Tests of `FoldTasks` (task-folded batches for Task Routing)."""

import keras
import numpy as np
import pytest
from backends import compiled
from soft_sharing_checks import gradients

from keras_mtl.layers.fold_tasks import FoldTasks

pytestmark = pytest.mark.both_backends


def test_folded_batch_is_t_stacked_copies():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype("float32")
    y = keras.ops.convert_to_numpy(FoldTasks(3)(x))
    assert y.shape == (6, 3, 3, 4)
    for t in range(3):
        np.testing.assert_array_equal(y[2 * t : 2 * t + 2], x)


def test_symbolic_shapes_mask_and_xla():
    assert FoldTasks(4).compute_output_shape((5, 7)) == (20, 7)
    assert FoldTasks(4).compute_output_shape((None, 7)) == (None, 7)
    tokens = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 2, mask_zero=True)(tokens)
    folded = FoldTasks(2)(embedded)
    model = keras.Model(tokens, folded)
    mask = keras.ops.convert_to_numpy(model(np.array([[1, 0], [2, 3]]))._keras_mask)
    np.testing.assert_array_equal(mask, [[True, False], [True, True]] * 2)
    layer = FoldTasks(3)
    x = np.arange(6.0, dtype="float32").reshape(3, 2)
    result = compiled(lambda v: layer(v), jit_compile=True)(x)
    np.testing.assert_array_equal(np.array(result), np.tile(x, (3, 1)))


def test_gradient_of_a_block_reaches_the_input():
    # Each block is a copy: the input gradient is the sum of the blocks'.
    x = np.ones((2, 3), "float32")
    weights = np.arange(18.0, dtype="float32").reshape(6, 3)
    _, (grad,) = gradients(
        lambda v: keras.ops.sum(FoldTasks(3)(v) * weights), inputs=[x]
    )
    np.testing.assert_array_equal(np.array(grad), weights.reshape(3, 2, 3).sum(0))


def test_config_round_trip_and_bad_argument():
    layer = FoldTasks(5, name="fold")
    config = layer.get_config()
    assert config["num_tasks"] == 5
    assert FoldTasks.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(restored, FoldTasks) and restored.num_tasks == 5
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_tasks"):
            FoldTasks(bad)
