"""In-graph projections onto the dual cone of a set of gradients.

Shared by `UPGrad` and `DualProj`. Notation: J is a `(T, P)` matrix of task
gradients and A = J J^T its Gramian. The dual cone of the rows of J is the set
of directions d with g_t . d >= 0 for every task t. For a direction written as
a combination d = J^T u of the rows, its Euclidean projection onto that cone
is J^T v, where v solves the quadratic program (Proposition 1 of Quinton & Rey,
"Jacobian Descent for Multi-Objective Optimization", arXiv 2406.16232):

    minimise  v^T A v    subject to    v >= u   (elementwise).

With v = u + z this is a non-negative least-squares problem in z, which we
solve exactly with an active-set method in the style of Lawson and Hanson,
written for the Gramian (no factor of A needed) and batched over several
right-hand sides. Each iteration costs a few `(T, T)` matrix-vector products
per problem (the inverse of the free block is updated by rank-one
corrections); the loop ends when every problem satisfies the optimality
conditions (or after a fixed iteration budget), so it runs inside a
compiled step (`tf.function`, also with XLA, or `jax.jit`): a
`keras.ops.while_loop` whose state has static shapes. The iterate is
feasible (v >= u) at every iteration. On the same float64 matrix it
agrees with quadprog (TorchJD's solver) to about 1e-9 relative.

The solver works in float64 where the backend has it (`solver_dtype`):
always on TensorFlow, on JAX only with `jax_enable_x64` (JAX's default is
float32). Measured on rank-deficient and mixed-scale inputs (T = 3 and 20),
UPGrad's and DualProj's float32 updates agree with TensorFlow's float64
ones to 3e-8 of sum_t |w_t| ||g_t||, their weights to 9e-5 relative (on a
singular Gramian only `reg_eps` conditions them).
"""

import numpy as np
from keras import backend, ops

from keras_mtl.weighting._solver_ops import eager_function, executing_eagerly


def _tiny(dtype):
    """A positive floor for divisors: 1e-300 in float64, the smallest
    normal number in float32."""
    if dtype == "float64":
        return 1e-300
    return float(np.finfo(dtype).tiny)


def normalize_and_regularize(gramian, norm_eps, reg_eps, eps_mode="absolute"):
    """Scales A to unit trace and adds `reg_eps` to its diagonal.

    A = J J^T is divided by its trace (the squared Frobenius norm of J).
    With `eps_mode="absolute"` (TorchJD's `normalize` / `regularize`,
    `_linalg/_gramian.py`), A is replaced by zeros when the trace is below
    the absolute threshold `norm_eps`. With `eps_mode="relative"` there is
    no absolute threshold: A is replaced by zeros only when its trace is 0
    (or not finite), so the result is A / trace(A) + reg_eps * I, the
    Gramian plus `reg_eps * trace(A) * I` brought to unit scale, at every
    scale of the gradients. Then `reg_eps * I` is added so that the matrix
    is positive definite. Computed in the dtype of `gramian`.
    """
    num = gramian.shape[0]
    trace = ops.sum(ops.diagonal(gramian))
    if eps_mode == "relative":
        degenerate = ops.logical_not(ops.logical_and(trace > 0, ops.isfinite(trace)))
    else:
        degenerate = trace < norm_eps
    safe_trace = ops.where(degenerate, ops.ones_like(trace), trace)
    normalized = ops.where(degenerate, ops.zeros_like(gramian), gramian / safe_trace)
    return normalized + reg_eps * ops.eye(num, dtype=gramian.dtype)


#: Relative Schur complement below which a variable is not freed.
_DEPENDENCE_TOL = 1e-7


def _masked_matvec(gramian, x, mask):
    """Returns M x for M = P A P + (I - P), P = diag(mask), row-wise on x."""
    return mask * ops.matmul(mask * x, gramian) + (1.0 - mask) * x


def _matvec(matrices, vectors):
    """`(B, T)` products of `(B, T, T)` matrices with `(B, T)` vectors."""
    return ops.matmul(matrices, vectors[:, :, None])[:, :, 0]


