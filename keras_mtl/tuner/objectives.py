"""Multi-task tuning objectives that compare across strategies.

The training objective of a strategy (a weighted sum of task losses, with
weights the strategy chooses, or no scalar at all for gradient methods) is
not comparable between strategies, so it cannot rank trials that use
different strategies. The objectives here only read per-task metrics from
the epoch logs (`val_<task>_<metric>` by default), which mean the same
thing whatever the strategy:

- `DeltaM`: the mean relative change against single-task results, in
  percent; lower is better.
- `WeightedMetricMean`: a weighted mean of one metric per task.
- `TaskMetric`: one task's metric.

`MultiTaskHyperModel.fit` writes the objective's value into every epoch's
logs (so that keras-tuner's checkpoint of the best epoch uses it) and
returns the logs of the best epoch, objective included. Give the tuner the
matching `keras_tuner.Objective` with `objective.to_keras_tuner()`.

Metric directions: a metric whose name contains "accuracy", "auc",
"precision", "recall", "f1", "iou" or "r2" is higher-is-better; one
containing "loss", "error", "crossentropy", "mse", "mae", "rmse" or
"hinge" is lower-is-better. Any other metric needs an explicit direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

_HIGHER_IS_BETTER = ("accuracy", "auc", "precision", "recall", "f1", "iou", "r2")
_LOWER_IS_BETTER = (
    "loss",
    "error",
    "crossentropy",
    "mse",
    "mae",
    "rmse",
    "hinge",
    "deviation",
)
_DIRECTIONS = ("min", "max")


def infer_direction(metric):
    """Returns "max" or "min" for a metric name, or None when unknown.

    >>> infer_direction("accuracy"), infer_direction("loss")
    ('max', 'min')
    """
    name = str(metric).lower()
    if any(word in name for word in _LOWER_IS_BETTER):
        return "min"
    if any(word in name for word in _HIGHER_IS_BETTER):
        return "max"
    return None


def _check_direction(direction, what):
    if direction not in _DIRECTIONS:
        raise ValueError(f"{what} must be 'min' or 'max', got {direction!r}.")
    return direction


def _direction_of(metric, direction, what):
    if direction is not None:
        return _check_direction(direction, what)
    inferred = infer_direction(metric)
    if inferred is None:
        raise ValueError(
            f"Cannot tell whether metric {metric!r} is better high or low; "
            f"give its direction ('min' or 'max') for {what}."
        )
    return inferred


class MultiTaskObjective:
    """Base class: a scalar computed from per-task metrics in epoch logs.

    Subclasses implement `required_metrics(task_names)` (the `(task,
    metric)` pairs they read) and `compute(values)` (the objective from a
    dict `{(task, metric): value}`).

    Args:
        name: the key of the objective in the logs and in the tuner.
        direction: "min" or "max".
        prefix: the prefix of the log keys read: "val_" (default, the
            validation metrics) or "" (the training metrics).
    """

    def __init__(self, name, direction, prefix="val_"):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}.")
        self.name = name
        self.direction = _check_direction(direction, "direction")
        self.prefix = str(prefix)

    def required_metrics(self, task_names):
        """The `(task, metric)` pairs the objective reads."""
        raise NotImplementedError

    def compute(self, values):
        """The objective from a dict `{(task, metric): value}`."""
        raise NotImplementedError

    def log_key(self, task, metric):
        """The epoch-log key of a task's metric, e.g. `val_digit_accuracy`."""
        return f"{self.prefix}{task}_{metric}"

    def required_keys(self, task_names):
        """The log keys the objective reads for a model's tasks."""
        return [self.log_key(t, m) for t, m in self.required_metrics(task_names)]

    def has_value(self, logs, task_names):
        """Whether `logs` hold every key the objective reads."""
        logs = logs or {}
        return all(key in logs for key in self.required_keys(task_names))

    def __call__(self, logs, task_names):
        """The objective's value from an epoch's logs.

        Args:
            logs: a dict of log values (`History.history` entries of one
                epoch, or `model.evaluate(..., return_dict=True)` with the
                prefix "").
            task_names: the model's task names.

        Raises:
            KeyError: naming the missing keys and the available ones.
        """
        logs = logs or {}
        pairs = self.required_metrics(task_names)
        missing = [
            self.log_key(t, m) for t, m in pairs if self.log_key(t, m) not in logs
        ]
        if missing:
            raise KeyError(
                f"Objective {self.name!r} needs the log keys {missing}, which "
                f"are missing; available: {sorted(logs)}. Compile the metrics "
                "per task and pass validation data (validation_data= or "
                "validation_split= to tuner.search) for 'val_' keys."
            )
        return float(
            self.compute({(t, m): float(logs[self.log_key(t, m)]) for t, m in pairs})
        )

    def best(self, values):
        """The index of the best of a list of objective values (NaN last)."""
        if not values:
            raise ValueError("No objective values to choose from.")
        finite = [i for i, v in enumerate(values) if not math.isnan(v)]
        if not finite:
            return 0
        pick = min if self.direction == "min" else max
        return pick(finite, key=lambda i: values[i])

    def to_keras_tuner(self):
        """The `keras_tuner.Objective` to pass to a tuner."""
        from keras_mtl.tuner._keras_tuner import keras_tuner

        return keras_tuner.Objective(self.name, direction=self.direction)

    def __repr__(self):
        return (
            f"<{type(self).__name__} name={self.name!r} direction={self.direction!r}>"
        )


