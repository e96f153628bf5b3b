"""Tests of the `COSMOS` scalarisation (Ruchte & Grabocka, ICDM 2021)."""

import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad

import keras_mtl
from keras_mtl.weighting.cosmos import COSMOS

pytestmark = pytest.mark.both_backends


def _value_and_gradient(strategy, losses, **kwargs):
    (value, weights), (gradient,) = value_and_grad(
        lambda x: strategy(x, **kwargs), losses
    )
    return float(value), gradient, weights


def test_registry_name_resolves():
    assert isinstance(keras_mtl.weighting.get("cosmos"), COSMOS)


def test_torchjd_reference_value_and_gradient():
    """TorchJD 0.18.0 COSMOS(2, [.2, .3, .5]) at L = [1, 2, 3]."""
    strategy = COSMOS(lambda_=2.0, preference=[0.2, 0.3, 0.5])
    value, gradient, weights = _value_and_gradient(strategy, [1.0, 2.0, 3.0])
    assert value == pytest.approx(0.305647, abs=1e-6)
    np.testing.assert_allclose(gradient, [0.1690, 0.3248, 0.4938], atol=1e-4)
    np.testing.assert_allclose(weights, gradient, rtol=1e-5)


def test_closed_form_on_random_losses():
    rng = np.random.default_rng(0)
    losses, ray = rng.uniform(0.1, 3, size=4), rng.dirichlet(np.ones(4))
    cosine = ray @ losses / np.linalg.norm(ray) / np.linalg.norm(losses)
    strategy = COSMOS(lambda_=0.7, preference=list(ray))
    value, gradient, weights = _value_and_gradient(strategy, losses)
    assert value == pytest.approx(ray @ losses - 0.7 * cosine, rel=1e-6)
    np.testing.assert_allclose(weights, gradient, rtol=1e-5, atol=1e-7)


def test_lambda_zero_is_the_linear_scalarisation():
    value, gradient, _ = _value_and_gradient(COSMOS(0.0, [0.2, 0.8]), [3.0, 1.0])
    assert value == pytest.approx(0.2 * 3.0 + 0.8 * 1.0)
    np.testing.assert_allclose(gradient, [0.2, 0.8], rtol=1e-6)


def test_losses_parallel_to_the_ray_have_gradient_r():
    ray = [0.2, 0.3, 0.5]
    value, gradient, _ = _value_and_gradient(COSMOS(8.0, ray), [0.4, 0.6, 1.0])
    assert value == pytest.approx(np.dot(ray, [0.4, 0.6, 1.0]) - 8.0, rel=1e-6)
    np.testing.assert_allclose(gradient, ray, atol=1e-5)


def test_cosine_term_is_invariant_to_the_scale_of_the_losses():
    strategy = COSMOS(2.0, [0.1, 0.6, 0.3])
    losses = np.array([1.0, 0.2, 4.0])
    penalties = []
    for scale in (1.0, 10.0, 1e-3):
        value, _, _ = _value_and_gradient(strategy, scale * losses)
        penalties.append(value - scale * np.dot([0.1, 0.6, 0.3], losses))
    np.testing.assert_allclose(penalties, [penalties[0]] * 3, rtol=1e-5)


def test_default_ray_is_the_centre_of_the_simplex():
    value, _, _ = _value_and_gradient(COSMOS(lambda_=1.0), [1.0, 1.0, 1.0, 1.0])
    assert value == pytest.approx(1.0 - 1.0)


def test_zero_losses_give_finite_gradients():
    _, gradient, weights = _value_and_gradient(COSMOS(), [0.0, 0.0])
    assert np.all(np.isfinite(gradient)) and np.all(np.isfinite(weights))


@tf_only
@pytest.mark.parametrize("preference", [None, [0.2, 0.5, 0.3]])
def test_absent_task_is_dropped(preference):
    assert COSMOS.supports_missing_tasks  # compile(missing_labels=...) accepts it
    losses, mask = checks.with_absent([1.0, 2.0, 0.5], absent=[1])
    full = COSMOS(1.5, preference)
    small = COSMOS(1.5, None if preference is None else [0.2, 0.3])
    checks.assert_absent_task_is_dropped(
        full, small, mask, [losses], call=checks.loss_call, per_task=(0, 1, 1)
    )


def test_validation():
    for lambda_ in (-1.0, float("inf"), "big", True):
        with pytest.raises(ValueError, match="lambda_"):
            COSMOS(lambda_=lambda_)
    for preference in ([-0.1, 1.0], [0.0, 0.0], "ab", [float("nan"), 1]):
        with pytest.raises(ValueError, match="preference"):
            COSMOS(preference=preference)
    with pytest.raises(ValueError, match="preference"):
        COSMOS(preference=[0.5, 0.5]).build((3,))