def project_weights(u, gramian, max_iter=None, tol=1e-12):
    """Returns v with J^T v the projection of J^T u onto the dual cone of J.

    Solves, for each row u_b of `u`, min_v v^T A v subject to v >= u_b, by
    the active-set method of Lawson and Hanson applied to z = v - u >= 0:
    the free set F starts empty; while the current point is optimal on F,
    the variable with the most negative gradient joins F; the minimiser s of
    the objective over F is accepted if it is positive on F, otherwise the
    iterate moves towards s until a variable of F reaches zero and that
    variable leaves F.

    The inverse of the masked system M = A[F, F] (identity off F) is kept up
    to date by a rank-one bordering update when a variable joins F and a
    rank-one downdate when one leaves, so no factorisation is needed inside
    the loop (XLA's CPU factorisations are slow); every solve is polished
    by two steps of iterative refinement against the exact M. A variable
    whose row of A is numerically a combination of the free ones (relative
    Schur complement below 1e-7) is never freed, which keeps every system
    definite when A is only positive semi-definite or slightly indefinite
    (for example with `reg_eps = 0`); for a positive definite A with the
    default regularisation this never triggers.

    Args:
        u: `(B, T)` weights of the vectors to project (any float dtype).
        gramian: `(T, T)` symmetric positive definite matrix A (for example
            from `normalize_and_regularize`), preferably float64.
        max_iter: iteration budget of the active-set loop; default
            `10 * T + 20`. Exact termination typically takes about twice as
            many iterations as there are free variables at the solution.
        tol: optimality tolerance on the multipliers, relative to the largest
            diagonal entry of A.

    Returns:
        `(B, T)` tensor v of the dtype of `gramian` with v >= u.
    """
    gramian = ops.stop_gradient(ops.convert_to_tensor(gramian))
    u = ops.stop_gradient(ops.cast(u, gramian.dtype))
    if max_iter is None:
        max_iter = 10 * gramian.shape[0] + 20
    if backend.backend() == "jax":
        # One compiled solver per shape: called eagerly, `ops.while_loop`
        # would trace and compile its loop again at every call (seconds);
        # inside a traced step the inner `jax.jit` is inlined.
        return _eager_solver(u, gramian, int(max_iter), float(tol))
    if executing_eagerly(u, gramian):
        # Eagerly, the loop would run op by op (a few hundred tiny ops per
        # iteration, seconds at T = 20): one graph per shape instead, without
        # XLA (the same kernels as eagerly, so the same numbers). Inside a
        # traced step the loop is part of the step's graph.
        # The budget is a tensor, so that it does not retrace.
        budget = ops.convert_to_tensor(int(max_iter), dtype="int32")
        return _eager_solver(u, gramian, budget, float(tol))
    return _project(u, gramian, max_iter, tol)