class DeltaM(MultiTaskObjective):
    """Delta_m: mean relative change against single-task results, in %.

    With M_i the multi-task model's value of metric i, B_i the single-task
    (STL) baseline's value and s_i = 1 when metric i is higher-is-better
    (0 otherwise), over the K (task, metric) pairs given:

        Delta_m = 100 / K * sum_i (-1)^s_i * (M_i - B_i) / B_i

    Lower is better: a negative Delta_m means the multi-task model improves
    on the single-task models on average (Maninis et al., CVPR 2019, and the
    tables of Nash-MTL, FAMO and others). With `average="tasks"` the
    relative changes are first averaged over each task's metrics and then
    over tasks (LibMTL's `count_improvement` convention, sign flipped), so
    that a task with many metrics does not dominate.

    Args:
        baselines: dict `{task: {metric: value}}` of single-task results,
            e.g. `{"digit": {"accuracy": 0.97}, "depth": {"mae": 0.6}}`. A
            value may be a pair `(value, "min" | "max")` to give the
            direction of a metric whose name does not tell it.
        average: "metrics" (default) or "tasks".
        name: the objective's key. Default "delta_m".
        prefix: log-key prefix, "val_" (default) or "".

    Example:

    >>> from keras_mtl.tuner.objectives import DeltaM
    >>> objective = DeltaM({"a": {"accuracy": 0.8}, "b": {"loss": 0.5}})
    >>> logs = {"val_a_accuracy": 0.88, "val_b_loss": 0.45}
    >>> round(objective(logs, ("a", "b")), 6)  # (-10% - 10%) / 2
    -10.0

    References:
        Kevis-Kokitsi Maninis, Ilija Radosavovic, Iasonas Kokkinos.
        "Attentive Single-Tasking of Multiple Tasks". CVPR 2019.
        arXiv:1904.08918.
    """

    def __init__(self, baselines, average="metrics", name="delta_m", prefix="val_"):
        super().__init__(name, "min", prefix)
        if average not in ("metrics", "tasks"):
            raise ValueError(f"average must be 'metrics' or 'tasks', got {average!r}.")
        if not isinstance(baselines, Mapping) or not baselines:
            raise ValueError(
                "baselines must be a non-empty dict {task: {metric: value}}, "
                f"got {baselines!r}."
            )
        self.average = average
        self.baselines = {}
        self.directions = {}
        for task, metrics in baselines.items():
            if not isinstance(metrics, Mapping) or not metrics:
                raise ValueError(
                    f"baselines[{task!r}] must be a non-empty dict {{metric: "
                    f"value}}, got {metrics!r}."
                )
            for metric, spec in metrics.items():
                direction = None
                if isinstance(spec, tuple | list):
                    if len(spec) != 2:
                        raise ValueError(
                            f"baselines[{task!r}][{metric!r}] must be a value or "
                            f"(value, direction), got {spec!r}."
                        )
                    spec, direction = spec
                value = float(spec)
                if not math.isfinite(value) or value == 0.0:
                    raise ValueError(
                        f"baselines[{task!r}][{metric!r}] must be finite and "
                        f"non-zero (it divides), got {value}."
                    )
                self.baselines[(task, metric)] = value
                self.directions[(task, metric)] = _direction_of(
                    metric, direction, f"baselines[{task!r}][{metric!r}]"
                )

    def required_metrics(self, task_names):
        unknown = sorted({t for t, _ in self.baselines} - set(task_names))
        if unknown:
            raise ValueError(
                f"DeltaM has baselines for tasks {unknown} that the model "
                f"does not have; its tasks are {list(task_names)}."
            )
        return list(self.baselines)

    def relative_changes(self, values):
        """Dict `(task, metric) -> (-1)^s (M - B) / B` (positive: worse)."""
        changes = {}
        for key, baseline in self.baselines.items():
            change = (values[key] - baseline) / baseline
            changes[key] = -change if self.directions[key] == "max" else change
        return changes

    def compute(self, values):
        changes = self.relative_changes(values)
        if self.average == "metrics":
            return 100.0 * sum(changes.values()) / len(changes)
        per_task = {}
        for (task, _), change in changes.items():
            per_task.setdefault(task, []).append(change)
        means = [sum(v) / len(v) for v in per_task.values()]
        return 100.0 * sum(means) / len(means)


