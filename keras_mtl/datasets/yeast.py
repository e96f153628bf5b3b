"""Yeast: 14 binary tasks on 103 gene-expression features.

2,417 yeast genes, each described by 103 micro-array expression and
phylogenetic-profile features and annotated with a subset of 14 functional
categories (Elisseeff & Weston, 2002). Each category is one binary task,
"label_0" .. "label_13" (columns `Class1` .. `Class14`): a many-task problem
with strongly correlated and very unbalanced tasks (from 1.4% to 75% of
positives).

The file is `river/datasets/yeast.csv.gz` of the PyPI package
`river==0.26.1` (the MULAN version of the data, OpenML 40597). Its rows are
MULAN's test file followed by MULAN's training file: rows 0..916 are the 917
test genes, rows 917..2416 the 1,500 training genes (checked against the
first rows of MULAN's `yeast-train.arff`). That standard split is the one
used here:

- "test": rows 0..916 (917 genes);
- "train": rows 917..2416 (1,500 genes), or its first rows only when
  `validation_split > 0`;
- "validation": the last `round(validation_split * 1500)` training rows.

Features are standardized with the mean and standard deviation of the
training rows (those of "train", after removing the validation rows), the
same statistics for every split; a feature constant on the training rows is
only centred.

References:
    Elisseeff, Weston. A kernel method for multi-labelled classification.
        NeurIPS 2001.
    Tsoumakas, Spyromitros-Xioufis, Vilcek, Vlahavas. MULAN: A Java Library
        for Multi-Label Learning. JMLR 12, 2011.
"""

import gzip
import pathlib

import numpy as np

from keras_mtl.datasets import paths
from keras_mtl.utils.backend import require_tensorflow

NUM_FEATURES = 103
NUM_TASKS = 14
TASKS = tuple(f"label_{i}" for i in range(NUM_TASKS))
TEST_ROWS = 917  # rows 0..916 are MULAN's test genes, the rest its training genes
SPLITS = ("train", "validation", "test")


def read_csv(path):
    """(features float64 (N, 103), labels int32 (N, 14)) of a yeast csv(.gz).

    The header names the features `Att1..Att103` and the labels
    `Class1..Class14`; labels are 0 or 1.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        header = file.readline().strip().split(",")
        values = np.loadtxt(file, delimiter=",", dtype=np.float64, ndmin=2)
    features = [i for i, name in enumerate(header) if name.startswith("Att")]
    labels = [i for i, name in enumerate(header) if name.startswith("Class")]
    if len(features) != NUM_FEATURES or len(labels) != NUM_TASKS:
        raise ValueError(
            f"{path}: expected {NUM_FEATURES} Att* and {NUM_TASKS} Class* "
            f"columns, got {len(features)} and {len(labels)}."
        )
    if values.shape[1] != len(header):
        raise ValueError(
            f"{path}: rows have {values.shape[1]} values, header {len(header)}."
        )
    y = values[:, labels]
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{path}: labels must be 0 or 1.")
    return values[:, features], y.astype(np.int32)


def split_rows(num_rows, validation_split=0.0):
    """Row indices of "train", "validation" and "test" (see module doc)."""
    if not 0.0 <= float(validation_split) < 1.0:
        raise ValueError(
            f"validation_split must be in [0, 1), got {validation_split!r}."
        )
    if num_rows <= TEST_ROWS:
        raise ValueError(
            f"The yeast file has {num_rows} rows; the split needs more than "
            f"{TEST_ROWS} (the first {TEST_ROWS} are the test genes)."
        )
    train = np.arange(TEST_ROWS, num_rows)
    num_validation = int(round(float(validation_split) * len(train)))
    return {
        "train": train[: len(train) - num_validation],
        "validation": train[len(train) - num_validation :],
        "test": np.arange(TEST_ROWS),
    }


def load_arrays(
    split="train",
    validation_split=0.0,
    standardize=True,
    data_dir=None,
    download=False,
):
    """One split as numpy arrays.

    Args:
        split: "train", "validation" or "test".
        validation_split: fraction of the 1,500 training genes (the last ones)
            held out as "validation"; 0 (default) keeps them all in "train".
        standardize: standardize the features with the training statistics.
        data_dir, download: where the file is (see `keras_mtl.datasets.paths`).

    Returns:
        `(features, {"label_0": y_0, ..., "label_13": y_13})`: features
        float32 (N, 103), each label float32 (N,) in {0, 1}.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    path = paths.find("yeast", data_dir=data_dir, download=download)
    features, labels = read_csv(path)
    rows = split_rows(len(features), validation_split)
    if split == "validation" and len(rows["validation"]) == 0:
        raise ValueError(
            "split='validation' needs validation_split > 0 (the fraction of "
            "the training genes to hold out)."
        )
    x = features[rows[split]]
    if standardize:
        train = features[rows["train"]]
        mean, std = train.mean(axis=0), train.std(axis=0)
        x = (x - mean) / np.where(std > 0, std, 1.0)
    y = labels[rows[split]].astype(np.float32)
    return x.astype(np.float32), {task: y[:, i].copy() for i, task in enumerate(TASKS)}


def load(
    split="train",
    batch_size=64,
    shuffle=None,
    seed=0,
    validation_split=0.0,
    standardize=True,
    data_dir=None,
    download=False,
):
    """One split as a batched `tf.data.Dataset` of `(features, {task: y})`.

    features: float32 (batch, 103); each of the 14 targets float32 (batch,)
    in {0, 1}, for one-unit sigmoid heads. `shuffle` (default: True for
    "train") reshuffles every epoch from `seed`.
    """
    tf = require_tensorflow(
        "keras_mtl.datasets.yeast.load (a tf.data.Dataset; load_arrays needs "
        "only numpy)"
    )

    x, y = load_arrays(
        split,
        validation_split=validation_split,
        standardize=standardize,
        data_dir=data_dir,
        download=download,
    )
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle is None:
        shuffle = split == "train"
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=int(seed))
    return dataset.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
