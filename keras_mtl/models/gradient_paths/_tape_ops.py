"""Gradient-tape helpers shared by the TensorFlow gradient paths."""

from __future__ import annotations

from keras import ops

from keras_mtl.models import _distribution as distribution


def task_gradients(tape, objectives, parts, sources):
    """`tape.gradient(objectives[t], sources[t])` for every task t.

    Objective t depends on the task losses through loss t alone (the model's
    losses and the strategies' `transform_losses` are elementwise), so its
    gradient is c_t times the gradient of task t's raw loss (`parts`, see
    `LossValues`), c_t = d objective_t / d raw loss t. Taken from the raw
    loss, before the losses are stacked, task t's backward pass runs through
    its own head and the trunk only. Through the stacked losses it would
    also run every other head's backward pass with zero cotangents: T^2
    head passes per step instead of T.
    """
    stacked, raw = parts
    # One pass for all c_t (objective s has no gradient on raw loss t != s).
    coefficients = tape.gradient(objectives, stacked)
    if coefficients is None:
        return [[None] * len(variables) for variables in sources]
    return [
        tape.gradient(
            raw[t], variables, output_gradients=ops.cast(coefficients[t], raw[t].dtype)
        )
        for t, variables in enumerate(sources)
    ]


def flat_float32(grad, variable):
    """A gradient as a float32 vector (zeros where it is None)."""
    grad = ops.zeros_like(variable) if grad is None else grad
    return ops.reshape(ops.cast(grad, "float32"), (-1,))


def or_zeros(grads, variables):
    """`grads` with None replaced by zeros of the variable's shape."""
    return [ops.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]


def gradient_matrix(tape, objectives, parts, variables):
    """The `(T, P)` matrix of per-task gradients of `variables`."""
    rows = []
    for grads in task_gradients(tape, objectives, parts, [variables] * len(objectives)):
        rows.append(
            ops.concatenate([flat_float32(g, v) for g, v in zip(grads, variables)])
        )
    return ops.stack(rows)


def gramian_of_blocks(blocks):
    """sum_v G_v G_v^T over the `(T, P_v)` blocks of per-task gradients,
    each summed over the replicas first (the global batch's Gramian), so
    that the `(T, P)` matrix is never formed."""
    gramian = None
    for block in blocks:
        block = distribution.sum_over_replicas(block)
        term = ops.matmul(block, ops.transpose(block))
        gramian = term if gramian is None else gramian + term
    return gramian


def weighted_gradients(tape, stacked_objectives, variables, weights):
    """sum_t w_t dL_t/dv, as one backward pass of sum_t w_t L_t (the
    objectives carry the loss scale, as the other gradients do)."""
    grads = tape.gradient(
        stacked_objectives,
        variables,
        output_gradients=ops.cast(weights, stacked_objectives.dtype),
    )
    return [
        ops.zeros_like(v) if g is None else ops.cast(g, v.dtype)
        for g, v in zip(grads, variables)
    ]


def add_optional(a, b):
    """a + b, where None stands for zero (and None + None is None)."""
    if a is None:
        return b
    return a if b is None else a + b
