"""Training on one data set per task: a sampler that picks each batch's task.

When every task has its own data set (its own inputs, of its own size), a
multi-task model can still be trained with one `fit`: each step draws a
task, takes the next batch of that task's data set, and the other tasks'
targets are marked as missing. `MultiTaskModel.compile(missing_labels=...)`
then gives those tasks zero loss and no gradient in that step, and leaves
the strategy's state for them untouched. This is the interleaved training of
the TensorFlow Model Garden multi-task trainer and of Stickland & Murray
(2019), written as a `tf.data` pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from keras_mtl.utils.backend import require_tensorflow
from keras_mtl.utils.serialization import register_serializable

SAMPLING_METHODS = ("uniform", "proportional", "annealed")


def _tensorflow():
    # The pipeline is tf.data: TensorFlow is imported at first use, so that
    # `keras_mtl.datasets` (its numpy loaders) imports without it.
    return require_tensorflow("keras_mtl.datasets.TaskSampler (a tf.data pipeline)")


@register_serializable
class TaskSampler:
    """Draws the task of each training batch from per-task data sets.

    With N_t the number of training examples of task t, the probability of
    drawing task t is

        uniform:       p_t = 1 / T
        proportional:  p_t = N_t^alpha / sum_s N_s^alpha
        annealed:      p_t = N_t^a(e) / sum_s N_s^a(e),
                       a(e) = 1 - 0.8 (e - 1) / (E - 1)

    where e = 1..E is the epoch (annealed sampling of Stickland & Murray
    2019: proportional to the sizes at first, closer to uniform at the end,
    so that small tasks are not forgotten). `alpha = 1` is sampling in
    proportion to the sizes; `alpha = 0.5` is the square-root sampling of
    Stickland & Murray.

    `interleave(datasets)` builds the training pipeline: a `tf.data.Dataset`
    of `(x, {task: y})` in which each batch comes from one task's data set
    and the other tasks' targets hold their sentinel (`missing_labels`),
    ready for a model compiled with
    `compile(missing_labels=sampler.missing_labels(datasets))`.

    Args:
        sizes: dict `{task: number of training examples}` (positive), in
            the model's task order.
        method: "uniform", "proportional" or "annealed".
        alpha: exponent of the proportional method (>= 0).
        steps_per_epoch: steps of one epoch (annealed only; also what `fit`
            must be given, since the pipeline repeats for ever).
        epochs: the number E of epochs of the run (annealed only, >= 1).
        seed: seed of the task draws (None: nondeterministic).

    Example:

    >>> sampler = keras_mtl.datasets.TaskSampler({"a": 900, "b": 100})
    >>> [round(float(p), 2) for p in sampler.probabilities(0)]
    [0.9, 0.1]
    >>> annealed = keras_mtl.datasets.TaskSampler(
    ...     {"a": 900, "b": 100}, "annealed", steps_per_epoch=10, epochs=5)
    >>> [round(float(p), 3) for p in annealed.probabilities(45)]
    [0.608, 0.392]

    References:
        Stickland, A. C. & Murray, I. "BERT and PALs: Projected Attention
        Layers for Efficient Adaptation in Multi-Task Learning." ICML 2019,
        arXiv:1902.02671 (annealed and square-root sampling).
        TensorFlow Model Garden, `official/modeling/multitask` (the
        uniform, proportional and annealing task samplers of its
        interleaving trainer).
    """

    def __init__(
        self,
        sizes,
        method="proportional",
        alpha=1.0,
        steps_per_epoch=None,
        epochs=None,
        seed=None,
    ):
        _tensorflow()
        if not isinstance(sizes, Mapping) or not sizes:
            raise ValueError(
                f"sizes must be a non-empty dict {{task: number of examples}}, "
                f"got {sizes!r}."
            )
        for task, size in sizes.items():
            if isinstance(size, bool) or not isinstance(size, (int, float)):
                raise ValueError(f"sizes[{task!r}] must be a number, got {size!r}.")
            if not size > 0 or not math.isfinite(size):
                raise ValueError(
                    f"sizes[{task!r}] must be a positive number of examples, "
                    f"got {size!r}."
                )
        if method not in SAMPLING_METHODS:
            raise ValueError(
                f"method must be one of {SAMPLING_METHODS}, got {method!r}."
            )
        if not (
            isinstance(alpha, (int, float)) and alpha >= 0 and math.isfinite(alpha)
        ):
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}.")
        if method == "annealed":
            for name, value in (
                ("steps_per_epoch", steps_per_epoch),
                ("epochs", epochs),
            ):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(
                        f"The annealed method needs {name} as an integer >= 1, "
                        f"got {value!r}."
                    )
        self.sizes = dict(sizes)
        self.method = method
        self.alpha = float(alpha)
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.seed = seed

    @property
    def task_names(self):
        return tuple(self.sizes)

    def probabilities(self, step):
        """The `(T,)` task probabilities of training step `step` (from 0)."""
        tf = _tensorflow()
        sizes = tf.constant(list(self.sizes.values()), dtype=tf.float32)
        if self.method == "uniform":
            return tf.fill(tf.shape(sizes), 1.0 / len(self.sizes))
        if self.method == "proportional":
            exponent = tf.constant(self.alpha)
        else:
            step = tf.cast(step, tf.float32)
            epoch = tf.floor(step / self.steps_per_epoch) + 1.0
            epoch = tf.minimum(epoch, float(self.epochs))
            exponent = 1.0 - 0.8 * (epoch - 1.0) / max(self.epochs - 1, 1)
        # Normalised in log space: sizes**exponent overflows for large sizes.
        return tf.nn.softmax(exponent * tf.math.log(sizes))

    def missing_labels(self, datasets):
        """The sentinel of an absent target of each task, for `compile`:
        -1 for integer targets, NaN for floating-point ones."""
        datasets = self._check_datasets(datasets)
        sentinels = {}
        for task, dataset in datasets.items():
            dtype = dataset.element_spec[1].dtype
            sentinels[task] = float("nan") if dtype.is_floating else -1
        return sentinels

    def interleave(self, datasets):
        """A repeated `tf.data.Dataset` of `(x, {task: y})` batches.

        Args:
            datasets: dict `{task: tf.data.Dataset}` of batched `(x, y)`,
                one per task of `sizes`, with inputs of the same structure
                (the model's) and each task's own targets `y`.

        Returns:
            A dataset without end: pass `steps_per_epoch` to `fit`.
        """
        tf = _tensorflow()
        datasets = self._check_datasets(datasets)
        sentinels = self.missing_labels(datasets)
        target_specs = {t: ds.element_spec[1] for t, ds in datasets.items()}
        branches = []
        for task, dataset in datasets.items():
            branches.append(
                dataset.repeat().map(
                    _with_other_targets_missing(task, target_specs, sentinels),
                    num_parallel_calls=tf.data.AUTOTUNE,
                )
            )
        if self.method == "annealed":
            weights = tf.data.Dataset.range(2**62).map(self.probabilities)
        else:
            weights = [float(p) for p in self.probabilities(0).numpy()]
        return tf.data.Dataset.sample_from_datasets(
            branches, weights=weights, seed=self.seed
        ).prefetch(tf.data.AUTOTUNE)

    def _check_datasets(self, datasets):
        tf = _tensorflow()
        if not isinstance(datasets, Mapping):
            raise ValueError(
                f"datasets must be a dict {{task: tf.data.Dataset}}, got "
                f"{type(datasets).__name__}."
            )
        if set(datasets) != set(self.sizes):
            raise ValueError(
                f"datasets name tasks {sorted(datasets)} but the sampler's sizes "
                f"name {sorted(self.sizes)}."
            )
        for task, dataset in datasets.items():
            spec = getattr(dataset, "element_spec", None)
            if not isinstance(spec, tuple) or len(spec) != 2:
                raise ValueError(
                    f"datasets[{task!r}] must be a tf.data.Dataset of (x, y) "
                    f"batches, got element spec {spec!r}."
                )
            if not isinstance(spec[1], tf.TensorSpec):
                raise ValueError(
                    f"datasets[{task!r}] must yield one target tensor per batch "
                    f"(its own task's), got {spec[1]!r}."
                )
        return {task: datasets[task] for task in self.sizes}

    def get_config(self):
        return {
            "sizes": dict(self.sizes),
            "method": self.method,
            "alpha": self.alpha,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _with_other_targets_missing(task, target_specs, sentinels):
    """A map function `(x, y) -> (x, {task: y, other: sentinel...})`."""

    def fill(x, y):
        tf = _tensorflow()
        batch = tf.shape(y)[0]
        targets = {}
        for other, spec in target_specs.items():
            if other == task:
                targets[other] = y
                continue
            shape = tf.concat([[batch], _static_dims(other, spec)], axis=0)
            targets[other] = tf.fill(shape, tf.cast(sentinels[other], spec.dtype))
        return x, targets

    return fill


def _static_dims(task, spec):
    tf = _tensorflow()
    dims = spec.shape[1:]
    if not dims.is_fully_defined():
        raise ValueError(
            f"The targets of task {task!r} have shape {spec.shape}: every "
            "dimension but the batch must be known to fill absent targets."
        )
    return tf.constant(dims.as_list(), dtype=tf.int32)
