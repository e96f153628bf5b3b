"""Euclidean projection onto the probability simplex, in `keras.ops`.

The sort-based form of LibMTL's and TorchJD's projections (MGDA's
Frank-Wolfe step, MoDo's and SDMGrad's projected weight steps): sort y in
decreasing order to u; for i = 1..T-1 let tau_i = (u_1 + ... + u_i - 1) / i
and take tau = tau_i for the first i with tau_i > u_{i+1}, else
tau = (sum y - 1) / T; the projection is max(y - tau, 0). It is the
Duchi et al. (ICML 2008) projection, written without a data-dependent loop
so that it compiles under XLA.
"""

from __future__ import annotations

from keras import ops


def project_onto_simplex(y, present=None):
    """The Euclidean projection of the `(T,)` vector y onto the simplex.

    With `present` (`(T,)` booleans): the projection of the present
    entries onto the simplex of the present tasks; absent entries get 0.
    """
    if y.shape[0] == 1:  # the one-point simplex
        ones = ops.ones_like(y)
        return ones if present is None else ops.where(present, ones, 0.0 * ones)
    if present is not None:
        return _project_present_onto_simplex(y, present)
    num = y.shape[0]
    dtype = y.dtype
    sorted_y = _sort_descending(y)
    counts = ops.arange(1, num, dtype=dtype)
    tmax = (ops.cumsum(sorted_y)[:-1] - 1.0) / counts
    hit = tmax > sorted_y[1:]
    first = ops.min(ops.where(hit, ops.arange(num - 1, dtype="int32"), num - 1))
    default = (ops.sum(y) - 1.0) / num
    threshold = ops.where(
        ops.any(hit), ops.take(tmax, ops.minimum(first, num - 2)), default
    )
    return ops.maximum(y - threshold, 0.0)


def _sort_descending(y):
    """The entries of a `(T,)` vector in descending order."""
    return ops.flip(ops.sort(y), axis=0)


def _project_present_onto_simplex(y, present):
    """`project_onto_simplex` over the K present entries of y, as the same
    projection on the K-vector of those entries (absent entries sort last
    and are never used)."""
    num = y.shape[0]
    dtype = y.dtype
    count = ops.sum(ops.cast(present, "int32"))
    sorted_y = _sort_descending(ops.where(present, y, ops.full_like(y, -float("inf"))))
    counts = ops.arange(1, num, dtype=dtype)
    tmax = (ops.cumsum(sorted_y)[:-1] - 1.0) / counts
    positions = ops.arange(num - 1, dtype="int32")
    hit = ops.logical_and(tmax > sorted_y[1:], positions < count - 1)
    first = ops.min(ops.where(hit, positions, num - 1))
    safe_count = ops.cast(ops.maximum(count, 1), dtype)
    default = (ops.sum(ops.where(present, y, ops.zeros_like(y))) - 1.0) / safe_count
    threshold = ops.where(
        ops.any(hit), ops.take(tmax, ops.minimum(first, num - 2)), default
    )
    return ops.where(present, ops.maximum(y - threshold, 0.0), ops.zeros_like(y))


def project_shifted_onto_simplex(y):
    """`project_onto_simplex(y - max(y))`: the same projection (it is
    invariant to adding a constant to every entry), robust to entries so
    large that y - tau would round to 0 in every entry (a step of size
    1e8, as SDMGrad takes on a cross-batch matrix with a negative
    diagonal). The largest entry becomes 0, so the threshold is computed
    from numbers of the size of the gaps between entries."""
    return project_onto_simplex(y - ops.max(y))