class WeightedMetricMean(MultiTaskObjective):
    """A weighted mean of one metric per task.

        value = sum_t w_t * M_t / sum_t w_t

    Every metric must have the same direction (a mean of accuracies, or of
    losses); mixing directions is what `DeltaM` is for.

    Args:
        metrics: a metric name used for every task (e.g. "accuracy" or
            "loss"), or a dict `{task: metric}` naming the tasks included.
        weights: None (equal weights) or a dict `{task: weight >= 0}`.
        direction: "min" or "max"; inferred from the metric names when
            None.
        name: the objective's key. Default "<prefix>mean_<metric>" for one
            metric name (e.g. "val_mean_accuracy"), else
            "<prefix>weighted_metric_mean".
        prefix: log-key prefix, "val_" (default) or "".

    Example:

    >>> from keras_mtl.tuner.objectives import WeightedMetricMean
    >>> objective = WeightedMetricMean("accuracy", weights={"a": 3, "b": 1})
    >>> objective({"val_a_accuracy": 0.9, "val_b_accuracy": 0.5}, ("a", "b"))
    0.8
    """

    def __init__(self, metrics, weights=None, direction=None, name=None, prefix="val_"):
        if isinstance(metrics, str):
            names = [metrics]
        elif isinstance(metrics, Mapping) and metrics:
            names = list(metrics.values())
        else:
            raise ValueError(
                "metrics must be a metric name or a non-empty dict "
                f"{{task: metric}}, got {metrics!r}."
            )
        if direction is None:
            inferred = {infer_direction(m) for m in names}
            if None in inferred:
                unknown = [m for m in names if infer_direction(m) is None]
                raise ValueError(
                    f"Cannot infer whether {unknown} are better high or low: "
                    "pass direction='min' or 'max'."
                )
            if len(inferred) > 1:
                raise ValueError(
                    f"Metrics {names} mix directions (higher- and "
                    "lower-is-better); use DeltaM to combine them."
                )
            direction = inferred.pop()
        if name is None:
            name = (
                f"{prefix}mean_{metrics}"
                if isinstance(metrics, str)
                else f"{prefix}weighted_metric_mean"
            )
        super().__init__(name, direction, prefix)
        self.metrics = metrics if isinstance(metrics, str) else dict(metrics)
        if weights is not None:
            if not isinstance(weights, Mapping) or not weights:
                raise ValueError(
                    f"weights must be None or a dict {{task: weight}}, got {weights!r}."
                )
            weights = {task: float(w) for task, w in weights.items()}
            bad = {
                t: w for t, w in weights.items() if not (w >= 0 and math.isfinite(w))
            }
            if bad or not sum(weights.values()) > 0:
                raise ValueError(
                    f"weights must be finite, >= 0 and not all 0, got {weights!r}."
                )
        self.weights = weights

    def _tasks(self, task_names):
        if isinstance(self.metrics, str):
            tasks = list(self.weights) if self.weights is not None else list(task_names)
        else:
            tasks = list(self.metrics)
        unknown = sorted(set(tasks) - set(task_names))
        if unknown:
            raise ValueError(
                f"WeightedMetricMean names tasks {unknown} that the model does "
                f"not have; its tasks are {list(task_names)}."
            )
        unweighted = sorted(set(tasks) - set(self.weights or tasks))
        if unweighted:
            raise ValueError(
                f"WeightedMetricMean has metrics but no weights for tasks "
                f"{unweighted}; give every task in `metrics` a weight."
            )
        return tasks

    def required_metrics(self, task_names):
        tasks = self._tasks(task_names)
        if isinstance(self.metrics, str):
            return [(t, self.metrics) for t in tasks]
        return [(t, self.metrics[t]) for t in tasks]

    def compute(self, values):
        total, norm = 0.0, 0.0
        for (task, _), value in values.items():
            weight = 1.0 if self.weights is None else self.weights[task]
            total += weight * value
            norm += weight
        return total / norm


class TaskMetric(MultiTaskObjective):
    """One task's metric, e.g. the validation accuracy of the main task.

    Args:
        task: the task name.
        metric: the metric name as compiled (e.g. "accuracy", "loss").
        direction: "min" or "max"; inferred from the name when None.
        name: the objective's key. Default "<prefix><task>_<metric>", the
            key Keras already logs.
        prefix: log-key prefix, "val_" (default) or "".

    Example:

    >>> from keras_mtl.tuner.objectives import TaskMetric
    >>> objective = TaskMetric("digit", "accuracy")
    >>> objective.name, objective.direction
    ('val_digit_accuracy', 'max')
    """

    def __init__(self, task, metric, direction=None, name=None, prefix="val_"):
        direction = _direction_of(metric, direction, "TaskMetric")
        super().__init__(name or f"{prefix}{task}_{metric}", direction, prefix)
        self.task = task
        self.metric = metric

    def required_metrics(self, task_names):
        if self.task not in task_names:
            raise ValueError(
                f"TaskMetric names task {self.task!r}; the model's tasks are "
                f"{list(task_names)}."
            )
        return [(self.task, self.metric)]

    def compute(self, values):
        return values[(self.task, self.metric)]


__all__ = [
    "DeltaM",
    "MultiTaskObjective",
    "TaskMetric",
    "WeightedMetricMean",
    "infer_direction",
]
