"""Tests of MultiBackbone (MBMT-Net fusion) and load_backbone_weights."""

import keras
import numpy as np
import pytest
from soft_sharing_checks import (
    assert_config_round_trip,
    assert_eager_equals_xla,
    assert_one_fit_step_trains,
    assert_save_load_equal,
    task_gradients,
)

import keras_mtl
from keras_mtl.layers.multi_backbone import MultiBackbone, load_backbone_weights

SIZE = 16
LOSSES = {
    "cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "reg": "mse",
}


def _cnn(channels, strides, name, batch_norm=False, size=SIZE):
    """A tiny functional CNN: (size, size, 3) -> (size/strides, ..., channels)."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(
        channels, 3, strides=strides, padding="same", name=f"{name}_conv"
    )(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu")(x)
    return keras.Model(inputs, x, name=name)


def _images(n=4, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(n, size, size, 3)).astype("float32")


def _targets(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "cls": rng.integers(0, 3, size=(n,)).astype("int32"),
        "reg": rng.normal(size=(n, 1)).astype("float32"),
    }


def _model(trunk, size=SIZE):
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(trunk(inputs))
    outputs = {
        "cls": keras.layers.Dense(3, name="cls_head")(pooled),
        "reg": keras.layers.Dense(1, name="reg_head")(pooled),
    }
    return keras_mtl.MultiTaskModel(inputs, outputs)


@pytest.mark.both_backends
@pytest.mark.parametrize(
    "align, size", [("smallest", (4, 4)), ("largest", (8, 8)), ((6, 5), (6, 5))]
)
def test_fused_channels_are_the_sum_of_backbone_channels(align, size):
    trunk = MultiBackbone(
        [_cnn(3, 2, "a"), _cnn(5, 4, "b"), _cnn(2, 2, "c")], align=align
    )
    fused = trunk(_images())
    assert tuple(fused.shape) == (4, *size, 3 + 5 + 2)
    assert trunk.compute_output_shape((None, SIZE, SIZE, 3)) == (None, *size, 10)


@pytest.mark.both_backends
def test_projection_sets_the_output_channels():
    trunk = MultiBackbone([_cnn(3, 2, "a"), _cnn(5, 4, "b")], projection_channels=7)
    assert tuple(trunk(_images()).shape) == (4, 4, 4, 7)
    assert trunk.projection.kernel.shape == (1, 1, 8, 7)


@pytest.mark.both_backends
def test_fusion_is_resize_then_concatenation():
    a, b = _cnn(3, 2, "a"), _cnn(5, 4, "b")
    x = _images()
    fa, fb = np.array(a(x)), np.array(b(x))
    # smallest: the 8x8 map is downscaled by 2; bilinear with half-pixel
    # centres then averages each 2x2 block. The 4x4 map is untouched.
    fused = np.array(MultiBackbone([a, b], align="smallest")(x))
    blocks = fa.reshape(4, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(fused[..., :3], blocks, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(fused[..., 3:], fb)
    # largest: the 8x8 map is untouched, the 4x4 map is upscaled.
    fused = np.array(MultiBackbone([a, b], align="largest")(x))
    np.testing.assert_array_equal(fused[..., :3], fa)
    assert fused.shape == (4, 8, 8, 8)


@pytest.mark.both_backends
def test_a_one_by_one_map_is_broadcast_over_space():
    # Bilinear upscaling of a 1x1 map (a global feature) is constant.
    trunk = MultiBackbone([_cnn(2, 2, "a"), _cnn(3, 16, "g")], align="largest")
    fused = np.array(trunk(_images()))
    np.testing.assert_allclose(
        fused[..., 2:], np.broadcast_to(fused[:, :1, :1, 2:], fused[..., 2:].shape)
    )


@pytest.mark.both_backends
def test_each_backbone_gets_its_own_preprocessing():
    a, b = _cnn(3, 2, "a"), _cnn(3, 2, "b")
    trunk = MultiBackbone(
        [a, b], preprocessors=[None, keras.layers.Rescaling(0.0, offset=1.0)]
    )
    x = _images()
    fused = np.array(trunk(x))
    np.testing.assert_allclose(fused[..., :3], np.array(a(x)), atol=1e-6)
    np.testing.assert_allclose(fused[..., 3:], np.array(b(np.ones_like(x))), atol=1e-6)
    assert trunk.preprocessors[0] is None
    assert isinstance(trunk.preprocessors[1], keras.layers.Rescaling)


def test_gradients_reach_unfrozen_backbones_only():
    frozen = _cnn(3, 2, "frozen", batch_norm=True)
    trunk = MultiBackbone(
        [_cnn(3, 2, "a"), frozen, _cnn(4, 4, "b")],
        backbone_trainable=[True, False, True],
    )
    model = _model(trunk)
    x, y = _images(), _targets()
    trainable = {v.path for v in model.trainable_variables}
    assert not trainable & {v.path for v in frozen.weights}
    for name in ["a", "b"]:
        variables = trunk.backbones[0 if name == "a" else 2].trainable_variables
        for task in ["cls", "reg"]:
            for grad in task_gradients(model, x, task, variables):
                assert np.abs(np.array(grad)).sum() > 0
    frozen_before = [np.array(w) for w in frozen.weights]  # incl. BN statistics
    changed = assert_one_fit_step_trains(model, x, y, LOSSES, jit_compile=False)
    assert [path for path, moved in changed.items() if not moved] == []
    for before, weight in zip(frozen_before, frozen.weights):
        np.testing.assert_array_equal(before, np.array(weight))


@pytest.mark.slow
def test_one_fit_step_under_xla():
    trunk = MultiBackbone(
        [_cnn(3, 2, "a", batch_norm=True), _cnn(4, 4, "b")],
        align="largest",
        projection_channels=4,
    )
    model = _model(trunk)
    changed = assert_one_fit_step_trains(model, _images(), _targets(), LOSSES)
    assert [path for path, moved in changed.items() if not moved] == []


@pytest.mark.both_backends
def test_eager_equals_xla():
    trunk = MultiBackbone([_cnn(3, 2, "a"), _cnn(4, 4, "b")], align="largest")
    x = _images()
    trunk(x)
    assert_eager_equals_xla(lambda v: trunk(v, training=False), x)


@pytest.mark.both_backends
def test_save_load_and_config_round_trip(tmp_path):
    trunk = MultiBackbone(
        [_cnn(3, 2, "a", batch_norm=True), _cnn(4, 4, "b")],
        preprocessors=[keras.layers.Rescaling(2.0, offset=-1.0), None],
        align=(5, 5),
        interpolation="nearest",
        projection_channels=6,
        projection_activation="relu",
        backbone_trainable=[True, False],
        name="trunk",
    )
    model = _model(trunk)
    clone = assert_config_round_trip(trunk)
    assert clone.align == (5, 5) and clone.backbone_trainable == [True, False]
    assert not clone.backbones[1].trainable
    loaded = assert_save_load_equal(model, _images(), tmp_path)
    restored = loaded.get_layer("trunk")
    assert isinstance(restored, MultiBackbone)
    assert [b.trainable for b in restored.backbones] == [True, False]
    assert len(loaded.trainable_variables) == len(model.trainable_variables)


@pytest.mark.slow
def test_keras_applications_backbone_with_a_custom_cnn(tmp_path):
    def mobilenet():
        return keras.applications.MobileNetV3Small(
            include_top=False,
            weights=None,
            input_shape=(32, 32, 3),
            include_preprocessing=False,
        )

    source = mobilenet()
    path = str(tmp_path / "mobilenet.weights.h5")
    source.save_weights(path)
    backbone = load_backbone_weights(mobilenet(), path)
    for a, b in zip(source.weights, backbone.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    trunk = MultiBackbone(
        [backbone, _cnn(8, 4, "cnn", size=32)],
        preprocessors=[keras.layers.Rescaling(1 / 127.5, offset=-1.0), None],
        align="largest",
        backbone_trainable=[False, True],
        name="trunk",
    )
    model = _model(trunk, size=32)
    x = _images(size=32) * 255.0
    assert tuple(trunk(x).shape) == (4, 8, 8, 576 + 8)
    changed = assert_one_fit_step_trains(
        model, x, _targets(), LOSSES, jit_compile=False
    )
    assert [path for path, moved in changed.items() if not moved] == []
    for a, b in zip(source.weights, backbone.weights):  # frozen: unchanged
        np.testing.assert_array_equal(np.array(a), np.array(b))
    assert_save_load_equal(model, x, tmp_path, atol=1e-5)


@pytest.mark.both_backends
def test_load_backbone_weights_from_local_files(tmp_path):
    source = _cnn(3, 2, "src", batch_norm=True)
    source.get_layer("src_bn").moving_mean.assign(np.arange(3, dtype="float32"))
    files = {
        "weights": tmp_path / "cnn.weights.h5",
        "keras": tmp_path / "cnn.keras",
    }
    source.save_weights(files["weights"])
    source.save(files["keras"])
    for path in files.values():
        target = _cnn(3, 2, "src", batch_norm=True)
        assert load_backbone_weights(target, path) is target
        for a, b in zip(source.weights, target.weights):
            np.testing.assert_array_equal(np.array(a), np.array(b))
    with pytest.raises(FileNotFoundError, match="No weights file"):
        load_backbone_weights(_cnn(3, 2, "x"), tmp_path / "missing.weights.h5")
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="Unsupported weights file"):
        load_backbone_weights(_cnn(3, 2, "x"), bad)
    with pytest.raises(ValueError, match="by_name"):
        load_backbone_weights(_cnn(3, 2, "x"), files["weights"], by_name=True)


@pytest.mark.both_backends
def test_load_backbone_weights_from_a_legacy_h5_file(tmp_path):
    # keras.applications' pretrained files are legacy .h5 weight files.
    source = _cnn(3, 2, "src")
    path = tmp_path / "cnn_legacy.h5"
    source.save(path)  # Keras' legacy HDF5 format
    target = load_backbone_weights(_cnn(3, 2, "src"), path, by_name=True)
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))


@pytest.mark.both_backends
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(backbones=[]), "backbones"),
        (dict(backbones=["resnet"]), r"backbones\[0\]"),
        (dict(preprocessors=[None]), "preprocessors"),
        (dict(preprocessors=[None, "norm"]), r"preprocessors\[1\]"),
        (dict(align="middle"), "align"),
        (dict(align=(4, 0)), "align"),
        (dict(projection_channels=0), "projection_channels"),
        (dict(backbone_trainable=[True]), "backbone_trainable"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    base = dict(backbones=[_cnn(3, 2, "a"), _cnn(3, 2, "b")])
    with pytest.raises(ValueError, match=match):
        MultiBackbone(**{**base, **kwargs})


@pytest.mark.both_backends
def test_backbones_must_output_feature_maps():
    pooled = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D()]
    )
    with pytest.raises(ValueError, match="feature maps"):
        MultiBackbone([_cnn(3, 2, "a"), pooled])(_images())
