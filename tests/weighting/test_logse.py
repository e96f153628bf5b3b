"""Tests of `LogSE` (Ghasemi-Naraghi, Nickabadi, Safabakhsh, J.UCS 2022)."""

import keras
import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad
from backends import compiled
from keras import ops

import keras_mtl
from keras_mtl.weighting.equal_weighting import EqualWeighting
from keras_mtl.weighting.logse import LogSE

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def test_registry_names_resolve():
    for name in ["logse", "log_se", "LogSE", "log_sum"]:
        assert isinstance(keras_mtl.weighting.get(name), LogSE)


def test_config_round_trip():
    strategy = LogSE(epsilon=1e-6)
    config = strategy.get_config()
    assert config["epsilon"] == 1e-6
    assert LogSE.from_config(config).get_config() == config
    assert not LogSE.stateful


def test_invalid_epsilon_raises():
    for epsilon in (0.0, -1e-8, float("inf"), "small", None):
        with pytest.raises(ValueError, match="epsilon"):
            LogSE(epsilon=epsilon)


def test_closed_form_objective_and_weights():
    losses = np.array([0.25, 1.0, 7.0, 0.0], np.float32)
    strategy = LogSE(epsilon=1e-3)
    total, weights = strategy(_t(losses))
    np.testing.assert_allclose(float(total), np.sum(np.log(losses + 1e-3)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(weights), 1 / (losses + 1e-3), rtol=1e-6)
    (_, weights), (grad,) = value_and_grad(strategy, losses)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)
    assert strategy.weights == []  # no state


def _two_task_gradients(strategy, scale):
    """Gradients of the strategy's objective on a tiny two-head model whose
    second task loss is multiplied by `scale` as a function of the
    parameters (equivalently its targets by sqrt(scale))."""
    rng = np.random.default_rng(0)
    x = _t(rng.normal(size=(16, 4)))
    y1 = _t(rng.normal(size=(16, 1)))
    y2 = _t(rng.normal(size=(16, 1)))
    init = keras.initializers.GlorotUniform(seed=1)
    variables = [np.asarray(init(shape)) for shape in [(4, 8), (8, 1), (8, 1)]]

    def objective(trunk, head1, head2):
        h = ops.tanh(x @ trunk)
        loss1 = ops.mean(ops.square(h @ head1 - y1))
        loss2 = scale * ops.mean(ops.square(h @ head2 - y2))
        return strategy(ops.stack([loss1, loss2]))[0]

    return value_and_grad(objective, *variables)[1]


def test_rescaling_a_task_loss_leaves_the_update_unchanged():
    base = _two_task_gradients(LogSE(), 1.0)
    scaled = _two_task_gradients(LogSE(), 100.0)
    for a, b in zip(base, scaled):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    # The check is not vacuous: equal weighting's update changes.
    ew_base = _two_task_gradients(EqualWeighting(), 1.0)
    ew_scaled = _two_task_gradients(EqualWeighting(), 100.0)
    assert not np.allclose(ew_base[0], ew_scaled[0], rtol=1e-2)


def test_degenerate_inputs_and_permutation():
    strategy = LogSE()
    for scale in (0.0, 1e-10, 1e10):
        total, weights = strategy(_t([1.0, 2.0, 3.0]) * scale)
        assert np.isfinite(np.asarray(total)) and np.all(
            np.isfinite(np.asarray(weights))
        )
    total, weights = LogSE()(_t([2.0]))
    np.testing.assert_allclose(np.asarray(weights), [0.5])
    losses = np.array([0.1, 5.0, 2.0], np.float32)
    perm = [2, 0, 1]
    _, w = strategy(_t(losses))
    _, w_p = strategy(_t(losses[perm]))
    np.testing.assert_allclose(np.asarray(w)[perm], np.asarray(w_p))


def test_eager_equals_xla_and_round_trip():
    eager = LogSE()
    compiled_strategy = LogSE.from_config(eager.get_config())

    step = compiled(lambda losses: compiled_strategy(losses))

    for losses in ([0.3, 2.0, 9.0], [1e-6, 1e6, 1.0]):
        for a, b in zip(eager(_t(losses)), step(_t(losses))):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    clone = LogSE.from_config(eager.get_config())
    clone.build((3,))
    clone.set_weights(eager.get_weights())
    for a, b in zip(eager(_t([1.0, 2.0, 3.0])), clone(_t([1.0, 2.0, 3.0]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    eager.reset_state()  # stateless: a no-op


def test_wrong_number_of_losses_raises():
    strategy = LogSE()
    strategy.build((2,))
    with pytest.raises(ValueError, match="built for 2 tasks"):
        strategy(_t([1.0]))


# --- Missing tasks ------------------------------------------------------


@tf_only
def test_missing_tasks_all_present_mask_changes_nothing():
    steps = [[0.5, 2.0, 3.0], [1e-10, 1.0, 1e10]]
    checks.assert_all_ones_mask_is_no_mask(
        LogSE, steps, call=checks.loss_call, rtol=1e-6
    )


@tf_only
def test_absent_task_is_left_out_as_if_only_present_tasks_existed():
    strategy = LogSE()
    for losses, mask in (
        ([0.5, 0.0, 3.0, 0.2], [1.0, 0.0, 1.0, 1.0]),
        ([0.0, 0.0, 7.0, 0.0], [0.0, 0.0, 1.0, 0.0]),
    ):
        [((_, weights, grad), _)] = checks.assert_absent_task_is_dropped(
            strategy,
            LogSE(),
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
    strategy = LogSE()
    strategy.build((3,))
    checks.assert_no_per_task_state(strategy, [1.0, 0.0, 1.0])


@tf_only
def test_masked_eager_equals_xla():
    cases = [
        ([1.0, 0.0, 3.0], [1.0, 0.0, 1.0]),
        ([0.0, 2.0, 0.0], [0.0, 1.0, 0.0]),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ]
    checks.assert_xla_matches_eager(LogSE, cases, call=checks.loss_call)
