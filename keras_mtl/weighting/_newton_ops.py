"""Small in-graph helpers for the Newton-type solvers of CAGrad and Nash-MTL.

The problems are tiny (T x T), so a backtracking line search is done in one
shot: the objective is evaluated at all trial step sizes at once and the
largest step that satisfies the Armijo condition is kept. Everything is
`keras.ops` without data-dependent Python branching, fine inside a compiled
step (`tf.function` with XLA, `jax.jit`).
"""

from keras import ops

#: Trial steps are max_step * 2^-k for k = 0 .. _NUM_TRIALS - 1.
_NUM_TRIALS = 40
_ARMIJO = 1e-4


def armijo_step(
    batched_objective, x, direction, value, slope, max_step, full_step_ok=None
):
    """Largest step `max_step * 2^-k` with a sufficient decrease.

    Args:
        batched_objective: maps a `(N, T)` batch of points to `(N,)` values,
            returning +inf (or NaN) outside the domain.
        x: `(T,)` current point.
        direction: `(T,)` descent direction.
        value: objective at `x`.
        slope: directional derivative at `x` along `direction` (< 0 for a
            descent direction).
        max_step: the largest step to try (e.g. the fraction-to-boundary
            step).
        full_step_ok: optional boolean scalar; when True, `max_step` is
            taken whenever the objective is finite there. Newton methods
            pass "the Newton decrement is small": near the solution the
            decrease falls below the rounding error of the objective and
            an Armijo test would stall the iteration.

    Returns:
        The step size, 0 when no trial step decreases the objective.
    """
    dtype = x.dtype
    trials = ops.arange(_NUM_TRIALS, dtype="int32")
    steps = max_step * ops.power(
        ops.cast(0.5, dtype), ops.arange(_NUM_TRIALS, dtype=dtype)
    )
    points = x[None, :] + steps[:, None] * direction[None, :]
    values = batched_objective(points)
    ok = values <= value + _ARMIJO * steps * slope
    ok = ops.logical_and(ok, ops.isfinite(values))
    if full_step_ok is not None:
        full = ops.logical_and(full_step_ok, ops.isfinite(values[0]))
        ok = ops.logical_or(ok, ops.logical_and(full, trials == 0))
    first = ops.min(ops.where(ok, trials, _NUM_TRIALS))
    return ops.where(
        first < _NUM_TRIALS,
        ops.take(steps, ops.minimum(first, _NUM_TRIALS - 1)),
        ops.zeros([], dtype),
    )


def max_step_to_boundary(x, direction, fraction=0.99):
    """Largest step in (0, 1] keeping `x + step * direction` positive."""
    dtype = x.dtype
    neg = direction < 0
    safe = ops.where(neg, direction, -ops.ones_like(direction))
    ratios = ops.where(neg, -x / safe, ops.full_like(x, float("inf")))
    return ops.minimum(ops.ones([], dtype), fraction * ops.min(ratios))
