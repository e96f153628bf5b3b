"""MGDA and MGDA-UB (Sener & Koltun, NeurIPS 2018)."""

from __future__ import annotations

from typing import ClassVar

from keras import ops

from keras_mtl.weighting._present_task_ops import present_block, present_tasks
from keras_mtl.weighting._simplex_ops import project_onto_simplex
from keras_mtl.weighting._solver_ops import solver_dtype, solver_function
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")

# Constants of the reference solver (isl-org/MultiObjectiveOptimization
# `multi_task/min_norm_solvers.py`, copied into LibMTL `weighting/MGDA.py`).
_MAX_ITER = 250
_STOP_CRIT = 1e-5
_STEP_EPS = 1e-7
_GAMMA_HIGH = 0.999
_GAMMA_LOW = 0.001


def _min_norm_of_two(v11, v12, v22):
    """Minimises |c x1 + (1 - c) x2|^2 over c from three inner products.

    Returns `(c, cost)`. As in the reference, the end points are c = 0.999
    (when x1.x2 >= |x1|^2) and c = 0.001 (when x1.x2 >= |x2|^2), not 1 and 0.
    Works elementwise on tensors of any shape.
    """
    first = v12 >= v11
    second = ops.logical_and(ops.logical_not(first), v12 >= v22)
    denom = v11 + v22 - 2.0 * v12
    interior = ops.logical_not(ops.logical_or(first, second))
    safe_denom = ops.where(interior, denom, ops.ones_like(denom))
    gamma = (v22 - v12) / safe_denom
    cost = v22 + gamma * (v12 - v22)
    gamma = ops.where(first, ops.full_like(gamma, _GAMMA_HIGH), gamma)
    cost = ops.where(first, v11, cost)
    gamma = ops.where(second, ops.full_like(gamma, _GAMMA_LOW), gamma)
    cost = ops.where(second, v22, cost)
    return gamma, cost


def _best_pair(gramian, present=None):
    """The reference's start: the best two-task solution.

    Scans the pairs i < j in row-major order and keeps the first with the
    smallest cost. Returns the `(T,)` weights with c on i and 1 - c on j.
    With `present` (`(T,)` booleans) only pairs of present tasks count.
    """
    num = gramian.shape[0]
    diag = ops.diagonal(gramian)
    v11 = diag[:, None] * ops.ones_like(gramian)
    v22 = diag[None, :] * ops.ones_like(gramian)
    gamma, cost = _min_norm_of_two(v11, gramian, v22)
    # The pairs i < j: the strictly upper triangle.
    upper = ops.triu(ops.ones_like(gramian), k=1)
    if present is not None:
        pair = ops.logical_and(present[:, None], present[None, :])
        upper = ops.where(pair, upper, ops.zeros_like(upper))
    big = ops.full_like(cost, float("inf"))
    cost = ops.reshape(ops.where(upper > 0, cost, big), [-1])
    best = ops.min(cost)
    positions = ops.arange(num * num, dtype="int32")
    index = ops.min(ops.where(cost == best, positions, num * num))
    # (Non-finite Gramians match no pair: stay in range.)
    index = ops.minimum(index, num * num - 1)
    i, j = ops.floor_divide(index, num), ops.mod(index, num)
    # A gather, not a slice: a slice start must be a compile-time constant
    # for XLA, which would make the Gramian one (recompiled per value).
    c = ops.take(ops.reshape(gamma, [-1]), index)
    return c * ops.one_hot(i, num, dtype=gramian.dtype) + (1.0 - c) * ops.one_hot(
        j, num, dtype=gramian.dtype
    )


def _next_point(current, direction, present=None):
    """The reference's projected step along `direction` from `current`.

    With `present`, the step of the K-task solver on the present entries
    (the absent entries of `current` are 0 and stay 0).
    """
    num = current.shape[0]
    dtype = current.dtype
    if present is None:
        proj = direction - ops.sum(direction) / num
    else:
        zeros = ops.zeros_like(direction)
        count = ops.maximum(ops.sum(ops.cast(present, dtype)), 1.0)
        mean = ops.sum(ops.where(present, direction, zeros)) / count
        proj = ops.where(present, direction - mean, zeros)
    neg = proj < 0
    pos = proj > 0
    safe = ops.where(ops.logical_or(neg, pos), proj, ops.ones_like(proj))
    tm1 = -current / safe
    tm2 = (1.0 - current) / safe
    valid1 = ops.logical_and(neg, tm1 > _STEP_EPS)
    valid2 = ops.logical_and(pos, tm2 > _STEP_EPS)
    inf = ops.full_like(tm1, float("inf"))
    min1 = ops.min(ops.where(valid1, tm1, inf))
    min2 = ops.min(ops.where(valid2, tm2, inf))
    step = ops.where(ops.any(valid1), min1, ops.ones([], dtype))
    step = ops.minimum(step, min2)
    return project_onto_simplex(proj * step + current, present)


