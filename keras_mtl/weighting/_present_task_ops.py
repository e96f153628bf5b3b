"""Operations over the tasks present in a step (missing labels).

A model compiled with `missing_labels` passes strategies a `(T,)` float
`task_mask` (1.0 for tasks with a labelled sample in the step, 0.0 for the
others; see `Strategy`). These helpers restrict reductions and softmaxes to
the present tasks. They never evaluate a logarithm, exponential or division
on an absent task's value, not even in the branch of a `where` that is not
taken, so that the results and their gradients stay finite whatever an
absent task's (zero) loss is.
"""

from keras import ops


def present_tasks(task_mask):
    """`(T,)` booleans, True for the tasks present in the step."""
    return ops.convert_to_tensor(task_mask) > 0


def present_count(present, dtype="float32"):
    """K, the number of present tasks, as a scalar of `dtype`."""
    return ops.sum(ops.cast(present, dtype))


def present_ranks(present):
    """`(T,)` int32: the index of each present task among the present ones
    (0 for the first present task, 1 for the next...); -1 for absent ones."""
    ranks = ops.cumsum(ops.cast(present, "int32")) - 1
    return ops.where(present, ranks, -ops.ones_like(ranks))


def _present_max(x, present):
    """The maximum of x over the present tasks (0 if none), held constant."""
    floor = ops.min(x)
    shift = ops.max(ops.where(present, x, floor))
    shift = ops.where(ops.any(present), shift, ops.zeros_like(shift))
    return ops.stop_gradient(shift)


def masked_softmax(logits, present):
    """Softmax of a `(T,)` vector over its present entries.

    Absent entries get 0. When no task is present every entry is 0.
    """
    shifted = ops.where(present, logits - _present_max(logits, present), 0.0)
    exp = ops.where(present, ops.exp(shifted), 0.0)
    total = ops.sum(exp)
    return exp / ops.where(total > 0, total, ops.ones_like(total))


def present_softmax(logits, present):
    """`ops.softmax` of a `(T,)` vector over its present entries.

    Absent entries get 0; when no task is present every entry is 0. The
    absent entries enter `ops.softmax` as -inf (whose exponential is exactly
    0), never with their values. With every task present this is
    `ops.softmax(logits)` bit for bit, which `masked_softmax` (its own shift,
    exponential and division) is not, so a strategy that computes its
    weights with `ops.softmax` can fold its no-mask path into its masked one
    (an all-True `present`) without changing a result.
    """
    logits = ops.convert_to_tensor(logits)
    masked = ops.where(present, logits, ops.full_like(logits, float("-inf")))
    # With no task present, a finite input rather than -inf everywhere, so
    # that no NaN arises even in the discarded softmax (for NaN debugging
    # tools; the result and its gradient would be 0 either way).
    masked = ops.where(ops.any(present), masked, ops.zeros_like(logits))
    return ops.where(present, ops.softmax(masked), 0.0)


def masked_logsumexp(x, present):
    """log sum_{t present} exp(x_t), stable; 0 when no task is present."""
    shift = _present_max(x, present)
    exp = ops.where(present, ops.exp(ops.where(present, x - shift, 0.0)), 0.0)
    total = ops.sum(exp)
    return shift + ops.log(ops.where(total > 0, total, ops.ones_like(total)))


def present_block(matrix, present, diagonal=0.0):
    """A `(T, T)` matrix restricted to the present tasks.

    The rows and columns of absent tasks are replaced by those of
    `diagonal` times the identity, so the present block is decoupled from
    the absent one: a solver on the result treats the present tasks as a
    problem of its own (with `diagonal=0`, absent tasks contribute nothing
    to any product or sum).
    """
    matrix = ops.convert_to_tensor(matrix)
    pair = ops.logical_and(present[:, None], present[None, :])
    eye = ops.eye(matrix.shape[0], dtype=matrix.dtype)
    return ops.where(pair, matrix, ops.cast(diagonal, matrix.dtype) * eye)


def first_present(present, dtype="float32"):
    """`(T,)` one-hot vector of the first present task (zeros if none)."""
    return ops.cast(present_ranks(present) == 0, dtype)
