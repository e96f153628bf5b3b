"""Tests of MTANAttention (MTAN's task-specific attention module)."""

import keras
import numpy as np
import pytest
from soft_sharing_checks import (
    assert_config_round_trip,
    assert_eager_equals_xla,
    assert_one_fit_step_trains,
    assert_save_load_equal,
    gradients,
)

import keras_mtl
from keras_mtl.layers.mtan_attention import MTANAttention


def _features(shape_u=(2, 6, 6, 3), shape_p=(2, 6, 6, 5), shape_a=None, seed=0):
    rng = np.random.default_rng(seed)
    values = [rng.normal(size=shape_u), rng.normal(size=shape_p)]
    if shape_a is not None:
        values.append(rng.normal(size=shape_a))
    return [v.astype("float32") for v in values]


def _mtan_model():
    """Two-block shared CNN with per-task attention, as in the docstring:
    the previous attention goes through a conv shared by the tasks (f) and
    max pooling before the next block's module."""
    x = keras.Input((8, 8, 3))
    u0 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="u0")(x)
    p0 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="p0")(u0)
    pooled = keras.layers.MaxPooling2D()(p0)
    u1 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="u1")(pooled)
    p1 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="p1")(u1)
    f0 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="f0")
    outputs = {}
    for task, units in [("seg", 3), ("depth", 1)]:
        a0 = MTANAttention(name=f"{task}_att0")([u0, p0])
        a0 = keras.layers.MaxPooling2D()(f0(a0))
        a1 = MTANAttention(intermediate_channels=2, name=f"{task}_att1")([u1, p1, a0])
        outputs[task] = keras.layers.Conv2D(units, 1, name=f"{task}_head")(a1)
    return keras_mtl.MultiTaskModel(x, outputs)


