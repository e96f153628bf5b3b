"""Degenerate-input checks shared by UPGrad and DualProj, the two
projections onto the dual cone of the (regularised) Gramian: the same
claims (non-conflict up to the regulariser's bound, positive homogeneity)
and the same `eps_mode` option."""

from __future__ import annotations

import aggregator_properties as degenerate_checks
import degenerate_inputs
import numpy as np
import pytest

from keras_mtl.weighting._solver_ops import solver_dtype

# Where the solver is float32 (JAX without x64), the weights of a singular
# Gramian (conditioned by reg_eps = 1e-4 only) are accurate to about 1e-2
# relative: the permutation check then compares the updates, not the weights.
_PERMUTE_WEIGHTS = solver_dtype() == "float64"

# Non-conflicting up to the regulariser's bound; with the default (TorchJD's
# absolute norm_eps) only while trace(G G^T) >= norm_eps, so not for the tiny
# kinds; positively homogeneous while the scaled trace stays above norm_eps.
_SMALL_KINDS = ("tiny", "small", "mixed_scales")


def check_degenerate_inputs(cls, shape):
    """The default (absolute) mode on the degenerate family of `shape`."""
    slack = degenerate_checks.regularised_gramian_slack(1e-4)
    degenerate_checks.check_cases(
        cls,
        degenerate_inputs.degenerate_cases(shapes=[shape]),
        lambda case: {
            "rtol": 1e-4,
            "permute_weights": _PERMUTE_WEIGHTS,
            "homogeneous": case.kind not in _SMALL_KINDS,
            "factors": (2.0**10,),
            "non_conflicting": case.kind not in ("tiny", "small"),
            "conflict_slack": slack,
        },
    )


def check_degenerate_inputs_relative_eps(cls, shape):
    """With eps_mode="relative" the update is non-conflicting and
    positively homogeneous at every scale, gradients of norm 1e-15 and
    1e-5 included (scaled by 2^-3 and 2^10: at 2^-10 the float32 Gramian
    of the 1e-15 rows is subnormal)."""
    slack = degenerate_checks.regularised_gramian_slack(1e-4)
    cases = degenerate_inputs.degenerate_cases(
        kinds=("zeros", "rank_one_signed", "opposed", "tiny", "small", "mixed_scales"),
        shapes=[shape],
    )
    degenerate_checks.check_cases(
        lambda: cls(eps_mode="relative"),
        cases,
        lambda case: {
            "rtol": 1e-4,
            "permutation": False,
            "homogeneous": True,
            "factors": (2.0**-3, 2.0**10),
            "non_conflicting": True,
            "conflict_slack": slack,
        },
    )


def check_eps_mode_is_validated_and_round_trips(cls):
    with pytest.raises(ValueError, match="eps_mode"):
        cls(eps_mode="trace")
    strategy = cls(eps_mode="relative")
    assert strategy.get_config()["eps_mode"] == "relative"
    assert cls.from_config(strategy.get_config()).eps_mode == "relative"


def check_relative_eps_keeps_small_gradients_non_conflicting(cls):
    """Gradients of norm 1e-5: TorchJD's absolute norm_eps zeroes the
    Gramian and returns the mean, which conflicts with a task; the relative
    mode returns the update of the same gradients scaled by 1e5, scaled
    back (exactly: the scalings are powers of two)."""
    rows = np.array([[1.0, 0.0, 0.1], [-0.9, 0.2, 0.0]], np.float32)
    small = rows * np.float32(2.0**-17)
    absolute = degenerate_checks.aggregate(cls, small)[0]
    relative = degenerate_checks.aggregate(lambda: cls(eps_mode="relative"), small)[0]
    unit = degenerate_checks.aggregate(cls, rows)[0]
    assert np.min(small.astype(np.float64) @ absolute) < 0.0
    np.testing.assert_allclose(absolute, small.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(relative, unit * 2.0**-17, rtol=1e-6)
