"""A reusable family of degenerate per-task gradient matrices.

Gradient aggregators meet inputs that break naive solvers: tasks that are
duplicates, exactly opposed, orders of magnitude apart, zero, and many.
`degenerate_cases()` lists `(T, P)` float32 matrices of such kinds, for
several numbers of tasks T (2 to 40) and of parameters P (some with T > P,
where the Gramian is singular whatever the rows), each identified by a
readable id for `pytest.mark.parametrize`. `aggregator_properties` holds
the checks applied to them.

Every matrix is a deterministic function of its kind and shape (a fixed
seed per case), so a failure is reproduced by its id alone.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

#: Numbers of tasks and parameters exercised: T from 1 to 40, both T <= P
#: (the Gramian may be definite) and T > P (it is always singular).
SHAPES = ((1, 7), (2, 7), (3, 50), (20, 11), (40, 50))


@dataclasses.dataclass(frozen=True)
class DegenerateCase:
    """One degenerate input: its kind, shape and `(T, P)` float32 matrix."""

    kind: str
    matrix: np.ndarray

    @property
    def num_tasks(self) -> int:
        return self.matrix.shape[0]

    @property
    def id(self) -> str:
        num_tasks, num_params = self.matrix.shape
        return f"{self.kind}-T{num_tasks}-P{num_params}"


def _rng(kind, num_tasks, num_params):
    return np.random.default_rng(
        zlib.crc32(f"{kind}/{num_tasks}/{num_params}".encode())
    )


def _zeros(rng, t, p):
    return np.zeros((t, p))


def _rank_one(rng, t, p):
    # Positive multiples of one vector: every pair is aligned (CAGrad's
    # inner solver once failed on this Gramian at T = 20).
    return rng.uniform(0.5, 2.0, size=(t, 1)) * rng.normal(size=(1, p))


def _rank_one_signed(rng, t, p):
    # Multiples of one vector with alternating signs: aligned and exactly
    # opposed pairs at once.
    signs = np.where(np.arange(t) % 2 == 0, 1.0, -1.0)[:, None]
    return signs * rng.uniform(0.5, 2.0, size=(t, 1)) * rng.normal(size=(1, p))


def _rank_deficient(rng, t, p):
    rank = max(1, min(t, p) // 2)
    return rng.normal(size=(t, rank)) @ rng.normal(size=(rank, p))


def _duplicated(rng, t, p):
    distinct = max(1, t // 2)
    base = rng.normal(size=(distinct, p))
    return base[np.arange(t) % distinct]


def _opposed(rng, t, p):
    # Rows 2i and 2i+1 are exactly opposed; with T odd the last row is free.
    base = rng.normal(size=(t // 2, p))
    rows = np.stack([base, -base], axis=1).reshape(-1, p)
    if t % 2:
        rows = np.concatenate([rows, rng.normal(size=(1, p))])
    return rows


def _one_zero_row(rng, t, p):
    rows = rng.normal(size=(t, p))
    rows[t // 2] = 0.0
    return rows


def _tiny(rng, t, p):
    return 1e-15 * rng.normal(size=(t, p))


def _small(rng, t, p):
    # Gradients of norm about 1e-5: the Gramian's trace is far below
    # TorchJD's absolute norm_eps = 1e-4.
    rows = rng.normal(size=(t, p))
    return 1e-5 * rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _huge(rng, t, p):
    return 1e15 * rng.normal(size=(t, p))


def _mixed_scales(rng, t, p):
    # Row norms spread log-uniformly from 1e-15 to 1e15, in a shuffled
    # order.
    scales = 10.0 ** rng.permutation(np.linspace(-15.0, 15.0, t))
    return scales[:, None] * rng.normal(size=(t, p))


KINDS = {
    "zeros": _zeros,
    "rank_one": _rank_one,
    "rank_one_signed": _rank_one_signed,
    "rank_deficient": _rank_deficient,
    "duplicated": _duplicated,
    "opposed": _opposed,
    "one_zero_row": _one_zero_row,
    "tiny": _tiny,
    "small": _small,
    "huge": _huge,
    "mixed_scales": _mixed_scales,
}


def make_case(kind: str, num_tasks: int, num_params: int) -> DegenerateCase:
    """The case of `kind` (a key of `KINDS`) with shape `(T, P)`."""
    rows = KINDS[kind](_rng(kind, num_tasks, num_params), num_tasks, num_params)
    return DegenerateCase(kind, np.asarray(rows, np.float32))


def degenerate_cases(kinds=None, shapes=SHAPES) -> list[DegenerateCase]:
    """Every kind (or those named) at every shape of `shapes`."""
    kinds = list(KINDS) if kinds is None else list(kinds)
    return [make_case(kind, t, p) for t, p in shapes for kind in kinds]


def case_params(kinds=None, shapes=SHAPES):
    """`pytest.param`s of `degenerate_cases`, with their ids."""
    import pytest

    return [pytest.param(c, id=c.id) for c in degenerate_cases(kinds, shapes)]
