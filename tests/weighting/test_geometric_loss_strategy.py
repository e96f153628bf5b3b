"""Tests of `GeometricLossStrategy` (Chennupati et al., CVPRW 2019)."""

import keras
import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad
from backends import compiled
from keras import ops

import keras_mtl
from keras_mtl.weighting.geometric_loss_strategy import GeometricLossStrategy

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _closed_form(losses):
    """Geometric mean and its derivative, in float64 numpy."""
    losses = np.asarray(losses, np.float64)
    num_tasks = losses.size
    objective = np.prod(losses) ** (1.0 / num_tasks)
    return objective, objective / (num_tasks * losses)


def test_registry_and_config_round_trip():
    for name in ["gls", "geometric", "geometric_loss", "GeometricLossStrategy"]:
        assert isinstance(keras_mtl.weighting.get(name), GeometricLossStrategy)
    assert GeometricLossStrategy.registry_name == "gls"
    strategy = GeometricLossStrategy(name="geo")
    config = strategy.get_config()
    clone = GeometricLossStrategy.from_config(config)
    assert clone.get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert isinstance(restored, GeometricLossStrategy)
    assert restored.get_config() == config


def test_closed_form():
    for losses in [[1.0, 4.0], [0.3, 2.0, 7.5], [0.01, 1.0, 100.0, 3.0, 0.5]]:
        total, weights = GeometricLossStrategy()(_t(losses))
        expected_total, expected_weights = _closed_form(losses)
        np.testing.assert_allclose(float(total), expected_total, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(weights), expected_weights, rtol=1e-5)


def test_weights_are_the_derivative_of_the_objective():
    (_, weights), (grad,) = value_and_grad(GeometricLossStrategy(), [0.2, 1.5, 9.0])
    np.testing.assert_allclose(grad, weights, rtol=1e-5)


def test_single_task_is_the_loss_itself():
    total, weights = GeometricLossStrategy()(_t([3.5]))
    np.testing.assert_allclose(float(total), 3.5, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(weights), [1.0], rtol=1e-6)


def test_permutation_equivariance():
    losses = np.array([0.5, 3.0, 1.2, 8.0], np.float32)
    perm = np.array([2, 0, 3, 1])
    strategy = GeometricLossStrategy()
    total, weights = strategy(_t(losses))
    total_p, weights_p = strategy(_t(losses[perm]))
    np.testing.assert_allclose(float(total_p), float(total), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(weights_p), np.asarray(weights)[perm], rtol=1e-6
    )


def _tiny_problem():
    """A 2-task model: shared dense trunk, one linear head per task."""
    rng = np.random.default_rng(0)
    x = _t(rng.normal(size=(16, 3)))
    y1 = _t(rng.normal(size=(16, 1)))
    y2 = _t(rng.normal(size=(16, 1)))
    trunk = keras.layers.Dense(4, activation="tanh")
    head1, head2 = keras.layers.Dense(1), keras.layers.Dense(1)
    for layer, shape in ((trunk, (None, 3)), (head1, (None, 4)), (head2, (None, 4))):
        layer.build(shape)
    variables = [*trunk.trainable_variables, *head1.trainable_variables]
    variables += head2.trainable_variables

    def task_losses(scale):
        z = trunk(x)
        l1 = ops.mean((head1(z) - y1) ** 2)
        l2 = ops.mean((head2(z) - y2) ** 2)
        return ops.stack([l1, scale * l2])

    return task_losses, variables


def _flat_gradient(objective, variables):
    _, grads = value_and_grad(objective, variables=variables)
    return np.concatenate([g.ravel() for g in grads])


def test_scaling_one_loss_only_rescales_the_gradient():
    # (prod L)^(1/T) with L_2 -> c L_2 is c^(1/T) times the objective, so the
    # model gradient is multiplied by c^(1/2) for T = 2 and keeps its direction.
    task_losses, variables = _tiny_problem()
    strategy = GeometricLossStrategy()
    base = _flat_gradient(lambda: strategy(task_losses(1.0))[0], variables)
    scaled = _flat_gradient(lambda: strategy(task_losses(100.0))[0], variables)
    np.testing.assert_allclose(scaled, 10.0 * base, rtol=1e-4, atol=1e-7)
    # Equal weighting does not have this property (the test can fail).
    g_base = _flat_gradient(lambda: ops.sum(task_losses(1.0)), variables)
    g_scaled = _flat_gradient(lambda: ops.sum(task_losses(100.0)), variables)
    cosine = g_base @ g_scaled / np.linalg.norm(g_base) / np.linalg.norm(g_scaled)
    assert cosine < 0.999