def _mtan_data(n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    y = {
        "seg": rng.integers(0, 3, size=(n, 4, 4)).astype("int32"),
        "depth": rng.normal(size=(n, 4, 4, 1)).astype("float32"),
    }
    return x, y


LOSSES = {
    "seg": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "depth": "mse",
}


@pytest.mark.both_backends
def test_output_has_the_shape_of_the_shared_feature():
    layer = MTANAttention()
    u, p, a = _features(shape_a=(2, 6, 6, 7))
    assert tuple(layer([u, p, a]).shape) == (2, 6, 6, 5)
    assert layer.compute_output_shape([(None, 6, 6, 3), (None, 6, 6, 5)]) == (
        None,
        6,
        6,
        5,
    )
    # Hidden width defaults to p's channels; the gate reads [u ; a].
    assert layer.hidden_conv.kernel.shape == (3 + 7, 5)
    assert layer.mask_conv.kernel.shape == (5, 5)
    # Other ranks: sequences and vectors (1x1 conv = dense on channels).
    assert tuple(MTANAttention()(_features((2, 7, 3), (2, 7, 4))).shape) == (2, 7, 4)
    assert tuple(MTANAttention(4)(_features((2, 3), (2, 5))).shape) == (2, 5)


@pytest.mark.both_backends
def test_mask_lies_in_zero_one_so_attention_only_shrinks_features():
    layer = MTANAttention()
    inputs = _features(shape_a=(2, 6, 6, 2))
    mask = np.array(layer.attention_mask(inputs))
    assert mask.shape == (2, 6, 6, 5)
    assert np.all(mask > 0) and np.all(mask < 1)
    out, p = np.array(layer(inputs)), np.array(inputs[1])
    np.testing.assert_allclose(out, mask * p, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(out) <= np.abs(p) + 1e-7)
    assert np.all(out * p >= 0)


@pytest.mark.both_backends
def test_zero_mask_logits_give_half_of_the_shared_feature():
    # Mask conv with zero weights: BN (inference, initial stats) of 0 is 0,
    # sigmoid(0) = 1/2, hence a = p / 2 whatever u and a_prev are.
    layer = MTANAttention()
    inputs = _features(shape_a=(2, 6, 6, 2))
    layer(inputs)
    layer.mask_conv.kernel.assign(np.zeros(layer.mask_conv.kernel.shape))
    np.testing.assert_allclose(
        np.array(layer(inputs, training=False)), 0.5 * np.array(inputs[1]), atol=1e-7
    )


@pytest.mark.both_backends
def test_gradient_to_the_shared_feature_is_scaled_by_the_mask():
    layer = MTANAttention()
    u, p = _features()
    layer([u, p], training=False)
    _, (grad,) = gradients(
        lambda v: keras.ops.sum(layer([u, v], training=False)), inputs=[p]
    )
    mask = layer.attention_mask([u, p], training=False)
    np.testing.assert_allclose(np.array(grad), np.array(mask), rtol=1e-5, atol=1e-6)


@pytest.mark.both_backends
def test_previous_attention_drives_the_mask():
    layer = MTANAttention()
    u, p, a = _features(shape_a=(2, 6, 6, 2))
    layer([u, p, a], training=False)
    _, (grad,) = gradients(
        lambda v: keras.ops.sum(layer([u, p, v], training=False)), inputs=[a]
    )
    assert np.abs(np.array(grad)).sum() > 0
    changed = layer([u, p, a * 3.0 + 1.0], training=False)
    assert not np.allclose(np.array(changed), np.array(layer([u, p, a])))


@pytest.mark.both_backends
def test_attention_modules_are_task_variables_in_a_multi_task_model():
    model = _mtan_model()
    shared = {v.path for v in model.shared_variables}
    seg = {v.path for v in model.task_variables["seg"]}
    for name in ["seg_att0", "seg_att1"]:
        paths = {v.path for v in model.get_layer(name).trainable_variables}
        assert paths <= seg
    for name in ["u0", "p0", "u1", "p1", "f0"]:
        assert {v.path for v in model.get_layer(name).trainable_variables} <= shared


@pytest.mark.slow
def test_one_fit_step_under_xla_updates_batch_norm_statistics():
    model = _mtan_model()
    x, y = _mtan_data()
    moving = model.get_layer("seg_att1").mask_norm.moving_mean
    before = np.array(moving)
    changed = assert_one_fit_step_trains(model, x, y, LOSSES, jit_compile=True)
    assert [path for path, moved in changed.items() if not moved] == []
    assert not np.allclose(before, np.array(moving))


@pytest.mark.both_backends
def test_eager_equals_xla():
    layer = MTANAttention()
    inputs = _features(shape_a=(2, 6, 6, 2))
    layer(inputs)
    assert_eager_equals_xla(lambda *v: layer(list(v), training=False), *inputs)
    assert_eager_equals_xla(lambda *v: layer(list(v), training=True), *inputs)


@pytest.mark.both_backends
def test_save_load_and_config_round_trip(tmp_path):
    model = _mtan_model()
    x, _ = _mtan_data()
    rng = np.random.default_rng(2)
    for layer in model.layers:  # non-trivial batch-norm statistics
        if isinstance(layer, MTANAttention):
            for norm in (layer.hidden_norm, layer.mask_norm):
                shape = norm.moving_mean.shape
                norm.moving_mean.assign(rng.normal(size=shape))
                norm.moving_variance.assign(rng.uniform(0.5, 2.0, size=shape))
    layer = model.get_layer("depth_att1")
    clone = assert_config_round_trip(layer)
    assert clone.intermediate_channels == 2
    assert_save_load_equal(model, x, tmp_path)


@pytest.mark.both_backends
@pytest.mark.parametrize(
    "shapes, match",
    [
        ([(None, 6, 6, 3)], r"\[shared_intermediate"),
        ([(None, 6, 6, 3), (None, 3, 3, 5)], "same spatial size"),
        ([(None, 6, 6, 3), (None, 6, 6, 5), (None, 3, 3, 2)], "same spatial size"),
        ([(None, 6, 6, 3), (None, 6, 6, None)], "channel"),
    ],
)
def test_invalid_input_shapes_are_rejected(shapes, match):
    with pytest.raises(ValueError, match=match):
        MTANAttention().build(shapes)


@pytest.mark.both_backends
def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="intermediate_channels"):
        MTANAttention(intermediate_channels=0)
    with pytest.raises(ValueError, match="momentum"):
        MTANAttention(momentum=1.0)
    with pytest.raises(ValueError, match="epsilon"):
        MTANAttention(epsilon=0.0)