def min_norm_weights(gramian):
    """Weights on the simplex of the min-norm point, by the reference solver.

    Follows `MinNormSolver.find_min_norm_element` of the MGDA authors (the
    version in LibMTL `weighting/MGDA.py`, with its iteration counter): start
    from the best pair, then up to 250 projected steps, each followed by an
    exact line search between the current point and the projected point;
    stop when the L1 change is below 1e-5, returning the point *before* that
    last change. For T = 2 the best pair is the (clipped) closed form.

    Args:
        gramian: `(T, T)` float tensor (T static).

    Returns:
        `(T,)` weights, non-negative and summing to 1.
    """
    num = gramian.shape[0]
    if num == 1:
        return ops.ones([1], gramian.dtype)
    start = _best_pair(gramian)
    if num == 2:
        return start
    return _iterate(gramian, start, ops.convert_to_tensor(False))


def present_min_norm_weights(gramian, present):
    """`min_norm_weights` for the present tasks alone.

    The min-norm point of the convex hull of the present rows, by the
    reference's solver for K present tasks, step for step (one task gets
    weight 1, two the best pair); absent tasks get weight 0 (all 0 if no
    task is present). The absent rows and columns of the Gramian are
    dropped, whatever they hold.

    Args:
        gramian: `(T, T)` float tensor (T static).
        present: `(T,)` booleans, True for the present tasks.

    Returns:
        `(T,)` weights, non-negative and summing to 1 over the present
        tasks.
    """
    num = gramian.shape[0]
    keep = ops.cast(present, gramian.dtype)
    if num == 1:
        return keep
    gramian = present_block(gramian, present)
    count = ops.sum(ops.cast(present, "int32"))
    start = _best_pair(gramian, present)
    if num > 2:
        # K = 2 keeps the best pair, as the two-task solver does.
        start = _iterate(gramian, start, count < 3, present)
    # K = 1: that task; K = 0: nothing.
    return ops.where(count >= 2, start, keep)


def _iterate(gramian, start, done, present=None):
    """The reference's projected steps with line search, from `start`."""

    def cond(it, sol, done):
        return ops.logical_and(it < _MAX_ITER, ops.logical_not(done))

    def body(it, sol, done):
        gsol = ops.matmul(gramian, sol)
        new_point = _next_point(sol, -gsol, present)
        gnew = ops.matmul(gramian, new_point)
        v11 = ops.sum(sol * gsol)
        v12 = ops.sum(sol * gnew)
        v22 = ops.sum(new_point * gnew)
        c, _ = _min_norm_of_two(v11, v12, v22)
        new_sol = c * sol + (1.0 - c) * new_point
        converged = ops.sum(ops.abs(new_sol - sol)) < _STOP_CRIT
        sol = ops.where(converged, sol, new_sol)
        return it + 1, sol, converged

    loop_vars = (ops.convert_to_tensor(0, "int32"), start, done)
    _, sol, _ = ops.while_loop(cond, body, loop_vars)
    return sol


_compiled_min_norm_weights = solver_function(min_norm_weights)
_compiled_present_min_norm_weights = solver_function(present_min_norm_weights)


