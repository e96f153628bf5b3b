"""Per-task gradients of the shared parameters (TensorFlow): the base of the
matrix and Gramian paths, and what every per-task path does after the
strategy has combined the shared gradients."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.models import _distribution as distribution
from keras_mtl.models.gradient_paths import _tape_ops as tape_ops
from keras_mtl.models.gradient_paths.base import GradientPath, task_mask


class ParameterGradientPath(GradientPath):
    """For gradient methods: one backward pass per task, through its own
    loss, of the shared variables and the task's own variables.

    Subclasses decide how the per-task gradients of the shared variables,
    held as one `(T, P_v)` block per shared variable, become the shared
    variables' update (`combine`). Each task's own variables (its head)
    get its own gradient, times the strategy's `head_gradient_scales`.
    """

    def strategy_input_shape(self):
        num_params = sum(
            math.prod(v.shape) for v in self.model._task_graph.shared_variables
        )
        if num_params == 0:
            raise ValueError(
                f"Strategy {type(self.strategy).__name__} combines per-task "
                "gradients of shared variables, but no trainable variable of "
                "this model is shared by two tasks."
            )
        return (self.model.num_tasks, num_params)

    def combine(self, tape, blocks, objectives, finite, losses, kwargs):
        """The shared variables' update gradients and the `(T,)` weights."""
        raise NotImplementedError

    def __call__(self, x, y, sample_weights):
        import tensorflow as tf

        graph = self.model._task_graph
        shared, own = graph.shared_variables, graph.task_variables
        with tf.GradientTape(persistent=True) as tape:
            step = self.forward(x, y, sample_weights)
            task_objectives, strategy_objective = self.task_objectives(step)
            stacked_objectives = ops.stack(task_objectives)
            extra = self.extra_objective(step.aux_losses)
        # blocks[i]: the (T, P_i) per-task gradients of shared variable i.
        blocks, own_grads = [[] for _ in shared], []
        sources = [[*shared, *own[task]] for task in self.model.task_names]
        for grads, variables in zip(
            tape_ops.task_gradients(tape, task_objectives, step.parts, sources),
            sources,
        ):
            grads = tape_ops.or_zeros(grads, variables)
            for i, grad in enumerate(grads[: len(shared)]):
                blocks[i].append(ops.reshape(ops.cast(grad, "float32"), (-1,)))
            own_grads.append(grads[len(shared) :])
        blocks = [ops.stack(rows) for rows in blocks]
        safe_losses, kwargs = self.strategy_inputs(step, y, sample_weights)
        update_grads, weights = self.combine(
            tape, blocks, stacked_objectives, step.finite, safe_losses, kwargs
        )
        return self.finish(
            tape, step, weights, update_grads, own_grads, extra, strategy_objective
        )

    # --- Shared by every per-task path ------------------------------------

    def task_objectives(self, step):
        """The (loss-scaled) objective of each task's gradient, and what
        trains the strategy's own variables (None when it has none).

        Called inside the tape. Per-task gradients are those of the
        strategy's `transform_losses` (the identity for most methods), told
        which tasks are present when the model has missing labels."""
        strategy, optimizer = self.strategy, self.model.optimizer
        mask = task_mask(step.counts)
        if mask is None:
            transformed = strategy.transform_losses(step.losses)
        else:
            transformed = strategy.transform_losses(step.losses, task_mask=mask)
        transformed = ops.cast(transformed, "float32")
        objectives = [
            optimizer.scale_loss(transformed[t]) for t in range(self.model.num_tasks)
        ]
        own = None
        if strategy.trainable_variables:
            own = optimizer.scale_loss(ops.sum(transformed))
        return objectives, own

    def loss_scale(self):
        """The optimizer's dynamic loss scale (float32), or None."""
        scale = getattr(self.model.optimizer, "dynamic_scale", None)
        return None if scale is None else ops.cast(scale, "float32")

    def update_from_matrix(self, blocks, finite, losses, kwargs):
        """The strategy's `(P,)` update (loss-scaled) and `(T,)` weights from
        the `(T, P)` matrix of per-task gradients of the global batch
        (`blocks`: one `(T, P_v)` block per shared variable; `(k, T, P_v)`
        for a strategy fed k sub-batches)."""
        matrix = distribution.sum_over_replicas(ops.concatenate(blocks, axis=-1))
        scale = self.loss_scale()
        if scale is not None:
            matrix = matrix / scale
        matrix = ops.where(finite, matrix, ops.zeros_like(matrix))
        update, weights = self.strategy(matrix, losses, training=True, **kwargs)
        if scale is not None:
            update = update * scale
        # The optimizer sums the replicas' gradients; the update is already
        # that of the global batch on every replica.
        return update / distribution.num_replicas(), weights

    def weights_from_gramian(self, gramian, finite, losses, kwargs):
        """The strategy's `(T,)` weights from the (loss-scaled) Gramian of
        the global batch's per-task gradients."""
        scale = self.loss_scale()
        if scale is not None:
            gramian = gramian / ops.square(scale)
        gramian = ops.where(finite, gramian, ops.zeros_like(gramian))
        return gramian_weights(self.strategy, gramian, losses, kwargs)

    def finish(
        self, tape, step, weights, update_grads, own_grads, extra, strategy_objective
    ):
        """The step's result: the shared variables' update, the heads'
        gradients scaled by the strategy, the gradients of the extra
        objective and of the strategy's own variables."""
        strategy = self.strategy
        graph = self.model._task_graph
        safe_losses = ops.where(step.finite, step.losses, ops.zeros_like(step.losses))
        head_scales = strategy.head_gradient_scales(safe_losses, weights)
        grads, variables = list(update_grads), list(graph.shared_variables)
        for t, task in enumerate(self.model.task_names):
            for grad, variable in zip(own_grads[t], graph.task_variables[task]):
                grad = ops.zeros_like(variable) if grad is None else grad
                grads.append(grad * ops.cast(head_scales[t], grad.dtype))
                variables.append(variable)
        grads, variables = self._add_extra_gradients(tape, extra, grads, variables)
        grads, variables = self._add_strategy_gradients(
            tape, strategy_objective, grads, variables
        )
        del tape
        return step.result(weights, grads, variables)

    def _add_strategy_gradients(self, tape, objective, grads, variables):
        """Adds the strategy's trainable variables and their gradients."""
        if objective is None:
            return grads, variables
        own = list(self.strategy.trainable_variables)
        own_grads = tape.gradient(objective, own)
        # Every replica computes the full gradient of the global-batch
        # losses; the optimizer sums the replicas.
        replicas = distribution.num_replicas()
        own_grads = [
            ops.zeros_like(v) if g is None else g / replicas
            for g, v in zip(own_grads, own)
        ]
        return [*grads, *own_grads], [*variables, *own]

    def _add_extra_gradients(self, tape, extra, grads, variables):
        """Adds the gradient of the extra objective (regularisers, auxiliary
        losses) to `grads`, also for variables outside the task graph (the
        auxiliary branches)."""
        if extra is None:
            return grads, variables
        known = {id(v) for v in variables}
        known.update(id(v) for v in self.strategy.trainable_variables)
        others = [v for v in self.model.trainable_variables if id(v) not in known]
        variables = [*variables, *others]
        grads = [*grads, *(ops.zeros_like(v) for v in others)]
        extra_grads = tape.gradient(self.model.optimizer.scale_loss(extra), variables)
        grads = [
            g if e is None else g + ops.cast(e, g.dtype)
            for g, e in zip(grads, extra_grads)
        ]
        return grads, variables


def gramian_weights(strategy, gramian, losses, kwargs):
    """A Gramian strategy's float32 `(T,)` weights, zero for absent tasks."""
    weights = strategy.compute_weights(gramian, losses, training=True, **kwargs)
    weights = ops.cast(weights, "float32")
    if "task_mask" in kwargs:
        weights = weights * kwargs["task_mask"]
    return weights
