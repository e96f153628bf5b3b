"""The logs of a `MultiTaskModel` step: what `fit` and `evaluate` report.

`loss` is the unweighted sum of the task losses (so that it compares
across strategies), `<task>_loss` each task's loss (with missing labels,
its mean over labelled samples), `<task>_weight` the strategy's effective
weight (training only; with missing labels, the mean over the steps in
which the task was present), `<task>_aux_loss` each auxiliary output's
loss, and every compiled metric as `<task>_<metric>`. A skipped step adds
nothing to them.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.models import _distribution as distribution
from keras_mtl.models import _targets as targets


class StepLogs:
    """Updates and reads the model's loss and weight trackers.

    The trackers are `keras.metrics.Mean` attributes of the model (so that
    Keras resets them every epoch); this holder only knows what to feed
    them.
    """

    def __init__(self, task_names, auxiliary_tasks):
        self.task_names = tuple(task_names)
        self.loss_sum = keras.metrics.Mean(name="loss")
        self.task_losses = [keras.metrics.Mean(name=f"{t}_loss") for t in task_names]
        self.task_weights = [keras.metrics.Mean(name=f"{t}_weight") for t in task_names]
        self.aux_losses = [
            keras.metrics.Mean(name=f"{t}_aux_loss") for t in auxiliary_tasks
        ]

    @property
    def trackers(self):
        return [self.loss_sum, *self.task_losses, *self.task_weights, *self.aux_losses]

    def update_train(self, step, task_losses):
        """Adds a training step (`step.finite` False: it counts for nothing).

        `task_losses`: the model's `TaskLosses`, which says how much each
        task's loss weighs in its epoch mean.
        """
        finite = step.finite
        keep = ops.cast(finite, "float32") * targets.batch_size(step.y_pred)
        loss_weights = task_losses.log_weights(finite, keep, step.counts)
        safe_losses = ops.where(finite, step.losses, ops.zeros_like(step.losses))
        weights = ops.where(
            finite, ops.cast(step.weights, "float32"), ops.zeros_like(step.weights)
        )
        self.loss_sum.update_state(ops.sum(safe_losses), sample_weight=keep)
        for t in range(len(self.task_names)):
            self.task_losses[t].update_state(
                safe_losses[t], sample_weight=loss_weights[t]
            )
            weight_keep = keep
            if step.counts is not None:
                # The mean weight of the steps in which the task was present.
                weight_keep = keep * ops.cast(step.counts[t] > 0, "float32")
            self.task_weights[t].update_state(weights[t], sample_weight=weight_keep)
        self.update_aux(step.aux_losses, keep, finite)

    def update_test(self, losses, loss_weights, aux_losses, batch):
        """Adds an evaluation step."""
        self.loss_sum.update_state(ops.sum(losses), sample_weight=batch)
        for t in range(len(self.task_names)):
            self.task_losses[t].update_state(losses[t], sample_weight=loss_weights[t])
        self.update_aux(aux_losses, batch)

    def update_aux(self, aux_losses, sample_weight, finite=True):
        if aux_losses is None:
            return
        safe = ops.where(finite, aux_losses, ops.zeros_like(aux_losses))
        for t, tracker in enumerate(self.aux_losses):
            tracker.update_state(safe[t], sample_weight=sample_weight)

    def collect(self, compile_metrics, include_weights):
        """The logs: the trackers' and the compiled metrics' results."""
        logs = {"loss": self.loss_sum.result()}
        for tracker in self.task_losses:
            logs[tracker.name] = tracker.result()
        if include_weights:
            for tracker in self.task_weights:
                logs[tracker.name] = tracker.result()
        for tracker in self.aux_losses:
            logs[tracker.name] = tracker.result()
        if compile_metrics is not None:
            logs.update(self.metric_results(compile_metrics))
        return distribution.rank_one_across_workers(logs)

    def metric_results(self, compile_metrics):
        """The compiled metrics' values keyed `<task>_<metric>`.

        Keras names the metrics of a single-output model without the output
        name; a one-task MultiTaskModel keeps the task prefix anyway.
        """
        results = compile_metrics.result()
        if len(self.task_names) != 1:
            return results
        prefix = f"{self.task_names[0]}_"
        return {
            key if key.startswith(prefix) else prefix + key: value
            for key, value in results.items()
        }

    def update_metrics(self, compile_metrics, rules, y, y_pred, sample_weights, finite):
        """Updates the compiled metrics with the labelled samples of the
        task outputs `y_pred` (none of a step that is not finite; `finite`
        None: every sample counts). `rules`: the `missing_labels` rules."""
        if compile_metrics is None:
            return
        compile_metrics.update_state(
            *targets.masked_for_metrics(
                rules or {}, self.task_names, y, y_pred, sample_weights, finite
            )
        )

    def kpis(self, compile_metrics, name, strategy):
        """The `(T,)` values of the compiled metric `name` that `strategy`
        asks for as KPIs (`kpi_metric`), in task order."""
        results = {}
        if compile_metrics is not None:
            results = self.metric_results(compile_metrics)
        values = []
        for task in self.task_names:
            key = f"{task}_{name}"
            if key not in results:
                raise ValueError(
                    f"Strategy {type(strategy).__name__} needs the "
                    f"metric {name!r} for task {task!r} (log key {key!r}); "
                    f"compile with metrics={{{task!r}: [{name!r}], ...}}. "
                    f"Compiled metrics: {sorted(results)}."
                )
            values.append(ops.cast(results[key], "float32"))
        return ops.stack(values)
