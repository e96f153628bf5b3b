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
conditions (or after a fixed iteration budget), so it runs inside
`tf.function`, also with XLA. The iterate is feasible (v >= u) at every
iteration. On the same float64 matrix it agrees with quadprog (TorchJD's
solver) to about 1e-9 relative.
"""

import tensorflow as tf


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
    num = tf.shape(gramian)[0]
    trace = tf.reduce_sum(tf.linalg.diag_part(gramian))
    if eps_mode == "relative":
        degenerate = tf.logical_not(tf.logical_and(trace > 0, tf.math.is_finite(trace)))
    else:
        degenerate = trace < norm_eps
    safe_trace = tf.where(degenerate, tf.ones_like(trace), trace)
    normalized = tf.where(degenerate, tf.zeros_like(gramian), gramian / safe_trace)
    return normalized + reg_eps * tf.eye(num, dtype=gramian.dtype)


#: Relative Schur complement below which a variable is not freed.
_DEPENDENCE_TOL = 1e-7


def _masked_matvec(gramian, x, mask):
    """Returns M x for M = P A P + (I - P), P = diag(mask), row-wise on x."""
    return mask * tf.matmul(mask * x, gramian) + (1.0 - mask) * x


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
    dtype = gramian.dtype
    u = tf.cast(u, dtype)
    num = gramian.shape[0]
    if num is None:
        num = tf.shape(gramian)[0]
    batch = tf.shape(u)[0]
    if max_iter is None:
        max_iter = 10 * num + 20
    scale = tf.maximum(
        tf.reduce_max(tf.abs(tf.linalg.diag_part(gramian))), tf.cast(1e-30, dtype)
    )
    grad_tol = tf.cast(tol, dtype) * scale
    diag = tf.linalg.diag_part(gramian)
    base_grad = tf.matmul(u, gramian)  # A u (A symmetric), (B, T)
    tiny = tf.cast(1e-300, dtype)

    def solve(inverse, rhs, mask):
        sol = tf.linalg.matvec(inverse, rhs)
        for _ in range(2):
            sol += tf.linalg.matvec(inverse, rhs - _masked_matvec(gramian, sol, mask))
        return sol * mask

    def cond(it, z, free, inverse, done):
        return tf.logical_and(it < max_iter, tf.logical_not(tf.reduce_all(done)))

    def body(it, z, free, inverse, done):
        mask = tf.cast(free, dtype)
        # Minimiser of the objective over the current free set.
        s = solve(inverse, -base_grad * mask, mask)
        feasible = tf.reduce_all(tf.logical_or(tf.logical_not(free), s > 0), axis=1)

        # Feasible: accept s, then free the most violated constraint.
        neg_grad = -(base_grad + tf.matmul(s, gramian))
        candidates = tf.logical_and(tf.logical_not(free), neg_grad > grad_tol)
        has_candidate = tf.reduce_any(candidates, axis=1)
        best = tf.argmax(
            tf.where(candidates, neg_grad, -tf.ones_like(neg_grad)),
            axis=1,
            output_type=tf.int32,
        )
        e_add = tf.one_hot(best, num, dtype=dtype)
        free_a = tf.logical_or(free, tf.logical_and(e_add > 0, has_candidate[:, None]))
        column = tf.gather(gramian, best) * mask  # A[F, j]
        bordered = tf.linalg.matvec(inverse, column)
        diag_best = tf.gather(diag, best)
        schur = diag_best - tf.reduce_sum(column * bordered, axis=1)
        # A candidate whose Schur complement vanishes is (numerically) a
        # combination of the free variables' rows: in exact arithmetic its
        # gradient would be zero, so the current point is optimal.
        dependent = schur <= _DEPENDENCE_TOL * diag_best
        schur = tf.maximum(schur, tiny)
        y = bordered - e_add
        inverse_a = (
            inverse
            - e_add[:, :, None] * e_add[:, None, :]
            + y[:, :, None] * y[:, None, :] / schur[:, None, None]
        )

        # Infeasible: move towards s until a free variable reaches zero, and
        # take that variable out of the free set.
        blocking = tf.logical_and(free, s <= 0)
        gap = z - s
        safe_gap = tf.where(gap > 0, gap, tf.ones_like(gap))
        ratio = tf.where(
            blocking,
            tf.where(gap > 0, z / safe_gap, tf.zeros_like(z)),
            2.0 * tf.ones_like(z),
        )
        worst = tf.argmin(ratio, axis=1, output_type=tf.int32)
        step = tf.minimum(tf.reduce_min(ratio, axis=1, keepdims=True), 1.0)
        e_rem = tf.one_hot(worst, num, dtype=dtype)
        z_b = tf.maximum(z + step * (s - z), 0.0) * (1.0 - e_rem)
        free_b = tf.logical_and(free, tf.logical_not(e_rem > 0))
        q = tf.gather(inverse, worst, axis=2, batch_dims=1)  # column of M^-1
        pivot = tf.maximum(tf.reduce_sum(q * e_rem, axis=1), tiny)
        inverse_b = (
            inverse
            - q[:, :, None] * q[:, None, :] / pivot[:, None, None]
            + e_rem[:, :, None] * e_rem[:, None, :]
        )

        keep = done[:, None]
        feas = feasible[:, None]
        grow = tf.logical_and(
            feasible, tf.logical_and(has_candidate, tf.logical_not(dependent))
        )
        free_a = tf.where(grow[:, None], free_a, free)
        grow = grow[:, None, None]
        new_z = tf.where(keep, z, tf.where(feas, s, z_b))
        new_free = tf.where(keep, free, tf.where(feas, free_a, free_b))
        new_inverse = tf.where(
            keep[:, :, None],
            inverse,
            tf.where(grow, inverse_a, tf.where(feas[:, :, None], inverse, inverse_b)),
        )
        stop = tf.logical_or(tf.logical_not(has_candidate), dependent)
        new_done = tf.logical_or(done, tf.logical_and(feasible, stop))
        return it + 1, new_z, new_free, new_inverse, new_done

    z0 = tf.zeros_like(u)
    free0 = tf.zeros(tf.shape(u), dtype=tf.bool)
    inverse0 = tf.eye(num, batch_shape=[batch], dtype=dtype)
    done0 = tf.zeros([batch], dtype=tf.bool)
    _, z, _, _, _ = tf.while_loop(
        cond, body, (tf.constant(0), z0, free0, inverse0, done0)
    )
    return u + z
