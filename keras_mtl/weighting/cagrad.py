"""CAGrad, conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math
from typing import ClassVar

import keras
from keras import ops

from keras_mtl.weighting._newton_ops import armijo_step, max_step_to_boundary
from keras_mtl.weighting._present_task_ops import (
    present_block,
    present_ranks,
    present_tasks,
)
from keras_mtl.weighting._solver_ops import psd_solve, solver_dtype, solver_function
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Stabilisers of the reference (Cranial-XIX/CAGrad, LibMTL CAGrad.py).
_EPS = 1e-8
# Interior-point schedule of the inner solver (T >= 3): the barrier weight
# starts at 1 (relative to the scale of the objective) and shrinks by
# _MU_DECAY at every Newton step down to _MU_MIN; at most _NEWTON_STEPS.
_NEWTON_STEPS = 80
_MU_DECAY = 0.3
_MU_MIN = 1e-13
_HESS_FLOOR = 1e-13
# Without a certified support solution the loop ends once mu = _MU_MIN and
# the Newton decrement (squared) is below this.
_EXIT_DECREMENT = 1e-14
# A support solution is accepted when it satisfies the optimality
# conditions to this tolerance, relative to the scale of the gradient of F
# (then F exceeds its minimum by at most twice that).
_KKT_TOL = 1e-10
# Support solutions with weights below -_NEGATIVE_TOL are infeasible.
_NEGATIVE_TOL = 1e-12


def _row_mean(gramian):
    """The mean of each row. `ops.mean` along an axis computes in float32
    on JAX whatever the input, so there it is a sum and a division; on
    TensorFlow `ops.mean` (whose rounding differs from the sum's for long
    rows) as before."""
    if keras.backend.backend() == "jax":
        return ops.sum(gramian, axis=1) / gramian.shape[0]
    return ops.mean(gramian, axis=1)


def _inner_objective(points, gramian, mean_row, c):
    """F(w) = w.A(1/T) + c sqrt(w.A.w + 1e-8) for a `(N, T)` batch of w."""
    quad = ops.sum(points * ops.matmul(points, gramian), axis=1)
    return ops.matmul(points, mean_row) + c * ops.sqrt(ops.maximum(quad, 0.0) + _EPS)


def _two_task_weights(gramian, c):
    """The exact minimiser of F on the two-task simplex, in closed form.

    With w = (t, 1 - t), F(t) = F(0) + delta t + c sqrt(q(t)) where
    delta = (A11 - A22) / 2 and q(t) = alpha t^2 + beta t + gamma (alpha =
    ||g_1 - g_2||^2, beta = 2 (A12 - A22), gamma = A22 + 1e-8). F is convex;
    F'(t) = 0 reads c (2 alpha t + beta) = -2 delta sqrt(q(t)), whose root
    has 2 alpha t + beta = -delta sqrt(D / (alpha c^2 - delta^2)) with
    D = 4 alpha gamma - beta^2 = 4 (A11 A22 - A12^2 + 1e-8 alpha). There is
    no root when alpha c^2 <= delta^2: F is then monotone and the minimum is
    the vertex on the side of decreasing F (t = 1/2 when F is constant,
    i.e. identical rows).
    """
    dtype = gramian.dtype
    a11 = gramian[0, 0]
    a22 = gramian[1, 1]
    a12 = 0.5 * (gramian[0, 1] + gramian[1, 0])
    delta = 0.5 * (a11 - a22)
    alpha = a11 - 2.0 * a12 + a22
    beta = 2.0 * (a12 - a22)
    disc = ops.maximum(4.0 * (a11 * a22 - a12 * a12 + _EPS * alpha), 0.0)
    denom = alpha * c * c - delta * delta
    interior = ops.logical_and(alpha > 0, denom > 0)
    one = ops.ones([], dtype)
    root = -delta * ops.sqrt(disc / ops.where(interior, denom, one))
    t_root = (root - beta) / (2.0 * ops.where(interior, alpha, one))
    t_root = ops.clip(t_root, 0.0, 1.0)
    t_vertex = ops.where(
        delta > 0,
        ops.zeros([], dtype),
        ops.where(delta < 0, one, ops.full([], 0.5, dtype)),
    )
    t = ops.where(interior, t_root, t_vertex)
    return ops.stack([t, 1.0 - t])


def _present_pair_weights(gramian, c, present):
    """`_two_task_weights` on the first two present tasks, as a `(T,)`
    vector (zeros elsewhere). The 2 x 2 Gramian is gathered exactly (a
    product with a 0/1 selection matrix)."""
    dtype = gramian.dtype
    ranks = present_ranks(present)
    select = ops.cast(ranks[None, :] == ops.arange(2)[:, None], dtype)
    pair = ops.matmul(select, ops.matmul(gramian, ops.transpose(select)))
    return ops.matmul(ops.transpose(select), _two_task_weights(pair, c))


def _support_solution(gramian, mean_row, c, support, tol, present=None):
    """The minimiser of F with w_t = 0 off `support`, when it is optimal.

    On a support S where A_SS is invertible, the stationarity conditions
    m_S + c A_SS w_S / s = nu 1 (s = sqrt(w^T A w + 1e-8)) and
    sum_t w_t = 1 give, with u = A_SS^-1 1, v = A_SS^-1 m_S, a = 1.u,
    b = 1.v, e = m_S.v:

        r = sqrt(b^2 + a (c^2 - e - 1e-8 b^2) / (1 + 1e-8 a)),
        nu = (b + r) / a,    w_S = (nu u - v) / r.

    The point is returned with `ok` True only if it is feasible and passes
    the optimality test on the simplex (gradient of F equal to nu on S and
    at least nu off S, to `tol`), a certificate that F(w) is within 2 tol
    of the minimum whatever the accuracy of the solve. With `present`
    (`support` a subset of it), the simplex is that of the present tasks:
    absent tasks are left out of the test.
    """
    num = gramian.shape[0]
    dtype = gramian.dtype
    if present is None:
        fallback = ops.full([num], 1.0 / num, dtype)
        outside = ops.logical_not(support)
    else:
        keep = ops.cast(present, dtype)
        fallback = keep / ops.maximum(ops.sum(keep), 1.0)
        outside = ops.logical_and(present, ops.logical_not(support))
    inside = ops.cast(support, dtype)
    outer = inside[:, None] * inside[None, :]
    system = outer * gramian + (1.0 - outer) * ops.eye(num, dtype=dtype)
    rhs = ops.stack([inside, inside * mean_row], axis=1)
    solution = psd_solve(system, rhs)
    u, v = solution[:, 0], solution[:, 1]
    a = ops.sum(u)
    b = ops.sum(v)
    e = ops.sum(mean_row * v)
    disc = b * b + a * (c * c - e - _EPS * b * b) / (1.0 + _EPS * a)
    valid = ops.logical_and(a > 0, disc > 0)
    valid = ops.logical_and(valid, ops.isfinite(disc))
    one = ops.ones([], dtype)
    r = ops.sqrt(ops.where(valid, disc, one))
    nu = (b + r) / ops.where(valid, a, one)
    w = (nu * u - v) / r
    valid = ops.logical_and(valid, ops.all(ops.isfinite(w)))
    valid = ops.logical_and(valid, ops.min(w) >= -_NEGATIVE_TOL)
    w = ops.where(valid, ops.maximum(w, 0.0), fallback)
    w = w / ops.sum(w)
    aw = ops.matmul(gramian, w)
    s = ops.sqrt(ops.maximum(ops.sum(w * aw), 0.0) + _EPS)
    grad = mean_row + c * aw / s
    count = ops.maximum(ops.sum(inside), one)
    gap = grad - ops.sum(grad * inside) / count
    stationary = ops.max(ops.abs(gap) * inside) <= tol
    dual = ops.min(ops.where(outside, gap, ops.full([num], float("inf"), dtype)))
    ok = ops.logical_and(valid, ops.logical_and(stationary, dual >= -tol))
    return w, ok


def cagrad_inner_weights(gramian, c):
    """Solves CAGrad's inner problem on the simplex.

        minimise_{w in simplex}  F(w) = w^T A b + c sqrt(w^T A w + 1e-8),

    with A the `(T, T)` Gramian and b = 1/T (so w^T A b = g_w . g_0). F is
    convex. For T = 2 the minimiser has a closed form
    (`_two_task_weights`). For T >= 3 a primal log-barrier interior-point
    method runs: damped Newton steps on F/S - mu sum_t log w_t under
    sum_t w_t = 1 (S a scale of F's gradient), with mu shrinking by 0.3 per
    step from 1 to 1e-13, fraction-to-boundary and Armijo line searches.
    Before the first step and after each one, the exact minimiser on the
    current support estimate {t : w_t > sqrt(mu)} is computed in closed form
    (`_support_solution`); the solve stops as soon as that point passes the
    optimality test (typically after 0 to 10 steps). Without such a point
    (singular A_SS, e.g. when 0 is in the convex hull of the gradients)
    the interior-point method runs until mu = 1e-13 and its Newton
    decrement is negligible (at most 80 steps). Either way the result
    minimises F to about 1e-10 relative to the scale of its gradient.

    Args:
        gramian: `(T, T)` float64 tensor (T static).
        c: float64 scalar, the radius factor c = alpha ||g_0|| + 1e-8.

    Returns:
        `(T,)` weights on the simplex.
    """
    return _inner_weights(gramian, c)


def present_cagrad_inner_weights(gramian, c, present):
    """`cagrad_inner_weights` for the present tasks alone.

    The same problem and solver for the K present tasks (b = 1/K over
    them, the simplex of the present tasks; K = 1 gives that task weight 1,
    K = 2 the closed form); absent tasks get weight 0 (all 0 if no task is
    present). The absent rows and columns of the Gramian are dropped
    (whatever they hold) and the absent coordinates fixed at 0: decoupled
    from the Newton systems, left out of the barrier and of the optimality
    test.

    Args:
        gramian: `(T, T)` float64 tensor (T static).
        c: float64 scalar, the radius factor (of the present tasks' g_0).
        present: `(T,)` booleans, True for the present tasks.

    Returns:
        `(T,)` weights on the simplex of the present tasks.
    """
    return _inner_weights(gramian, c, present)


def _inner_weights(gramian, c, present=None):
    """`cagrad_inner_weights` (present None) or its version for the present
    tasks (`present_cagrad_inner_weights`)."""
    num = gramian.shape[0]
    dtype = gramian.dtype
    if present is None:
        if num == 1:
            return ops.ones([1], dtype)
        if num == 2:
            return _two_task_weights(gramian, c)
        mean_row = _row_mean(gramian)
        start = ops.full([num], 1.0 / num, dtype)
        everything = ops.ones([num], "bool")
    else:
        keep = ops.cast(present, dtype)
        count = ops.sum(ops.cast(present, "int32"))
        if num == 1:
            return keep
        gramian = present_block(gramian, present)
        # K = 2: the closed form; K = 1: that task; K = 0: nothing.
        small = ops.where(count == 2, _present_pair_weights(gramian, c, present), keep)
        if num == 2:
            return small
        safe_count = ops.maximum(ops.sum(keep), 1.0)
        mean_row = ops.sum(gramian, axis=1) / safe_count
        start = keep / safe_count
        everything = present
    tiny = ops.full([], 1e-300, dtype)

    def gradient(w):
        aw = ops.matmul(gramian, w)
        s = ops.sqrt(ops.maximum(ops.sum(w * aw), 0.0) + _EPS)
        return mean_row + c * aw / s, aw, s

    grad0, _, _ = gradient(start)
    scale = ops.maximum(ops.max(ops.abs(grad0)), tiny)
    # Magnitude of the two terms of the gradient of F, for the optimality
    # test (their sum may cancel).
    row_norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    kkt_scale = ops.max(ops.abs(mean_row)) + c * ops.max(row_norms)
    kkt_tol = _KKT_TOL * ops.maximum(kkt_scale, tiny)

    def barrier(points, mu):
        values = _inner_objective(points, gramian, mean_row, c) / scale
        if present is None:
            logs = ops.sum(ops.log(points), axis=1)
            inside = ops.all(points > 0, axis=1)
        else:
            # The absent coordinates are 0: left out of the barrier.
            ones = ops.ones_like(points)
            logs = ops.sum(
                ops.where(present, ops.log(ops.where(present, points, ones)), 0.0),
                axis=1,
            )
            inside = ops.all(
                ops.logical_or(points > 0, ops.logical_not(present)), axis=1
            )
        values = values - mu * logs
        return ops.where(inside, values, ops.full_like(values, float("inf")))

    def body(k, w, mu, done):
        grad_f, aw, s = gradient(w)
        if present is None:
            grad = grad_f / scale - mu / w
        else:
            safe_w = ops.where(present, w, ops.ones_like(w))
            grad = ops.where(present, grad_f / scale - mu / safe_w, 0.0)
        hess_f = (c / scale) * (gramian / s - aw[:, None] * aw[None, :] / (s * s * s))
        # Newton step in the scaled variables delta = dw / w (better
        # conditioned when some w_t are tiny) under sum_t dw_t = 0, i.e.
        # w . delta = 0, from the KKT system (LU with pivoting: the
        # Hessian of F is singular along w, since F is 1-homogeneous up to
        # the constant 1e-8, but the KKT matrix is not).
        # The floor keeps it non-singular despite rounding.
        hess = w[:, None] * hess_f * w[None, :] + (mu + _HESS_FLOOR) * ops.eye(
            num, dtype=dtype
        )
        kkt = ops.concatenate(
            [
                ops.concatenate([hess, w[:, None]], axis=1),
                ops.concatenate([w[None, :], ops.zeros([1, 1], dtype)], axis=1),
            ],
            axis=0,
        )
        rhs = ops.concatenate([-w * grad, ops.zeros([1], dtype)], axis=0)
        delta = ops.solve(kkt, rhs[:, None])[:num, 0]
        direction = w * delta
        slope = ops.sum(grad * direction)
        descent = ops.logical_and(ops.all(ops.isfinite(direction)), slope < 0)
        direction = ops.where(descent, direction, ops.zeros_like(direction))
        slope = ops.where(descent, slope, ops.zeros_like(slope))
        value = barrier(w[None, :], mu)[0]
        step = armijo_step(
            lambda p: barrier(p, mu),
            w,
            direction,
            value,
            slope,
            max_step_to_boundary(w, direction),
            full_step_ok=ops.logical_and(descent, -slope < 1e-10),
        )
        w = w + step * direction
        w = w / ops.sum(w)
        converged = ops.logical_and(mu <= _MU_MIN, -slope < _EXIT_DECREMENT)
        mu = ops.maximum(mu * _MU_DECAY, _MU_MIN)
        exact, ok = _support_solution(
            gramian, mean_row, c, w > ops.sqrt(mu), kkt_tol, present
        )
        w = ops.where(ok, exact, w)
        return k + 1, w, mu, ops.logical_or(ok, converged)

    exact, ok = _support_solution(gramian, mean_row, c, everything, kkt_tol, present)
    # The start point is a minimiser when the gradient of F is the same in
    # every (present) coordinate there. This happens where the gradients
    # cancel exactly (g_w = 0 at the uniform weights, e.g. exactly opposed
    # pairs): A_SS is then singular, so the support solution is not
    # certified, and the gradient of F at the start is exactly 0, so that
    # the barrier's scale would be 1e-300 and the Newton system singular
    # (`ops.solve` raises on it on TensorFlow).
    start_gap = grad0 - ops.sum(grad0 * start)
    if present is not None:
        start_gap = ops.where(present, start_gap, ops.zeros_like(start_gap))
    start_ok = ops.max(ops.abs(start_gap)) <= kkt_tol
    exact = ops.where(ok, exact, start)
    ok = ops.logical_or(ok, start_ok)
    # (With fewer than 3 present tasks the loop does not run.)
    skip = ok if present is None else ops.logical_or(ok, count < 3)
    _, w, _, _ = ops.while_loop(
        lambda k, w, mu, done: ops.logical_and(
            k < _NEWTON_STEPS, ops.logical_not(done)
        ),
        body,
        (
            ops.zeros([], "int32"),
            ops.where(ok, exact, start),
            ops.ones([], dtype),
            skip,
        ),
    )
    if present is None:
        return w
    return ops.where(count >= 3, w, small)


_compiled_inner_weights = solver_function(cagrad_inner_weights)
_compiled_present_inner_weights = solver_function(present_cagrad_inner_weights)

_RESCALES = (0, 1, 2)


@register_strategy("cagrad", "conflict_averse")
class CAGrad(GradientAggregation):
    """Conflict-averse gradient descent.

    Notation: T tasks, g_t the gradient of task t (row t of G), A = G G^T,
    g_0 = (1/T) sum_t g_t the mean gradient, g_w = sum_t w_t g_t, and Delta
    the simplex. CAGrad looks for the update d in the ball
    ||d - g_0|| <= c ||g_0|| that maximises the worst task improvement
    min_t g_t . d. Its dual is a T-dimensional problem:

        w* = argmin_{w in Delta}  g_w . g_0 + C sqrt(||g_w||^2 + 1e-8),
        C  = c sqrt(||g_0||^2 + 1e-8) + 1e-8,
        d  = g_0 + (C / (||g_{w*}|| + 1e-8)) g_{w*},

    and the update is d / r with r = 1 (`rescale=0`), 1 + c^2 (`rescale=1`)
    or 1 + c (`rescale=2`). Without the small constants (those of the
    authors' code, kept for fidelity) this is d = g_0 + c ||g_0||
    g_w / ||g_w||.

    The inner problem (SLSQP on the Gramian in the reference) is solved in
    the graph in float64 (`cagrad_inner_weights`), to the exact minimiser:
    in closed form for T = 2; for T >= 3 by an interior-point Newton
    method that stops as soon as the closed-form minimiser on its current
    support estimate passes the optimality test (usually within 0 to 10
    steps). In a graph without XLA the solver runs as one XLA-compiled
    function, so it costs a fraction of a millisecond per step.

    Scale: the method's own, not a sum: with c = 0 the update is the MEAN
    gradient g_0 (divided by r = 1 with `rescale=1`), exactly LibMTL's
    update. The returned weights are the effective weights of the rows,
    update = sum_t weights_t g_t with weights_t = (1/T + C w*_t /
    (||g_{w*}|| + 1e-8)) / r (LibMTL returns w* itself).

    Properties: stateless; T backward passes; parameter gradients only (as
    in LibMTL); not scale invariant; for c < 1 it converges to a minimum of
    the average loss. Before rescaling, ||d - g_0|| <= c ||g_0|| and
    min_t g_t . d >= min_t g_t . g_0 (up to the constants above).

    Missing tasks: with a `task_mask`, the rows of absent tasks are
    dropped: g_0 is the mean of the K present rows (||g_0||^2 = the sum of
    the present block of A over K^2), the inner problem is solved on the
    simplex of the present tasks (absent w_t = 0, the solver run on the
    present block alone), and the weights are (1/K + C w*_t /
    (||g_{w*}|| + 1e-8)) / r on the present tasks, 0 on the absent ones:
    those of CAGrad built for the K present tasks. No present task gives
    all zeros.

    Args:
        c: the radius factor c >= 0 (`calpha`). Default 0.5 (LibMTL
            `config.py`); the authors use 0.4 on NYUv2 (`nyuv2/run.sh`).
        rescale: 0, 1 or 2 as in LibMTL: divide the update by 1, 1 + c^2
            or 1 + c. Default 1 (LibMTL).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.cagrad import CAGrad
    >>> grads = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> update = CAGrad(c=0.5).aggregate(grads)
    >>> np.round(update.numpy().astype("float64"), 3).tolist()
    [0.6, 0.6]

    References:
        Bo Liu, Xingchao Liu, Xiaojie Jin, Peter Stone, Qiang Liu.
        "Conflict-Averse Gradient Descent for Multi-task Learning". NeurIPS
        2021. arXiv:2110.14048. Official code: Cranial-XIX/CAGrad; matched
        against LibMTL `LibMTL/weighting/CAGrad.py` (commit e56caa7).

    Note:
        The reference solves the inner problem with scipy's SLSQP at its
        default tolerance (1e-6 on the objective), so its w* is only
        approximately optimal; ours is the exact minimiser, which can differ
        from the reference's by up to about 1e-3 on ill-conditioned inputs.
        The constants 1e-8 make the update not exactly scale-equivariant
        for very small gradients (||g_0|| below about 1e-4), as in the
        reference. Where the gradients (nearly) cancel, the rounding of the
        float32 Gramian can make ||g_0||^2 = mean(A) slightly negative: we
        clip it at 0 where the reference takes the square root of a
        negative number (NaN).
    """

    requires: ClassVar[str] = "gramian"
    supports_missing_tasks: ClassVar[bool] = True

    def __init__(self, c=0.5, rescale=1, **kwargs):
        super().__init__(**kwargs)
        try:
            c_value = float(c)
        except (TypeError, ValueError):
            c_value = float("nan")
        if not (math.isfinite(c_value) and c_value >= 0.0):
            raise ValueError(f"CAGrad `c` must be finite and >= 0, got {c!r}.")
        if rescale not in _RESCALES or isinstance(rescale, bool):
            raise ValueError(
                f"CAGrad `rescale` must be one of {_RESCALES}, got {rescale!r}."
            )
        self.c = c_value
        self.rescale = int(rescale)

    def get_config(self):
        config = super().get_config()
        config.update({"c": self.c, "rescale": self.rescale})
        return config

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        # float64 (float32 on JAX without x64; the solver runs in float64
        # either way, see `solver_function`).
        dtype = solver_dtype()
        gramian = ops.cast(gramian, dtype)
        num = gramian.shape[0]
        if task_mask is None:
            # ||g_0||^2 = mean(A) >= 0, but the rounding of a float32 Gramian
            # can make it slightly negative when the gradients (nearly)
            # cancel.
            g0_sq = ops.mean(gramian)
            mean_weight = 1.0 / num
        else:
            # The mean of the K present rows.
            present = present_tasks(task_mask)
            gramian = present_block(gramian, present)
            count = ops.maximum(ops.sum(ops.cast(present, dtype)), 1.0)
            g0_sq = ops.sum(gramian) / (count * count)
            mean_weight = ops.cast(present, dtype) / count
        g0_norm = ops.sqrt(ops.maximum(g0_sq, 0.0) + _EPS)
        radius = self.c * g0_norm + _EPS
        if task_mask is None:
            w = _compiled_inner_weights(gramian, radius)
        else:
            w = _compiled_present_inner_weights(gramian, radius, present)
        gw_sq = ops.sum(w * ops.matmul(gramian, w))
        gw_norm = ops.sqrt(ops.maximum(gw_sq, 0.0))
        lmbda = radius / (gw_norm + _EPS)
        weights = mean_weight + lmbda * w
        divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return ops.cast(weights / divisor, self.compute_dtype)
