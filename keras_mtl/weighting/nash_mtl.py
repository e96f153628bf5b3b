"""Nash-MTL, multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

from __future__ import annotations

import math
from typing import ClassVar

import keras
from keras import ops

from keras_mtl.weighting._newton_ops import armijo_step, max_step_to_boundary
from keras_mtl.weighting._present_task_ops import present_block, present_tasks
from keras_mtl.weighting._solver_ops import (
    cholesky_solve,
    executing_eagerly,
    psd_solve,
    solver_dtype,
    solver_function,
)
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

_SOLVERS = ("ccp", "newton")
# Newton iterations for the bargaining equations and per convex subproblem.
_NEWTON_ITERS = 100
_BARRIER_ITERS = 70
# Barrier weight schedule of the subproblem solver (doubling each step).
_T_START = 1.0
_T_MAX = 1e9
# Newton decrements (squared) below which a full step is taken, and below
# which the subproblem counts as solved (bounded).
_FULL_STEP_DECREMENT = 1e-8
_CENTERED_DECREMENT = 1e-4
# The subproblem solve ends early once the weight is at its maximum and the
# Newton decrement (squared) is below this: further steps move b by less
# than about 1e-10 relative.
_CONVERGED_DECREMENT = 1e-20
# The bargaining solution solves a subproblem when the multipliers of its
# (all active) constraints are >= -_MULTIPLIER_TOL times the largest one.
_MULTIPLIER_TOL = 1e-10
# An iterate this many times larger than the start has run away.
_RUNAWAY = 1e6
# A bargaining solution is accepted when max_t |alpha_t (K alpha)_t - 1| is
# below this (without one the residual stays of order 1).
_NBS_TOL = 1e-6
# Largest accepted weight in the cosine space (C b = 1/b): b_t ~ 1/sqrt(mu)
# along an eigenvalue mu of C, and eigenvalues below ~1e-6 are noise.
_MAX_COSINE_WEIGHT = 1e3
# Stopping rules of the reference (`NashMTL._stop_criteria`).
_REF_RESIDUAL_TOL = 1e-3
_REF_CHANGE_TOL = 1e-6
_REF_ALPHA_EPS = 1e-10
# torch.nn.utils.clip_grad_norm_ adds this to the norm.
_CLIP_EPS = 1e-6


def _norm(x):
    """The Euclidean (Frobenius) norm of all the entries of x."""
    return ops.sqrt(ops.sum(x * x))


def _correlation(gramian, present=None):
    """Returns (d, C, ok): row norms, cosine matrix, and whether all d > 0.

    With `present`, `ok` looks at the present tasks only, and the absent
    block of C is the identity, decoupled from the present block (so that
    an absent coordinate b_t = 1 solves its own equation and stays put).
    """
    norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    if present is None:
        ok = ops.all(norms > 0)
    else:
        ok = ops.all(ops.logical_or(norms > 0, ops.logical_not(present)))
    safe = ops.where(norms > 0, norms, ops.ones_like(norms))
    corr = gramian / (safe[:, None] * safe[None, :])
    if present is not None:
        corr = present_block(corr, present, diagonal=1.0)
    return norms, corr, ok


def bargaining_solution(corr, warm_start, present=None):
    """Solves C b = 1 / b, b > 0 (the Nash bargaining equations).

    b is the minimiser of the strictly convex f(b) = b^T C b / 2 -
    sum_t log b_t, found by Newton's method (Hessian C + diag(1/b^2),
    solved in the variables b * delta) with an Armijo line search.

    With `present`, the equations of the present tasks alone: `corr` must
    then have an identity absent block decoupled from the present one
    (`_correlation`); the absent coordinates are fixed at b_t = 1 (their
    gradient and Newton step are exactly 0) and left out of f, so the
    iterates on the present coordinates are those of the K-task problem.

    Args:
        corr: `(T, T)` float64 PSD matrix (the cosine matrix).
        warm_start: `(T,)` candidate start (used when positive and better
            than the default start).
        present: None (every task), or `(T,)` booleans, True for the
            present tasks.

    Returns:
        `(b, converged)`; `converged` is False when no solution exists
        (f unbounded below: some b >= 0 with C b = 0) or was not reached.
    """
    num = corr.shape[0]
    dtype = corr.dtype

    def objective(points):
        terms = points * ops.matmul(points, corr)
        if present is not None:
            terms = ops.where(present, terms, ops.zeros_like(terms))
            points = ops.where(present, points, ops.ones_like(points))
        quad = ops.sum(terms, axis=1)
        logs = ops.sum(ops.log(points), axis=1)
        inside = ops.all(points > 0, axis=1)
        values = 0.5 * quad - logs
        return ops.where(inside, values, ops.full_like(values, float("inf")))

    if present is None:
        total = ops.sum(corr)
        count = num
    else:
        pair = ops.logical_and(present[:, None], present[None, :])
        total = ops.sum(ops.where(pair, corr, ops.zeros_like(corr)))
        count = ops.sum(ops.cast(present, dtype))
        warm_start = ops.where(present, warm_start, ops.ones_like(warm_start))
    scale = ops.sqrt(count / ops.maximum(total, ops.full([], 1e-300, dtype)))
    default = ops.full([num], scale, dtype)
    if present is not None:
        default = ops.where(present, default, ops.ones_like(default))
    warm_ok = ops.logical_and(
        ops.all(ops.isfinite(warm_start)), ops.all(warm_start > 0)
    )
    warm = ops.where(warm_ok, warm_start, default)
    values = objective(ops.stack([default, warm]))
    start = ops.where(values[1] < values[0], warm, default)
    eye = ops.eye(num, dtype=dtype)

    def body(k, b, done):
        cb = ops.matmul(corr, b)
        grad = cb - 1.0 / b
        hess = b[:, None] * corr * b[None, :] + eye
        delta = -cholesky_solve(hess, (b * grad)[:, None])[:, 0]
        direction = b * delta
        slope = ops.sum(grad * direction)
        descent = ops.logical_and(ops.all(ops.isfinite(direction)), slope < 0)
        direction = ops.where(descent, direction, ops.zeros_like(direction))
        slope = ops.where(descent, slope, ops.zeros_like(slope))
        step = armijo_step(
            objective,
            b,
            direction,
            objective(b[None, :])[0],
            slope,
            max_step_to_boundary(b, direction),
            # f is self-concordant: a full step is safe and quadratically
            # convergent once the Newton decrement is below 1/4.
            full_step_ok=ops.logical_and(descent, -slope < 0.0625),
        )
        new_b = b + step * direction
        done = ops.logical_or(-slope < 1e-30, step == 0)
        done = ops.logical_or(done, ops.logical_not(descent))
        return k + 1, new_b, done

    _, b, _ = ops.while_loop(
        lambda k, b, done: ops.logical_and(k < _NEWTON_ITERS, ops.logical_not(done)),
        body,
        (ops.zeros([], "int32"), start, ops.zeros([], "bool")),
    )
    residual = ops.max(ops.abs(b * ops.matmul(corr, b) - 1.0))
    converged = ops.logical_and(residual < _NBS_TOL, ops.all(b > 0))
    converged = ops.logical_and(converged, ops.all(ops.isfinite(b)))
    # A huge b only balances C b = 1/b through eigenvalues of C at the
    # rounding level of a float32 Gramian: no solution, numerically.
    converged = ops.logical_and(converged, ops.max(b) < _MAX_COSINE_WEIGHT)
    return b, converged


def ccp_subproblem(corr, cost, start, present=None):
    """One convex subproblem of the authors' convex-concave procedure.

        minimise_b  cost . b   subject to  log b_t + log (C b)_t >= 0,

    solved by a log-barrier interior-point method: Newton steps (with an
    Armijo search that stays strictly inside) on
    s cost . b / max|cost| - sum_t log(log b_t + log (C b)_t) with the
    weight s doubling from 1 to 1e9 (a duality gap of T * 1e-9).

    With `present`, the subproblem of the present tasks alone: `corr` has
    an identity absent block decoupled from the present one, the absent
    entries of `cost` are 0 and those of `start` positive; the absent
    constraints are dropped and the absent coordinates never move (their
    Newton step is exactly 0).

    Args:
        corr: `(T, T)` float64 cosine matrix.
        cost: `(T,)` linear cost.
        start: strictly feasible `(T,)` start.
        present: None (every task), or `(T,)` booleans, True for the
            present tasks.

    Returns:
        `(b, ok)`; `ok` is False when the problem looks unbounded or the
        solve broke down (the reference's solver then returns no value).
    """
    num = corr.shape[0]
    dtype = corr.dtype
    cost = cost / ops.max(ops.abs(cost))

    def barrier(points, weight):
        cb = ops.matmul(points, corr)
        inside = ops.logical_and(ops.all(points > 0, axis=1), ops.all(cb > 0, axis=1))
        safe_p = ops.where(inside[:, None], points, ops.ones_like(points))
        safe_cb = ops.where(inside[:, None], cb, ops.ones_like(cb))
        h = ops.log(safe_p) + ops.log(safe_cb)
        if present is not None:
            # No constraint for an absent task: log h_t counts as log 1.
            h = ops.where(present, h, ops.ones_like(h))
        inside = ops.logical_and(inside, ops.all(h > 0, axis=1))
        safe_h = ops.where(inside[:, None], h, ops.ones_like(h))
        value = weight * ops.matmul(points, cost) - ops.sum(ops.log(safe_h), axis=1)
        return ops.where(inside, value, ops.full_like(value, float("inf")))

    eye = ops.eye(num, dtype=dtype)

    def newton_direction(b, weight):
        cb = ops.matmul(corr, b)
        h = ops.log(b) + ops.log(cb)
        # Rows: the gradients of h_t.
        jac = eye / b[:, None] + corr / cb[:, None]
        jac_t = ops.transpose(jac)
        corr_t = ops.transpose(corr)
        if present is None:
            grad = weight * cost - ops.matmul(jac_t, 1.0 / h)
            hess = (
                ops.matmul(jac_t, jac / (h * h)[:, None])
                + ops.diag(1.0 / (b * b * h))
                + ops.matmul(corr_t, corr / (cb * cb * h)[:, None])
            )
            scaled = b[:, None] * hess * b[None, :]
        else:
            # The absent constraints are dropped (1/h_t = 0): the absent
            # block of the Hessian is 0, replaced by the identity so that
            # the absent step is exactly 0.
            keep = ops.cast(present, dtype)
            h = ops.where(present, h, ops.ones_like(h))
            grad = weight * cost - ops.matmul(jac_t, keep / h)
            hess = (
                ops.matmul(jac_t, jac / (h * h)[:, None] * keep[:, None])
                + ops.diag(keep / (b * b * h))
                + ops.matmul(corr_t, corr / (cb * cb * h)[:, None] * keep[:, None])
            )
            scaled = b[:, None] * hess * b[None, :] + ops.diag(1.0 - keep)
        delta = -cholesky_solve(scaled, (b * grad)[:, None])[:, 0]
        direction = b * delta
        slope = ops.sum(grad * direction)
        finite = ops.logical_and(ops.all(ops.isfinite(direction)), ops.isfinite(slope))
        descent = ops.logical_and(finite, slope < 0)
        direction = ops.where(descent, direction, ops.zeros_like(direction))
        slope = ops.where(descent, slope, ops.zeros_like(slope))
        return direction, slope, descent, finite

    def body(k, b, weight, done):
        direction, slope, descent, _ = newton_direction(b, weight)
        step = armijo_step(
            lambda p: barrier(p, weight),
            b,
            direction,
            barrier(b[None, :], weight)[0],
            slope,
            ops.ones([], dtype),
            full_step_ok=ops.logical_and(descent, -slope < _FULL_STEP_DECREMENT),
        )
        b = b + step * direction
        done = ops.logical_and(
            weight >= _T_MAX,
            ops.logical_or(-slope < _CONVERGED_DECREMENT, ops.logical_not(descent)),
        )
        weight = ops.minimum(weight * 2.0, _T_MAX)
        return k + 1, b, weight, done

    _, b, weight, _ = ops.while_loop(
        lambda k, b, weight, done: ops.logical_and(
            k < _BARRIER_ITERS, ops.logical_not(done)
        ),
        body,
        (
            ops.zeros([], "int32"),
            start,
            ops.full([], _T_START, dtype),
            ops.zeros([], "bool"),
        ),
    )
    # A bounded problem ends on the central path (the Newton decrement
    # vanishes); on an unbounded one the iterate keeps running away.
    # (where its Hessian also ends up numerically indefinite).
    _, slope, _, finite = newton_direction(b, weight)
    ok = ops.logical_and(ops.all(ops.isfinite(b)), finite)
    ok = ops.logical_and(ok, -slope < _CENTERED_DECREMENT)
    if present is None:
        largest, largest_start = ops.max(b), ops.max(start)
    else:
        largest = ops.max(ops.where(present, b, ops.zeros_like(b)))
        largest_start = ops.max(ops.where(present, start, ops.zeros_like(start)))
    ok = ops.logical_and(ok, largest < _RUNAWAY * largest_start)
    return b, ok


def solves_subproblem(corr, cost, b):
    """Whether the bargaining solution b solves `ccp_subproblem(corr, cost)`.

    At b all constraints h_t(b) = log b_t + log (C b)_t >= 0 are active
    (b_t (C b)_t = 1), and the subproblem is convex, so b is its minimiser
    if and only if cost = sum_t lambda_t grad h_t(b) with lambda >= 0 (KKT).
    With grad h_t = e_t / b_t + C_t / (C b)_t and lambda = (C b) * mu, this
    is the symmetric positive definite system (C + diag(C b / b)) mu = cost,
    and lambda >= 0 iff mu >= 0. An exact certificate, so the barrier solve
    is needed only where it fails (a constraint is slack at the optimum).
    """
    cb = ops.matmul(corr, b)
    system = corr + ops.diag(cb / b)
    mu = psd_solve(system, cost[:, None])[:, 0]
    finite = ops.all(ops.isfinite(mu))
    tol = _MULTIPLIER_TOL * ops.max(ops.abs(mu))
    return ops.logical_and(finite, ops.min(mu) >= -tol)


def nash_mtl_alpha(gramian, previous, solver="ccp", max_iter=20):
    """Nash-MTL's alpha for a `(T, T)` float64 Gramian K.

    "newton": the Nash bargaining solution K alpha = 1 / alpha (alpha > 0),
    or `previous` when none exists. "ccp": the authors' procedure, started
    from `previous`: at most `max_iter` convex subproblems

        alpha_{k+1} = argmin_a (K 1 + 1/alpha_k + K (1 / (K alpha_k))) . a
                      subject to a_t (K a)_t >= 1,

    stopping (and keeping alpha_k) when ||K alpha_k / ||K||_F -
    1 / (alpha_k + 1e-10)|| < 1e-3, when a subproblem has no solution, or
    when ||alpha_{k+1} - alpha_k|| < 1e-6. Both run on the cosine matrix
    C = D^-1 K D^-1 (D = diag of the gradient norms) for conditioning. A
    subproblem is solved by the barrier method (`ccp_subproblem`) only when
    the bargaining solution is not its minimiser (`solves_subproblem`).
    """
    return _alpha(gramian, previous, solver, max_iter)


def present_nash_mtl_alpha(gramian, previous, present, solver="ccp", max_iter=20):
    """`nash_mtl_alpha` for the present tasks alone.

    The same computation on the present block of K (the absent rows and
    columns dropped, whatever they hold: its norm, the bargaining
    equations, the subproblems and the stopping rules are those of the
    present tasks), started from the present entries of `previous`; the
    absent entries of the result are those of `previous`.

    Args:
        gramian: `(T, T)` float64 Gramian.
        previous: `(T,)` the stored alpha.
        present: `(T,)` booleans, True for the present tasks.
        solver, max_iter: as for `nash_mtl_alpha`.
    """
    return _alpha(gramian, previous, solver, max_iter, present)


def _alpha(gramian, previous, solver, max_iter, present=None):
    """`nash_mtl_alpha` (present None) or `present_nash_mtl_alpha`."""
    dtype = gramian.dtype
    if present is not None:
        gramian = present_block(gramian, present)
    norms, corr, norms_ok = _correlation(gramian, present)
    safe_norms = ops.where(norms > 0, norms, ops.ones_like(norms))
    nbs_b, nbs_ok = bargaining_solution(corr, previous * safe_norms, present)
    feasible = ops.logical_and(norms_ok, nbs_ok)

    def keep_absent(alpha):
        return alpha if present is None else ops.where(present, alpha, previous)

    if solver == "newton":
        return keep_absent(ops.where(feasible, nbs_b / safe_norms, previous))

    frob = _norm(gramian)
    safe_frob = ops.where(frob > 0, frob, ops.ones_like(frob))
    # Strictly feasible start of every subproblem: h_t = 0.5 for all t.
    start = nbs_b * ops.cast(math.exp(0.25), dtype)
    if present is not None:
        # Inside the procedure the absent coordinates are b_t = alpha_t = 1
        # (with unit norm), a fixed point of their decoupled equations.
        start = ops.where(present, start, ops.ones_like(start))
        norms = safe_norms
        initial = ops.where(present, previous, ops.ones_like(previous))
    else:
        initial = previous

    def residual_small(alpha):
        res = ops.matmul(gramian, alpha) / safe_frob - 1.0 / (alpha + _REF_ALPHA_EPS)
        if present is not None:
            res = ops.where(present, res, ops.zeros_like(res))
        return _norm(res) < _REF_RESIDUAL_TOL

    def cond(k, alpha, done):
        return ops.logical_and(k < max_iter, ops.logical_not(done))

    def body(k, alpha, done):
        b_prev = alpha * norms
        cb_prev = ops.matmul(corr, b_prev)
        cost = ops.matmul(corr, norms) + 1.0 / b_prev
        cost = cost + ops.matmul(corr, 1.0 / cb_prev)
        if present is not None:
            cost = ops.where(present, cost, ops.zeros_like(cost))
        cost_ok = ops.logical_and(ops.all(ops.isfinite(cost)), ops.any(cost != 0))
        safe_cost = ops.where(cost_ok, cost, ops.ones_like(cost))
        if present is not None:
            safe_cost = ops.where(present, safe_cost, ops.zeros_like(safe_cost))
        b_new, solved = ops.cond(
            solves_subproblem(corr, safe_cost, nbs_b),
            lambda: (nbs_b, ops.ones([], "bool")),
            lambda: ccp_subproblem(corr, safe_cost, start, present),
        )
        alpha_new = b_new / safe_norms
        failed = ops.logical_not(ops.logical_and(cost_ok, solved))
        stop = ops.logical_or(residual_small(alpha), failed)
        stop = ops.logical_or(stop, _norm(alpha_new - alpha) < _REF_CHANGE_TOL)
        alpha = ops.where(stop, alpha, alpha_new)
        return k + 1, alpha, stop

    def run():
        _, alpha, _ = ops.while_loop(
            cond, body, (ops.zeros([], "int32"), initial, residual_small(initial))
        )
        return keep_absent(alpha)

    # Without a feasible point the first subproblem is infeasible: the
    # reference keeps the previous alpha.
    return ops.cond(feasible, run, lambda: previous)


_compiled_nash_mtl_alpha = solver_function(nash_mtl_alpha)
_compiled_present_nash_mtl_alpha = solver_function(present_nash_mtl_alpha)


@register_strategy("nash_mtl", "nashmtl", "nash")
class NashMTL(GradientAggregation):
    """Nash-MTL: the task weights of the Nash bargaining solution.

    Notation: T tasks, g_t the gradient of task t (row t of G), K = G G^T.
    Nash-MTL chooses the update d = sum_t alpha_t g_t with alpha > 0 solving
    the bargaining equations

        alpha_t (K alpha)_t = 1  for all t,  i.e.  K alpha = 1 / alpha,

    so every task gets the same "utility" alpha_t g_t . d = 1. This
    bargaining solution does not depend on the scale of any single task's
    gradient: scaling g_k by c scales alpha_k by 1/c and leaves d unchanged;
    ||d||^2 = T.

    Solver (`solver`): the authors' code runs a convex-concave procedure
    (CCP): up to `optim_niter` convex subproblems solved with cvxpy/ECOS,
    warm-started from the previous step's alpha, with their stopping rules.
    "ccp" (default) reproduces that procedure in the graph, each subproblem
    solved exactly: its solution is the bargaining solution whenever the
    KKT multipliers of the latter are non-negative (checked with one
    T x T solve, the usual case: the procedure then stops after two
    subproblems), and otherwise comes from a log-barrier interior-point
    Newton method. So alpha matches
    the reference's, including the inputs (about one in ten random small
    problems) where the procedure stops at a fixed point that is not the
    bargaining solution (one constraint alpha_t (K alpha)_t >= 1 stays
    slack), or keeps the previous alpha because a subproblem is unbounded.
    On those inputs the result is not scale invariant, as in the
    reference. "newton" returns the exact bargaining solution (Newton's
    method on the convex f(a) = a^T K a / 2 - sum_t log a_t). Both keep the
    previous alpha when no solution exists (0 in the convex hull of the
    gradients, for example g_1 = -g_2, or a zero gradient), as the
    reference does when its solver fails. The authors' Frobenius
    normalisation of K only rescales their subproblem's objective (its
    constraints use the raw K), so the solution solves the equations for
    the raw Gramian; we compute on the cosine matrix for conditioning.

    In a graph without XLA the solver runs as one XLA-compiled function (a
    few hundred microseconds per step instead of milliseconds of small ops).

    The weights are recomputed every `update_weights_every` steps and
    reused in between (the stored alpha, applied to the current
    gradients). Then, as in the reference, the update is clipped to norm
    `max_norm` (torch's `clip_grad_norm_`: multiplied by
    min(1, max_norm / (||d|| + 1e-6))), when `max_norm > 0`.

    Scale: the method's own: ||d|| = sqrt(T) before clipping, so with the
    default max_norm = 1 the update has norm 1 whatever the gradients'
    scale. The returned weights are the effective ones (alpha times the
    clipping factor); `alpha` holds the unclipped alpha.

    Properties: stateful (alpha and a step counter; `reset_state()` sets
    alpha to ones, the reference's initial value, and the counter to 0);
    T backward passes; parameter gradients only (as in the reference).

    Missing tasks: with a `task_mask`, the game is played by the K present
    tasks alone: the absent rows and columns of K are dropped (not set to
    zero, which would make the equations unsolvable), and alpha solves the
    bargaining equations of the present block, by the same procedure,
    warm-started from the present entries of the stored alpha (and with
    the Frobenius norm and stopping rules of the present block). The
    clipping uses the norm of the update of the present tasks, ||d|| =
    sqrt(K) before clipping. The weights of the present tasks are those of
    Nash-MTL built for the K present tasks with the same stored alpha
    entries and step counter; absent tasks get weight 0. `alpha` is
    per-task state: an absent task's entry is left as it was (also on a
    step that recomputes alpha), so with `update_weights_every` > 1 its
    stored weight comes back when the task is present again; a step that
    reuses the stored alpha still gives absent tasks weight 0. The step
    counter advances on every step.

    Args:
        update_weights_every: recompute alpha every this many steps (>= 1).
            Default 1.
        optim_niter: maximum number of convex subproblems per update
            ("ccp"). Default 20.
        max_norm: clip the update to this norm; 0 disables clipping.
            Default 1.0.
        solver: "ccp" (the authors' procedure, default) or "newton" (the
            exact bargaining solution).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.nash_mtl import NashMTL
    >>> grads = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    >>> update = NashMTL(max_norm=0.0).aggregate(grads)
    >>> np.round(update.numpy().astype("float64"), 3).tolist()
    [1.0, 1.0]

    References:
        Aviv Navon, Aviv Shamsian, Idan Achituve, Haggai Maron, Kenji
        Kawaguchi, Gal Chechik, Ethan Fetaya. "Multi-Task Learning as a
        Bargaining Game". ICML 2022. arXiv:2202.01017. Official code:
        AvivNavon/nash-mtl (`methods/weight_methods.py`, `NashMTL`, commit
        8d60c75); also LibMTL `LibMTL/weighting/Nash_MTL.py` (commit
        ab85804), the same code.

    Note:
        The reference clips the norm of the shared parameters' gradient
        after its backward pass; here the clipping is applied to the
        returned update (the same vector). Against the authors' solver
        (ECOS, tolerance 1e-8) alphas agree to about 1e-5 relative, up to
        1e-3 where the procedure converges slowly within its 20
        iterations. On infeasible inputs ECOS sometimes returns an
        inaccurate point that violates the constraints instead of
        failing; we keep the previous alpha there. Gradients whose
        bargaining solution would need weights above 1e3 in the cosine
        scale (cosine-matrix eigenvalues below ~1e-6, rounding noise of a
        float32 Gramian) count as having none. The stored alpha is float64,
        the step counter int64 (on JAX without `jax_enable_x64`: float32
        and int32; the solver computes in float64 either way).
    """

    requires: ClassVar[str] = "gramian"
    stateful: ClassVar[bool] = True
    supports_missing_tasks: ClassVar[bool] = True

    def __init__(
        self,
        update_weights_every=1,
        optim_niter=20,
        max_norm=1.0,
        solver="ccp",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("update_weights_every", update_weights_every),
            ("optim_niter", optim_niter),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"NashMTL `{name}` must be an int >= 1, got {value!r}."
                )
        try:
            max_norm_value = float(max_norm)
        except (TypeError, ValueError):
            max_norm_value = float("nan")
        if not (math.isfinite(max_norm_value) and max_norm_value >= 0.0):
            raise ValueError(
                f"NashMTL `max_norm` must be finite and >= 0, got {max_norm!r}."
            )
        if solver not in _SOLVERS:
            raise ValueError(
                f"NashMTL `solver` must be one of {_SOLVERS}, got {solver!r}."
            )
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.max_norm = max_norm_value
        self.solver = solver

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "update_weights_every": self.update_weights_every,
                "optim_niter": self.optim_niter,
                "max_norm": self.max_norm,
                "solver": self.solver,
            }
        )
        return config

    def build(self, input_shape):
        super().build(input_shape)
        self.alpha = self.add_weight(
            shape=(self.num_tasks,),
            initializer="ones",
            # float32 on JAX without x64 (see `solver_dtype`).
            dtype=solver_dtype(),
            trainable=False,
            name="alpha",
            task_axis=0,
        )
        self.step_count = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int64",
            trainable=False,
            name="step_count",
        )

    def reset_state(self):
        self.alpha.assign(ops.ones_like(self.alpha.value))
        self.step_count.assign(ops.zeros_like(self.step_count.value))

    def _solve(self, gramian, previous, present=None):
        if present is None:
            return _compiled_nash_mtl_alpha(
                gramian, previous, self.solver, self.optim_niter
            )
        return _compiled_present_nash_mtl_alpha(
            gramian, previous, present, self.solver, self.optim_niter
        )

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        gramian = ops.cast(gramian, solver_dtype())
        present = None
        if task_mask is not None:
            present = present_tasks(task_mask)
            gramian = present_block(gramian, present)
        previous = ops.copy(self.alpha.value)
        if self.update_weights_every == 1:
            alpha = self._solve(gramian, previous, present)
        else:
            due = ops.equal(
                ops.mod(self.step_count.value, self.update_weights_every), 0
            )
            if keras.backend.backend() == "jax" and executing_eagerly(due):
                # An eager `lax.cond` traces both branches and compiles the
                # solver again at every call (seconds): on a concrete `due`
                # the branch is taken in Python, as TensorFlow's eager `cond`
                # does. Traced steps and TensorFlow use `ops.cond`.
                alpha = self._solve(gramian, previous, present) if due else previous
            else:
                alpha = ops.cond(
                    due,
                    lambda: self._solve(gramian, previous, present),
                    lambda: previous,
                )
        if training:
            self.alpha.assign(alpha)
            self.step_count.assign_add(1)
        if present is not None:
            alpha = ops.where(present, alpha, ops.zeros_like(alpha))
        weights = alpha
        if self.max_norm > 0:
            norm = ops.sqrt(
                ops.maximum(ops.sum(alpha * ops.matmul(gramian, alpha)), 0.0)
            )
            weights = alpha * ops.minimum(1.0, self.max_norm / (norm + _CLIP_EPS))
        return ops.cast(weights, self.compute_dtype)
