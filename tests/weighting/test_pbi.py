"""Tests of the `PBI` scalarisation (Zhang & Li, IEEE TEVC 2007)."""

import math

import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad

import keras_mtl
from keras_mtl.weighting.pbi import PBI

pytestmark = pytest.mark.both_backends


def _value_and_gradient(strategy, losses, **kwargs):
    (value, weights), (gradient,) = value_and_grad(
        lambda x: strategy(x, **kwargs), losses
    )
    return float(value), gradient, weights


def test_registry_names_resolve():
    for name in ["pbi", "penalty_boundary_intersection", "PBI"]:
        assert isinstance(keras_mtl.weighting.get(name), PBI)


def test_torchjd_reference_values():
    """TorchJD 0.18.0 PBI(5, [1, 1]) at L = [1, 3] (and with z* = [.5, .5])."""
    value, gradient, weights = _value_and_gradient(PBI(5.0, [1.0, 1.0]), [1.0, 3.0])
    assert value == pytest.approx(9.899495, abs=1e-5)
    np.testing.assert_allclose(gradient, [-2.8284, 4.2426], atol=1e-4)
    np.testing.assert_allclose(weights, gradient, rtol=1e-6)
    shifted = PBI(5.0, [1.0, 1.0], reference=[0.5, 0.5])
    assert _value_and_gradient(shifted, [1.0, 3.0])[0] == pytest.approx(
        9.192388, abs=1e-5
    )


def test_on_the_ray_the_penalty_is_the_epsilon_and_the_gradient_the_direction():
    value, gradient, _ = _value_and_gradient(PBI(5.0, [1.0, 2.0]), [1.0, 2.0])
    assert value == pytest.approx(math.sqrt(5.0) + 5e-6, abs=1e-6)
    np.testing.assert_allclose(gradient, np.array([1.0, 2.0]) / math.sqrt(5), atol=1e-5)


def test_theta_zero_is_the_projection_and_direction_length_does_not_matter():
    losses = [0.3, 2.0, 1.1]
    direction = np.array([0.2, 0.5, 0.3])
    value, gradient, _ = _value_and_gradient(PBI(0.0, list(direction)), losses)
    unit = direction / np.linalg.norm(direction)
    assert value == pytest.approx(unit @ losses, rel=1e-6)
    np.testing.assert_allclose(gradient, unit, rtol=1e-6)
    longer = PBI(3.0, list(7 * direction))
    shorter = PBI(3.0, list(direction))
    assert _value_and_gradient(longer, losses)[0] == pytest.approx(
        _value_and_gradient(shorter, losses)[0], rel=1e-6
    )


def test_closed_form_and_default_direction():
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.1, 3, size=4)
    value, gradient, weights = _value_and_gradient(PBI(), losses)
    unit = np.ones(4) / 2.0
    d1 = unit @ losses
    d2 = np.sqrt(np.sum((losses - d1 * unit) ** 2) + 1e-12)
    assert value == pytest.approx(d1 + 5.0 * d2, rel=1e-6)
    np.testing.assert_allclose(weights, gradient, rtol=1e-5, atol=1e-6)


@tf_only
@pytest.mark.parametrize("preference", [None, [0.2, 0.5, 0.3]])
def test_absent_task_is_dropped(preference):
    assert PBI.supports_missing_tasks  # compile(missing_labels=...) accepts it
    losses, mask = checks.with_absent([1.0, 2.0, 0.5], absent=[1])
    full = PBI(2.0, preference, reference=[0.1, 0.2, 0.3])
    small = PBI(2.0, None if preference is None else [0.2, 0.3], reference=[0.1, 0.3])
    checks.assert_absent_task_is_dropped(
        full, small, mask, [losses], call=checks.loss_call, per_task=(0, 1, 1)
    )


def test_validation():
    for theta in (-1.0, float("inf"), "big", True):
        with pytest.raises(ValueError, match="theta"):
            PBI(theta=theta)
    for preference in ([-0.1, 1.0], [0.0, 0.0]):
        with pytest.raises(ValueError, match="preference"):
            PBI(preference=preference)
    with pytest.raises(ValueError, match="reference"):
        PBI(reference=[float("inf"), 0.0])
    with pytest.raises(ValueError, match="reference"):
        PBI(reference=[0.5, 0.5]).build((3,))
