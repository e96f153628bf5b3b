"""The gradient-path interface: from a batch to the gradients a step applies.

A `MultiTaskModel` chooses one gradient path when it is compiled, by what
its strategy needs (`select_gradient_path` in `__init__.py`). Every path
runs the forward pass, takes the task losses, lets the strategy combine
them (or their per-task gradients) and returns a `StepResult`: what the
step computed, and the gradients to apply with the variables they belong
to. The path applies nothing: the model's `train_step` hands the result
to its `StepGuard`, which applies the gradients only if the step is finite.

This is the one place that holds gradient tapes. The TensorFlow paths live
beside this file; a second backend adds its own paths behind the same
interface. On JAX, Keras' train step is stateless: the model's step runs
inside `keras.StatelessScope` over the state values, so that the
orchestration, the losses, the logs and every strategy read and assign
variables as they do on TensorFlow, while a JAX path takes its gradients
with `jax.vjp` of the model's `stateless_call` on the values it is given.
"""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_mtl.models import _targets as targets


class StepResult(NamedTuple):
    """What a gradient path computed for one step.

    Attributes:
        y_pred, losses, aux_losses, counts: as in `Forward`.
        weights: `(T,)` the strategy's effective task weights.
        finite: scalar bool, whether the step may be applied.
        grads: the gradients to apply (loss-scaled, as the optimizer
            expects them), one per variable of `variables`.
        variables: the variables they update.
    """

    y_pred: dict
    losses: object
    aux_losses: object
    weights: object
    finite: object
    counts: object
    grads: list
    variables: list


class Forward(NamedTuple):
    """A step's predictions and losses, before any gradient.

    Attributes:
        y_pred: dict of the model's outputs.
        losses: `(T,)` task losses of the global batch.
        aux_losses: `(A,)` auxiliary losses, or None.
        finite: scalar bool, whether the step may be applied (so far).
        counts: `(T,)` labelled counts, or None without missing labels.
        parts: `(stacked, raw)`, the losses' raw parts (`LossValues`).
    """

    y_pred: dict
    losses: object
    aux_losses: object
    finite: object
    counts: object
    parts: tuple

    def result(self, weights, grads, variables):
        """The `StepResult` of this forward pass."""
        return StepResult(
            self.y_pred,
            self.losses,
            self.aux_losses,
            weights,
            self.finite,
            self.counts,
            grads,
            variables,
        )


class GradientPath:
    """Base class of the gradient paths.

    Args:
        model: the `MultiTaskModel` being compiled. Its strategy, task
            graph, task losses and step guard are read at every call.
    """

    def __init__(self, model):
        self.model = model

    def strategy_input_shape(self):
        """The shape the strategy is built for: `(T,)` task losses or
        `(T, P)` per-task gradients (P None when it varies by batch)."""
        raise NotImplementedError

    def check_fit(self, batch_size):
        """Raises when `fit`'s arguments cannot give the path what it needs
        (`batch_size` as given to `fit`, or None)."""

    def __call__(self, x, y, sample_weights):
        """One step's `StepResult` for inputs `x`, targets `y` (a dict by
        task) and `sample_weights` (a dict by task, possibly empty)."""
        raise NotImplementedError

    # --- What every path does ---------------------------------------------

    @property
    def strategy(self):
        return self.model.loss_weighting

    def forward(self, x, y, sample_weights):
        """The model's forward pass in training mode, and its losses."""
        return self.losses(y, self.model(x, training=True), sample_weights)

    def losses(self, y, y_pred, sample_weights):
        """The task and auxiliary losses of predictions `y_pred`, and
        whether the step may go on (see `StepGuard.check_losses`)."""
        model = self.model
        task_losses = model._options.task_losses
        task_losses.check_targets(y, y_pred)
        values = task_losses(y, y_pred, sample_weights)
        aux_losses = task_losses.auxiliary(y, y_pred, sample_weights)
        checked = (
            values.losses
            if aux_losses is None
            else ops.concatenate([values.losses, aux_losses])
        )
        finite = model._guard.check_losses(
            checked, model._options.on_nonfinite, targets.batch_size(y_pred)
        )
        return Forward(
            y_pred,
            values.losses,
            aux_losses,
            finite,
            values.counts,
            (values.stacked, values.raw),
        )

    def strategy_inputs(self, step, y, sample_weights):
        """Updates the compiled metrics with the step (a strategy may read
        them as KPIs), then returns the safe losses (0 where the step is
        not finite) and the strategy's keyword inputs (`kpis`,
        `task_mask`)."""
        model = self.model
        model._update_compiled_metrics(step.finite, y, step.y_pred, sample_weights)
        safe_losses = ops.where(step.finite, step.losses, ops.zeros_like(step.losses))
        kwargs = {}
        if self.strategy.kpi_metric is not None:
            kwargs["kpis"] = model._kpis()
        if step.counts is not None:
            kwargs["task_mask"] = task_mask(step.counts)
        return safe_losses, kwargs

    def extra_objective(self, aux_losses):
        """Regularisers and auxiliary losses (see `TaskLosses`)."""
        return self.model._options.task_losses.extra_objective(
            self.model.losses, aux_losses
        )


def task_mask(counts):
    """`(T,)` floats, 1.0 for tasks with a labelled sample; None if no mask."""
    if counts is None:
        return None
    return ops.cast(counts > 0, "float32")
