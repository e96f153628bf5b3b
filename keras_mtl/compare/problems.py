"""The problems a comparison can run: a real data set, its model and metrics.

Each `Problem` loads its data (`load`), builds a `MultiTaskModel` for all
or some of its tasks (`build_model`; one task gives the single-task
baseline with the same trunk and head) and says how to compile it
(`losses`, `compile_metrics`) and which test metrics count, with their
direction (`metrics`).

- multi_fashion, multi_mnist, multi_fashion_mnist: two items on one canvas,
  tasks "left" and "right"; the LeNet of Sener & Koltun (2018); accuracy ↑.
- yeast: 103 features, 14 binary labels; an MLP trunk (256, 128) and one
  logistic unit per label; ROC AUC ↑.
- turkish_treebank: token tagging (upos, xpos, case, deprel); embedding 64 +
  BiGRU 64 trunk and one softmax per token and task; token accuracy ↑.
- dense_digits: pixel tasks on two overlapping real digits; a small conv
  encoder-decoder; pixel accuracy ↑, edge AUC ↑, depth MAE ↓.

The Multi-MNIST network follows the reference code of Sener & Koltun
(`multi_task/models/multi_lenet.py`, isl-org/MultiObjectiveOptimization):
shared conv(10, 5x5) -> max-pool 2 -> ReLU -> conv(20, 5x5) -> channel
dropout -> max-pool 2 -> ReLU -> dense 50 -> ReLU; each head dense 50 ->
ReLU -> dropout -> dense 10 (logits). Dropout rate 0.5 as there. Note: the
reference multiplies by a 0/1 Bernoulli(0.5) mask without the 1/(1-p)
rescaling (one channel mask for the whole batch in the trunk); Keras'
`SpatialDropout2D` and `Dropout` rescale during training and draw a mask
per example, which changes the activations' scale during training only.

Training defaults (Adam, learning rate, batch size, epochs, training set
size) are chosen so that the default comparison runs on two CPU cores in
minutes, not to reproduce published accuracies (Sener & Koltun train for 100
epochs with SGD): numbers compare methods with each other under the same
budget.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from keras_mtl.models.multi_task_model import MultiTaskModel


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """A test metric of a task: its log name, direction and Keras factory."""

    name: str
    higher_is_better: bool
    make: object  # callable () -> keras.metrics.Metric named `name`


@dataclasses.dataclass
class Split:
    """Arrays of one split: inputs, `{task: targets}`, `{task: weights}`."""

    x: object
    y: dict
    sample_weight: dict | None = None

    def __len__(self):
        return len(self.x)

    def select(self, tasks):
        """The split restricted to `tasks` (targets and weights)."""
        weights = None
        if self.sample_weight is not None:
            weights = {t: self.sample_weight[t] for t in tasks}
        return Split(self.x, {t: self.y[t] for t in tasks}, weights)


@dataclasses.dataclass
class Data:
    """The train and test splits of a problem, plus what the builder needs."""

    train: Split
    test: Split
    info: dict = dataclasses.field(default_factory=dict)


def _subset(n_total, size, seed=0):
    """Row indices of a seeded random subset of `size` rows (all if None)."""
    if size is None or size >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[: int(size)])


class Problem:
    """A data set with its model, losses and metrics (see module doc).

    Subclasses set the class attributes and implement `load`,
    `build_model`, `losses` and `metric_specs`.
    """

    name = ""
    title = ""
    tasks: tuple = ()
    batch_size = 32
    learning_rate = 1e-3
    epochs = 10
    train_size = None  # None: the whole training split
    test_size = None
    quick = {"train_size": 64, "test_size": 32, "epochs": 1}
    # Metrics shown in percent in tables (accuracies).
    percent_metrics = ("accuracy",)
    # "metrics" or "weighted_metrics" (token tasks weigh out padding).
    metrics_argument = "metrics"

    def load(self, train_size=None, test_size=None, data_dir=None, quick=False):
        """Returns a `Data` with the train and test splits."""
        raise NotImplementedError

    def build_model(self, data, tasks=None):
        """A `MultiTaskModel` with heads for `tasks` (default: all)."""
        raise NotImplementedError

    def losses(self, tasks=None):
        """`{task: keras loss}`."""
        raise NotImplementedError

    def metric_specs(self):
        """`{task: [MetricSpec]}`: the test metrics that count, per task."""
        raise NotImplementedError

    def compile_metrics(self, tasks=None):
        """Keyword arguments of `compile` with fresh metric objects."""
        tasks = tuple(tasks or self.tasks)
        specs = self.metric_specs()
        metrics = {t: [spec.make() for spec in specs[t]] for t in tasks}
        return {self.metrics_argument: metrics}

    def directions(self):
        """`{task: [(metric, higher_is_better)]}` for the report."""
        return {
            task: [(spec.name, spec.higher_is_better) for spec in specs]
            for task, specs in self.metric_specs().items()
        }


# ----------------------------------------------------------------------
# Multi-MNIST / Multi-Fashion / Multi-(Fashion+MNIST)
# ----------------------------------------------------------------------


class MultiMNISTProblem(Problem):
    """Two items on one canvas; LeNet trunk and heads of Sener & Koltun."""

    tasks = ("left", "right")
    batch_size = 256
    learning_rate = 1e-3
    epochs = 10
    train_size = 20000
    test_size = None  # the whole test split (10,000 pairs)

    def __init__(self, name, title):
        self.name = name
        self.title = title

    def load(self, train_size=None, test_size=None, data_dir=None, quick=False):
        from keras_mtl.datasets import multi_mnist

        train_x, train_y = multi_mnist.load_arrays(
            self.name, "train", num_pairs=train_size, seed=0, data_dir=data_dir
        )
        test_x, test_y = multi_mnist.load_arrays(
            self.name, "test", num_pairs=test_size, seed=0, data_dir=data_dir
        )
        return Data(Split(train_x, train_y), Split(test_x, test_y))

    def build_model(self, data, tasks=None):
        tasks = tuple(tasks or self.tasks)
        layers = keras.layers
        inputs = keras.Input(data.train.x.shape[1:], name="image")
        h = layers.Conv2D(10, 5, name="conv1")(inputs)
        h = layers.MaxPooling2D(2, name="pool1")(h)
        h = layers.ReLU(name="relu1")(h)
        h = layers.Conv2D(20, 5, name="conv2")(h)
        h = layers.SpatialDropout2D(0.5, name="channel_dropout")(h)
        h = layers.MaxPooling2D(2, name="pool2")(h)
        h = layers.ReLU(name="relu2")(h)
        h = layers.Flatten(name="flatten")(h)
        shared = layers.Dense(50, activation="relu", name="shared_fc")(h)
        outputs = {}
        for task in tasks:
            g = layers.Dense(50, activation="relu", name=f"{task}_fc")(shared)
            g = layers.Dropout(0.5, name=f"{task}_dropout")(g)
            outputs[task] = layers.Dense(10, name=f"{task}_logits")(g)
        return MultiTaskModel(inputs, outputs, name=f"{self.name}_lenet")

    def losses(self, tasks=None):
        return {
            t: keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            for t in tasks or self.tasks
        }

    def metric_specs(self):
        return {
            t: [
                MetricSpec(
                    "accuracy",
                    True,
                    lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                )
            ]
            for t in self.tasks
        }


# ----------------------------------------------------------------------
# Yeast
# ----------------------------------------------------------------------


class YeastProblem(Problem):
    """14 binary labels of yeast genes; MLP trunk, one logistic unit each."""

    name = "yeast"
    title = "Yeast (14 binary tasks, MULAN split)"
    batch_size = 64
    learning_rate = 1e-3
    epochs = 20
    train_size = None
    test_size = None
    # The whole test split even when quick: a few rows may hold no positive
    # of a rare label, whose AUC is then 0.
    quick = {"train_size": 64, "test_size": None, "epochs": 1}
    percent_metrics = ()

    @property
    def tasks(self):
        from keras_mtl.datasets import yeast

        return yeast.TASKS

    def load(self, train_size=None, test_size=None, data_dir=None, quick=False):
        from keras_mtl.datasets import yeast

        train_x, train_y = yeast.load_arrays("train", data_dir=data_dir)
        test_x, test_y = yeast.load_arrays("test", data_dir=data_dir)
        rows = _subset(len(train_x), train_size)
        test_rows = np.arange(len(test_x))[: test_size or len(test_x)]
        return Data(
            Split(train_x[rows], {t: v[rows] for t, v in train_y.items()}),
            Split(test_x[test_rows], {t: v[test_rows] for t, v in test_y.items()}),
        )

    def build_model(self, data, tasks=None):
        tasks = tuple(tasks or self.tasks)
        layers = keras.layers
        inputs = keras.Input(data.train.x.shape[1:], name="features")
        h = layers.Dense(256, activation="relu", name="shared_1")(inputs)
        h = layers.Dropout(0.2, name="shared_dropout")(h)
        h = layers.Dense(128, activation="relu", name="shared_2")(h)
        outputs = {
            t: layers.Dense(1, activation="sigmoid", name=f"{t}_prob")(h) for t in tasks
        }
        return MultiTaskModel(inputs, outputs, name="yeast_mlp")

    def losses(self, tasks=None):
        return {t: keras.losses.BinaryCrossentropy() for t in tasks or self.tasks}

    def metric_specs(self):
        # ROC AUC: several labels are very unbalanced (down to 1.4% positives),
        # where accuracy would mostly measure the base rate.
        return {
            t: [MetricSpec("auc", True, lambda: keras.metrics.AUC(name="auc"))]
            for t in self.tasks
        }


# ----------------------------------------------------------------------
# Turkish treebank
# ----------------------------------------------------------------------


class TreebankProblem(Problem):
    """Token tagging; embedding + BiGRU trunk, one softmax per token and task."""

    name = "turkish_treebank"
    title = "Turkish treebank (token tasks upos, xpos, case, deprel)"
    batch_size = 32
    learning_rate = 2e-3
    epochs = 5
    train_size = None
    test_size = None
    quick = {"train_size": 32, "test_size": 16, "epochs": 1}
    metrics_argument = "weighted_metrics"
    max_length = 64

    @property
    def tasks(self):
        from keras_mtl.datasets import turkish_treebank

        return turkish_treebank.TASKS

    def load(self, train_size=None, test_size=None, data_dir=None, quick=False):
        from keras_mtl.datasets import turkish_treebank as treebank

        vocabulary = treebank.build_vocabulary(data_dir=data_dir)
        splits = {}
        for split, size in (("train", train_size), ("test", test_size)):
            tokens, targets, weights = treebank.load_arrays(
                split,
                max_length=self.max_length,
                vocabulary=vocabulary,
                data_dir=data_dir,
            )
            rows = (
                _subset(len(tokens), size)
                if split == "train"
                else np.arange(len(tokens))[: size or len(tokens)]
            )
            splits[split] = Split(
                tokens[rows],
                {t: v[rows] for t, v in targets.items()},
                {t: v[rows] for t, v in weights.items()},
            )
        return Data(splits["train"], splits["test"], {"vocabulary": vocabulary})

    def build_model(self, data, tasks=None):
        tasks = tuple(tasks or self.tasks)
        vocabulary = data.info["vocabulary"]
        layers = keras.layers
        inputs = keras.Input((None,), dtype="int32", name="tokens")
        h = layers.Embedding(vocabulary.num_tokens, 64, name="embedding")(inputs)
        h = layers.Bidirectional(layers.GRU(64, return_sequences=True), name="bigru")(h)
        outputs = {
            t: layers.Dense(vocabulary.num_classes(t), name=f"{t}_logits")(h)
            for t in tasks
        }
        return MultiTaskModel(inputs, outputs, name="treebank_bigru")

    def losses(self, tasks=None):
        return {
            t: keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight"
            )
            for t in tasks or self.tasks
        }

    def metric_specs(self):
        return {
            t: [
                MetricSpec(
                    "accuracy",
                    True,
                    lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                )
            ]
            for t in self.tasks
        }


# ----------------------------------------------------------------------
# Dense digits
# ----------------------------------------------------------------------


class DenseDigitsProblem(Problem):
    """Pixel tasks on two overlapping digits; small conv encoder-decoder.

    The digits are scikit-learn's (offline): this problem needs no fetched
    files, which makes it the one the tests run.
    """

    name = "dense_digits"
    title = "Dense digits (segmentation, edges, depth; scikit-learn digits)"
    tasks = ("segmentation", "edges", "depth")
    batch_size = 32
    learning_rate = 2e-3
    epochs = 10
    train_size = None
    test_size = None
    quick = {"train_size": 32, "test_size": 16, "epochs": 1}
    image_size = 32
    digit_size = 20

    def load(self, train_size=None, test_size=None, data_dir=None, quick=False):
        from keras_mtl.datasets import dense_digits

        size, digit = (16, 10) if quick else (self.image_size, self.digit_size)
        kwargs = dict(image_size=size, digit_size=digit, seed=0)
        train_x, train_y = dense_digits.load_arrays(
            "train", num_samples=train_size, **kwargs
        )
        test_x, test_y = dense_digits.load_arrays(
            "test", num_samples=test_size, **kwargs
        )
        return Data(Split(train_x, train_y), Split(test_x, test_y))

    def build_model(self, data, tasks=None):
        tasks = tuple(tasks or self.tasks)
        layers = keras.layers
        inputs = keras.Input(data.train.x.shape[1:], name="image")
        h = layers.Conv2D(16, 3, padding="same", activation="relu", name="enc1")(inputs)
        h = layers.MaxPooling2D(2, name="pool")(h)
        h = layers.Conv2D(32, 3, padding="same", activation="relu", name="enc2")(h)
        h = layers.UpSampling2D(2, name="up")(h)
        shared = layers.Conv2D(16, 3, padding="same", activation="relu", name="dec")(h)
        heads = {
            "segmentation": (11, None),
            "edges": (1, "sigmoid"),
            "depth": (1, None),
        }
        outputs = {}
        for task in tasks:
            units, activation = heads[task]
            g = layers.Conv2D(
                16, 3, padding="same", activation="relu", name=f"{task}_conv"
            )(shared)
            outputs[task] = layers.Conv2D(
                units, 1, activation=activation, name=f"{task}_out"
            )(g)
        return MultiTaskModel(inputs, outputs, name="dense_digits_fcn")

    def losses(self, tasks=None):
        losses = {
            "segmentation": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            "edges": keras.losses.BinaryCrossentropy(),
            "depth": keras.losses.MeanAbsoluteError(),
        }
        return {t: losses[t] for t in tasks or self.tasks}

    def metric_specs(self):
        return {
            "segmentation": [
                MetricSpec(
                    "accuracy",
                    True,
                    lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                )
            ],
            "edges": [MetricSpec("auc", True, lambda: keras.metrics.AUC(name="auc"))],
            "depth": [
                MetricSpec(
                    "mae", False, lambda: keras.metrics.MeanAbsoluteError(name="mae")
                )
            ],
        }


PROBLEMS = {
    "multi_fashion": MultiMNISTProblem(
        "multi_fashion", "Multi-Fashion (two Fashion-MNIST items, left/right)"
    ),
    "multi_mnist": MultiMNISTProblem(
        "multi_mnist", "Multi-MNIST (two MNIST digits, left/right)"
    ),
    "multi_fashion_mnist": MultiMNISTProblem(
        "multi_fashion_mnist", "Multi-(Fashion+MNIST) (left item, right digit)"
    ),
    "yeast": YeastProblem(),
    "turkish_treebank": TreebankProblem(),
    "dense_digits": DenseDigitsProblem(),
}


def get(name):
    """The `Problem` registered under `name` (see `PROBLEMS`)."""
    key = str(name).lower().replace("-", "_")
    if key not in PROBLEMS:
        raise ValueError(
            f"Unknown data set {name!r} for the comparison; expected one of "
            f"{sorted(PROBLEMS)}."
        )
    return PROBLEMS[key]