def _project(u, gramian, max_iter, tol):
    """`project_weights` on prepared tensors (u cast to A's dtype)."""
    dtype = gramian.dtype
    num = gramian.shape[0]
    batch = u.shape[0]
    diag = ops.diagonal(gramian)
    scale = ops.maximum(ops.max(ops.abs(diag)), ops.cast(1e-30, dtype))
    grad_tol = ops.cast(tol, dtype) * scale
    base_grad = ops.matmul(u, gramian)  # A u (A symmetric), (B, T)
    tiny = ops.cast(_tiny(dtype), dtype)

    def solve(inverse, rhs, mask):
        sol = _matvec(inverse, rhs)
        for _ in range(2):
            sol += _matvec(inverse, rhs - _masked_matvec(gramian, sol, mask))
        return sol * mask

    def cond(it, z, free, inverse, done):
        return ops.logical_and(it < max_iter, ops.logical_not(ops.all(done)))

    def body(it, z, free, inverse, done):
        mask = ops.cast(free, dtype)
        # Minimiser of the objective over the current free set.
        s = solve(inverse, -base_grad * mask, mask)
        feasible = ops.all(ops.logical_or(ops.logical_not(free), s > 0), axis=1)

        # Feasible: accept s, then free the most violated constraint.
        neg_grad = -(base_grad + ops.matmul(s, gramian))
        candidates = ops.logical_and(ops.logical_not(free), neg_grad > grad_tol)
        has_candidate = ops.any(candidates, axis=1)
        best = ops.argmax(
            ops.where(candidates, neg_grad, -ops.ones_like(neg_grad)), axis=1
        )
        e_add = ops.one_hot(best, num, dtype=dtype)
        free_a = ops.logical_or(
            free, ops.logical_and(e_add > 0, has_candidate[:, None])
        )
        column = ops.take(gramian, best, axis=0) * mask  # A[F, j]
        bordered = _matvec(inverse, column)
        diag_best = ops.take(diag, best, axis=0)
        schur = diag_best - ops.sum(column * bordered, axis=1)
        # A candidate whose Schur complement vanishes is (numerically) a
        # combination of the free variables' rows: in exact arithmetic its
        # gradient would be zero, so the current point is optimal.
        dependent = schur <= _DEPENDENCE_TOL * diag_best
        schur = ops.maximum(schur, tiny)
        y = bordered - e_add
        inverse_a = (
            inverse
            - e_add[:, :, None] * e_add[:, None, :]
            + y[:, :, None] * y[:, None, :] / schur[:, None, None]
        )

        # Infeasible: move towards s until a free variable reaches zero, and
        # take that variable out of the free set.
        blocking = ops.logical_and(free, s <= 0)
        gap = z - s
        safe_gap = ops.where(gap > 0, gap, ops.ones_like(gap))
        ratio = ops.where(
            blocking,
            ops.where(gap > 0, z / safe_gap, ops.zeros_like(z)),
            2.0 * ops.ones_like(z),
        )
        # -0.0 as +0.0: `ops.argmin` ranks -0.0 below +0.0, the first of
        # several zeros is the one to take.
        worst = ops.argmin(ops.where(ratio == 0, ops.zeros_like(ratio), ratio), axis=1)
        step = ops.minimum(ops.min(ratio, axis=1, keepdims=True), 1.0)
        e_rem = ops.one_hot(worst, num, dtype=dtype)
        z_b = ops.maximum(z + step * (s - z), 0.0) * (1.0 - e_rem)
        free_b = ops.logical_and(free, ops.logical_not(e_rem > 0))
        # Column `worst` of each M^-1.
        index = ops.broadcast_to(ops.reshape(worst, (batch, 1, 1)), (batch, num, 1))
        q = ops.take_along_axis(inverse, index, axis=2)[:, :, 0]
        pivot = ops.maximum(ops.sum(q * e_rem, axis=1), tiny)
        inverse_b = (
            inverse
            - q[:, :, None] * q[:, None, :] / pivot[:, None, None]
            + e_rem[:, :, None] * e_rem[:, None, :]
        )

        keep = done[:, None]
        feas = feasible[:, None]
        grow = ops.logical_and(
            feasible, ops.logical_and(has_candidate, ops.logical_not(dependent))
        )
        free_a = ops.where(grow[:, None], free_a, free)
        grow = grow[:, None, None]
        new_z = ops.where(keep, z, ops.where(feas, s, z_b))
        new_free = ops.where(keep, free, ops.where(feas, free_a, free_b))
        new_inverse = ops.where(
            keep[:, :, None],
            inverse,
            ops.where(grow, inverse_a, ops.where(feas[:, :, None], inverse, inverse_b)),
        )
        stop = ops.logical_or(ops.logical_not(has_candidate), dependent)
        new_done = ops.logical_or(done, ops.logical_and(feasible, stop))
        return it + 1, new_z, new_free, new_inverse, new_done

    z0 = ops.zeros_like(u)
    free0 = ops.zeros((batch, num), dtype="bool")
    inverse0 = ops.broadcast_to(ops.eye(num, dtype=dtype), (batch, num, num))
    done0 = ops.zeros((batch,), dtype="bool")
    it0 = ops.convert_to_tensor(0, dtype="int32")
    _, z, _, _, _ = ops.while_loop(cond, body, (it0, z0, free0, inverse0, done0))
    return u + z


_eager_solver = eager_function(_project, static_argnums=(2, 3))
