"""The representation path: per-task gradients of the shared
representation instead of the shared parameters (TensorFlow; the JAX twin,
`JaxRepresentationGradientPath`, shares the strategy's part)."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.models.gradient_paths import _tape_ops as tape_ops
from keras_mtl.models.gradient_paths.parameter_path import (
    ParameterGradientPath,
    gramian_weights,
)


class RepresentationGradientPath(ParameterGradientPath):
    """For strategies with `rep_grad=True` (the "UB" variants of MGDA and
    others, Sener & Koltun 2018): the model is cut at its shared
    representation into a trunk and heads; the per-task gradients are
    those of the representation tensors, `(T, B * D)`, the strategy's
    update is pushed back through the trunk as the representation's
    cotangent, one backward pass. A Gramian strategy chooses its weights
    from the task gradients summed over the batch, `(T, D)`, and combines
    the per-example gradients with them, as LibMTL's representation mode.
    """

    def __init__(self, model):
        super().__init__(model)
        split = _split_at_representation(model)
        self.trunk, self.heads = split.trunk, split.heads

    def strategy_input_shape(self):
        return (self.model.num_tasks, None)

    def __call__(self, x, y, sample_weights):
        import tensorflow as tf

        graph = self.model._task_graph
        shared, own = graph.shared_variables, graph.task_variables
        with tf.GradientTape(persistent=True) as tape:
            reps = self.trunk(x, training=True)
            reps = list(reps) if isinstance(reps, (list, tuple)) else [reps]
            for rep in reps:
                tape.watch(rep)
            step = self.losses(y, self.heads(reps, training=True), sample_weights)
            task_objectives, strategy_objective = self.task_objectives(step)
            extra = self.extra_objective(step.aux_losses)
        rows, summed_rows, own_grads = [], [], []
        sources = [[*reps, *own[task]] for task in self.model.task_names]
        for grads in tape_ops.task_gradients(
            tape, task_objectives, step.parts, sources
        ):
            rep_grads = [
                ops.cast(ops.zeros_like(r) if g is None else g, "float32")
                for g, r in zip(grads[: len(reps)], reps)
            ]
            rows.append(ops.concatenate([ops.reshape(g, (-1,)) for g in rep_grads]))
            summed_rows.append(
                ops.concatenate(
                    [ops.reshape(ops.sum(g, axis=0), (-1,)) for g in rep_grads]
                )
            )
            own_grads.append(grads[len(reps) :])
        update, weights = self.update_from_rows(
            ops.stack(rows), ops.stack(summed_rows), step, y, sample_weights
        )
        cotangents = self.cotangents(update, reps)
        shared_grads = tape_ops.or_zeros(
            tape.gradient(reps, shared, output_gradients=cotangents), shared
        )
        return self.finish(
            tape, step, weights, shared_grads, own_grads, extra, strategy_objective
        )

    def update_from_rows(self, matrix, summed, step, y, sample_weights):
        """The strategy's update of the representations (loss-scaled, flat)
        and `(T,)` weights, from the `(T, B * D)` per-task gradients of the
        representations and the `(T, D)` same summed over the batch (a
        Gramian strategy weighs with the latter's Gramian)."""
        strategy = self.strategy
        scale = self.loss_scale()
        if scale is not None:
            matrix, summed = matrix / scale, summed / scale
        matrix = ops.where(step.finite, matrix, ops.zeros_like(matrix))
        safe_losses, kwargs = self.strategy_inputs(step, y, sample_weights)
        if strategy.requires == "gramian":
            summed = ops.where(step.finite, summed, ops.zeros_like(summed))
            gramian = ops.matmul(summed, ops.transpose(summed))
            weights = gramian_weights(strategy, gramian, safe_losses, kwargs)
            update = ops.matmul(weights[None, :], matrix)[0]
        else:
            update, weights = strategy(matrix, safe_losses, training=True, **kwargs)
        if scale is not None:
            update = update * scale
        return update, weights

    def cotangents(self, update, reps):
        """The flat update cut into one cotangent per representation."""
        cotangents, offset = [], 0
        for rep in reps:
            size = ops.size(rep)
            piece = ops.reshape(update[offset : offset + size], ops.shape(rep))
            cotangents.append(ops.cast(piece, rep.dtype))
            offset = offset + size
        return cotangents


def _split_at_representation(model):
    """Trunk (inputs -> shared representation) and heads (-> outputs), made
    once per model (each functional model over the model's layers adds
    nodes to them)."""
    split = getattr(model, "_representation_split", None)
    if split is None:
        split = _new_split(model)
        # Kept out of Keras' tracking: the layers are the model's own.
        object.__setattr__(model, "_representation_split", split)
    return split


def _new_split(model):
    reps = model._task_graph.shared_representations
    if not reps:
        raise ValueError(
            "rep_grad=True needs a shared representation: a tensor made "
            "by shared layers and read by task-specific layers. This "
            "model has none."
        )
    try:
        trunk = keras.Model(model.inputs, list(reps))
        heads = keras.Model(list(reps), model._outputs_struct)
    except ValueError as error:
        raise ValueError(
            "rep_grad=True needs task heads that read only the shared "
            f"representation, not the model inputs directly: {error}"
        ) from error
    return _Split(trunk, heads)


class _Split:
    """The model cut at its shared representation: a plain holder, so that
    saving does not walk the two models (their layers are the model's)."""

    def __init__(self, trunk, heads):
        self.trunk = trunk
        self.heads = heads