def test_degenerate_losses_give_finite_results():
    cases = [
        [0.0, 1.0],
        [1e-10, 1e10],
        [1e10, 1e10, 1e10],
        [1e-12] * 4,
        [1e3] * 50,  # the raw product (1e150) overflows float32
    ]
    for losses in cases:
        total, weights = GeometricLossStrategy()(_t(losses))
        assert np.isfinite(float(total))
        assert np.all(np.isfinite(np.asarray(weights)))
        if min(losses) > 0:
            expected_total, expected_weights = _closed_form(losses)
            np.testing.assert_allclose(float(total), expected_total, rtol=1e-4)
            np.testing.assert_allclose(np.asarray(weights), expected_weights, rtol=1e-4)


def test_zero_loss_gets_the_dominant_weight():
    total, weights = GeometricLossStrategy()(_t([0.0, 2.0]))
    assert float(total) < 1e-10
    assert np.asarray(weights)[0] > 1e10
    assert np.asarray(weights)[1] < 1e-10


def test_eager_and_xla_agree():
    strategy = GeometricLossStrategy()
    losses = _t([0.4, 2.5, 11.0])
    eager = strategy(losses)
    in_xla = compiled(lambda x: strategy(x))(losses)
    for a, b in zip(eager, in_xla):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_stateless_round_trip_and_reset():
    strategy = GeometricLossStrategy()
    strategy.build((3,))
    assert not GeometricLossStrategy.stateful
    assert strategy.weights == []
    clone = GeometricLossStrategy.from_config(strategy.get_config())
    clone.build((3,))
    clone.set_weights(strategy.get_weights())
    losses = _t([1.0, 2.0, 3.0])
    for a, b in zip(strategy(losses), clone(losses)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    strategy.reset_state()  # nothing to reset; must not raise


def test_wrong_number_of_tasks_raises():
    strategy = GeometricLossStrategy()
    strategy(_t([1.0, 2.0]))
    with pytest.raises(ValueError, match="2 tasks"):
        strategy(_t([1.0, 2.0, 3.0]))


# --- Missing tasks ------------------------------------------------------


@tf_only
def test_missing_tasks_all_present_mask_changes_nothing():
    steps = [[0.5, 2.0, 3.0], [1e-10, 1.0, 1e10]]
    checks.assert_all_ones_mask_is_no_mask(
        GeometricLossStrategy, steps, call=checks.loss_call, rtol=1e-6
    )


@tf_only
def test_absent_task_is_left_out_as_if_only_present_tasks_existed():
    strategy = GeometricLossStrategy()
    for losses, mask in (
        ([0.5, 0.0, 3.0, 0.2], [1.0, 0.0, 1.0, 1.0]),
        ([0.0, 0.0, 7.0, 0.0], [0.0, 0.0, 1.0, 0.0]),
    ):
        [((_, weights, grad), _)] = checks.assert_absent_task_is_dropped(
            strategy,
            GeometricLossStrategy(),
            mask,
            [losses],
            call=checks.loss_call,
            per_task=(False, True, True),
        )
        np.testing.assert_allclose(grad, weights, rtol=1e-6)
    # No task present: zero objective, finite zero weights and gradients.
    for value in checks.loss_call(strategy, [0.0] * 4, _t([0.0] * 4)):
        np.testing.assert_array_equal(value, 0.0)


@tf_only
def test_missing_tasks_no_per_task_state():
    strategy = GeometricLossStrategy()
    strategy.build((3,))
    checks.assert_no_per_task_state(strategy, [1.0, 0.0, 1.0])


@tf_only
def test_masked_eager_equals_xla():
    cases = [
        ([1.0, 0.0, 3.0], [1.0, 0.0, 1.0]),
        ([0.0, 2.0, 0.0], [0.0, 1.0, 0.0]),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ]
    checks.assert_xla_matches_eager(GeometricLossStrategy, cases, call=checks.loss_call)
