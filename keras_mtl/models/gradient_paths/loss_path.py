"""The loss path: the strategy combines the task losses (TensorFlow)."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.models import _distribution as distribution
from keras_mtl.models.gradient_paths import _tape_ops as tape_ops
from keras_mtl.models.gradient_paths.base import GradientPath


class LossGradientPath(GradientPath):
    """For strategies with `requires == "losses"`: one backward pass.

    The strategy maps the `(T,)` task losses to `(objective, weights)`;
    the step's gradients are those of the objective (plus regularisers and
    auxiliary losses) with respect to every trainable variable, the
    strategy's own (uncertainty log-variances) included. A strategy with
    `shared_gradients` also gets the `(T, P')` per-task gradients of the
    last shared layer or of every shared variable (GradNorm), taken under
    an inner tape so that the objective may depend on them.
    """

    def __init__(self, model):
        super().__init__(model)
        _shared_gradient_variables(model)  # validates at compile time

    def strategy_input_shape(self):
        return (self.model.num_tasks,)

    def __call__(self, x, y, sample_weights):
        import tensorflow as tf

        model, strategy = self.model, self.strategy
        variables = model.trainable_variables
        grad_variables = _shared_gradient_variables(model)
        with tf.GradientTape() as tape:
            with tf.GradientTape(persistent=True) as inner:
                step = self.forward(x, y, sample_weights)
                task_losses = [step.losses[t] for t in range(model.num_tasks)]
            safe_losses, kwargs = self.strategy_inputs(step, y, sample_weights)
            if grad_variables:
                matrix = tape_ops.gradient_matrix(
                    inner, task_losses, step.parts, grad_variables
                )
                if not strategy.differentiable_gradients:
                    matrix = ops.stop_gradient(distribution.sum_over_replicas(matrix))
                kwargs["shared_grads"] = ops.where(
                    step.finite, matrix, ops.zeros_like(matrix)
                )
            objective, weights = self.objective(step, safe_losses, kwargs)
            scaled = model.optimizer.scale_loss(objective)
        grads = tape_ops.or_zeros(tape.gradient(scaled, variables), variables)
        replicas = distribution.num_replicas()
        if replicas > 1 and strategy.trainable_variables:
            # The objective depends on the strategy's own variables through
            # the global-batch losses, the same on every replica: their full
            # gradient is computed R times and summed by the optimizer.
            own = {id(v) for v in strategy.trainable_variables}
            grads = [
                g / replicas if id(v) in own else g for g, v in zip(grads, variables)
            ]
        return step.result(weights, grads, variables)

    def objective(self, step, safe_losses, kwargs):
        """The objective to differentiate and the `(T,)` weights: the
        strategy's combination of the safe losses (of this step's sampled
        task only, under task sampling), plus the extra objective. Shared
        with the JAX loss path."""
        sampled = self._sampled_task_mask()
        if sampled is not None:
            objective, weights = self.strategy(
                safe_losses * sampled, training=True, **kwargs
            )
            weights = weights * sampled
        else:
            objective, weights = self.strategy(safe_losses, training=True, **kwargs)
        extra = self.extra_objective(step.aux_losses)
        if extra is not None:
            objective = objective + extra
        return objective, weights

    def _sampled_task_mask(self):
        """A one-hot `(T,)` mask of this step's task, or None."""
        model = self.model
        if model._options.task_sampling is None:
            return None
        task = keras.random.randint(
            (), 0, model.num_tasks, seed=model._task_sampler, dtype="int32"
        )
        return ops.one_hot(task, model.num_tasks, dtype="float32")


def _shared_gradient_variables(model):
    """The variables whose per-task gradients a loss strategy asks for."""
    strategy = model.loss_weighting
    which = getattr(strategy, "shared_gradients", None)
    if which is None:
        return []
    graph = model._task_graph
    if which == "last_layer":
        variables = graph.last_shared_variables
    elif which == "all":
        variables = graph.shared_variables
    else:
        raise ValueError(
            f"{type(strategy).__name__}.shared_gradients must be None, "
            f"'last_layer' or 'all', got {which!r}."
        )
    if not variables:
        raise ValueError(
            f"{type(strategy).__name__} needs per-task gradients of shared "
            f"variables ({which!r}), but no trainable variable of this "
            "model is shared by two tasks."
        )
    return list(variables)