@register_strategy("mgda")
class MGDA(GradientAggregation):
    """Multiple-gradient descent: the min-norm point of the task gradients.

    Notation: T tasks, g_t the gradient of task t (row t of G), n_t a
    normaliser, g^_t = g_t / n_t, and Delta the simplex {w : w_t >= 0,
    sum_t w_t = 1}. MGDA solves

        w* = argmin_{w in Delta} || sum_t w_t g^_t ||^2

    and returns d = sum_t w*_t g^_t, the min-norm element of the convex hull
    of the normalised gradients: a common descent direction
    (g^_t . d >= ||d||^2 for every t), zero at a Pareto-stationary point.

    Normalisers (`normalization`): "none" (n_t = 1, LibMTL's default),
    "l2" (n_t = ||g_t||), "loss" (n_t = L_t) and "loss+" (n_t = L_t ||g_t||,
    the authors' CelebA setting); the last two need the task losses.

    Solver: the authors' min-norm solver, step for step: for T = 2 the
    closed form w_1 = clip((g^_2 - g^_1).g^_2 / ||g^_1 - g^_2||^2) with
    the reference's clip range [0.001, 0.999]; for T >= 3 it starts from the
    best pair and runs at most 250 projected steps with exact line search,
    stopping when ||w_new - w||_1 < 1e-5 (inside `ops.while_loop`, computed
    in float64 from the Gramian, on JAX too; in a TensorFlow graph without
    XLA the loop runs as one XLA-compiled function).

    Scale: the update is a convex combination of the (normalised) gradients,
    the scale of a mean, not of a sum: update = sum_t (w*_t / n_t) g_t, as
    LibMTL applies it to the normalised parameter gradients. The returned
    weights are these effective weights w*_t / n_t (equal to w* for
    "none"). With `rep_grad=True` (MGDA-UB) LibMTL applies w* to the
    un-normalised representation gradients, so the weights are w* itself.

    Properties: stateless; one backward pass per task (or per head with
    `rep_grad=True`); non-conflicting; invariant to rescaling a task's
    gradient with "l2", not with "none".

    Missing tasks: with a `task_mask`, the rows of absent tasks are dropped
    (not treated as zero rows, whose min-norm point would be 0): w* is the
    min-norm point of the convex hull of the K present normalised rows,
    found by the same solver run on the present tasks alone (K = 1 gives
    that task weight 1, K = 2 the clipped two-task rule), and the
    normalisers are those of the present tasks. There is no factor T in the
    scale (the weights of the present tasks sum to 1 before normalisation),
    so the weights are exactly those of MGDA built for the K present tasks;
    absent tasks get weight 0, and no present task gives all zeros.

    Args:
        normalization: one of "none", "l2", "loss", "loss+". Default
            "none" (LibMTL `config.py`, `mgda_gn`).
        rep_grad: True for MGDA-UB, the variant on the gradients of the
            shared representation (the model's job; the math is the same).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.mgda import MGDA
    >>> grads = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    >>> update, weights = MGDA()(grads)
    >>> np.round(weights.numpy().astype("float64"), 3).tolist()
    [0.8, 0.2]
    >>> np.round(update.numpy().astype("float64"), 3).tolist()
    [0.8, 0.4]

    References:
        Ozan Sener, Vladlen Koltun. "Multi-Task Learning as Multi-Objective
        Optimization". NeurIPS 2018. arXiv:1810.04650. Official code:
        isl-org/MultiObjectiveOptimization (`multi_task/min_norm_solvers.py`);
        matched against LibMTL `LibMTL/weighting/MGDA.py` (commit c42c0c2).

    Note:
        The reference clips the two-task solution to [0.001, 0.999]
        instead of [0, 1]; we keep that. Where the reference would fail we
        return finite values instead: a normaliser of 0 (a zero gradient
        with "l2", a zero loss) gives that task a normalised gradient of 0
        (the reference divides by zero); the best pair is chosen among all
        pairs even when every pair cost exceeds 1e8 (the reference's
        initial bound, which leaves it without a start); and T = 1 returns
        the single normalised gradient. The solver runs in float64, like the
        authors' numpy solver (LibMTL runs the same steps in float32).
    """

    requires: ClassVar[str] = "gramian"
    supports_rep_grad: ClassVar[bool] = True
    supports_missing_tasks: ClassVar[bool] = True

    def __init__(self, normalization="none", **kwargs):
        super().__init__(**kwargs)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"MGDA `normalization` must be one of {_NORMALIZATIONS}, got "
                f"{normalization!r}."
            )
        self.normalization = normalization

    def get_config(self):
        config = super().get_config()
        config["normalization"] = self.normalization
        return config

    def _normalizers(self, gramian, losses):
        norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
        if self.normalization == "none":
            return ops.ones_like(norms)
        if self.normalization == "l2":
            return norms
        if losses is None:
            raise ValueError(
                f"MGDA with normalization={self.normalization!r} needs the "
                "task losses: call it as strategy(grads, losses)."
            )
        losses = ops.cast(ops.reshape(losses, (-1,)), gramian.dtype)
        if self.normalization == "loss":
            return losses
        return losses * norms

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        gramian = ops.cast(gramian, solver_dtype())
        norms = self._normalizers(gramian, losses)
        nonzero = ops.not_equal(norms, 0.0)
        if task_mask is not None:
            present = present_tasks(task_mask)
            nonzero = ops.logical_and(nonzero, present)
        inv = ops.where(nonzero, 1.0 / ops.where(nonzero, norms, 1.0), 0.0)
        normalized = gramian * inv[:, None] * inv[None, :]
        if task_mask is None:
            weights = _compiled_min_norm_weights(normalized)
        else:
            weights = _compiled_present_min_norm_weights(normalized, present)
        if not self.rep_grad:
            weights = weights * inv
        return ops.cast(weights, self.compute_dtype)
