"""Tests of `UncertaintyWeighting` (Kendall, Gal, Cipolla, CVPR 2018)."""

import functools

import missing_task_checks as checks
import numpy as np
import pytest
import tensorflow as tf
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.uncertainty_weighting import UncertaintyWeighting

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _built(num_tasks=2, **kwargs):
    strategy = UncertaintyWeighting(**kwargs)
    strategy.build((num_tasks,))
    return strategy


def test_registry_names_resolve():
    for name in ["uw", "uncertainty", "Uncertainty_Weighting"]:
        strategy = keras_mtl.weighting.get(name)
        assert isinstance(strategy, UncertaintyWeighting)
        assert UncertaintyWeighting.registry_name == "uw"


def test_config_round_trip():
    strategy = UncertaintyWeighting(
        task_types=["regression", "classification"], init=[0.1, -0.2]
    )
    config = strategy.get_config()
    assert config["task_types"] == ["regression", "classification"]
    assert config["init"] == [0.1, -0.2]
    clone = UncertaintyWeighting.from_config(config)
    assert clone.get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert restored.get_config() == config


def test_default_matches_libmtl_convention():
    # LibMTL/weighting/UW.py: loss = sum(L / (2 exp(s)) + s / 2), s0 = -0.5,
    # reported weights 1 / (2 exp(s)).
    strategy = UncertaintyWeighting()
    losses = np.array([0.7, 2.0, 13.0], np.float32)
    total, weights = strategy(_t(losses))
    s = -0.5
    expected = np.sum(losses / (2 * np.exp(s)) + s / 2)
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(weights), [1 / (2 * np.exp(s))] * 3, rtol=1e-6
    )
    assert len(strategy.trainable_weights) == 1
    np.testing.assert_allclose(np.asarray(strategy.log_variances), [-0.5] * 3)


def test_classification_and_regression_forms():
    strategy = UncertaintyWeighting(
        task_types=["classification", "regression"], init=[0.3, -1.0]
    )
    losses = np.array([2.0, 5.0], np.float32)
    total, weights = strategy(_t(losses))
    s = np.array([0.3, -1.0])
    expected_terms = [
        np.exp(-s[0]) * losses[0] + 0.5 * s[0],
        0.5 * np.exp(-s[1]) * losses[1] + 0.5 * s[1],
    ]
    np.testing.assert_allclose(float(total), sum(expected_terms), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(weights), [np.exp(-s[0]), 0.5 * np.exp(-s[1])], rtol=1e-6
    )


def test_weights_are_the_derivative_of_the_objective():
    strategy = UncertaintyWeighting(
        task_types=["classification", "regression", "regression"], init=[0.2, 1.0, -2]
    )
    strategy.build((3,))
    losses = [0.5, 3.0, 0.01]
    scales = [strategy.log_variances]
    (_, weights), (grad, grad_s) = value_and_grad(strategy, losses, variables=scales)
    np.testing.assert_allclose(grad, weights, rtol=1e-6)
    # The weights carry no gradient; the objective does reach s.
    _, (_, probe_s) = value_and_grad(
        lambda x: ops.sum(strategy(x)[1]), losses, variables=scales
    )
    np.testing.assert_array_equal(probe_s, 0.0)
    s = np.array([0.2, 1.0, -2.0])
    c = np.array([1.0, 0.5, 0.5])
    np.testing.assert_allclose(
        grad_s, -c * np.exp(-s) * np.asarray(losses) + 0.5, rtol=1e-5
    )


@tf_only
@pytest.mark.parametrize(
    "task_type, factor", [("regression", 1.0), ("classification", 2.0)]
)
def test_optimising_s_reaches_the_closed_form(task_type, factor):
    # Frozen losses, plain gradient descent on s only: the optimum is
    # exp(s_t) = L_t (regression) or 2 L_t (classification), where the
    # effective weight is 1 / (2 L_t) in both cases.
    losses = _t([0.2, 1.0, 4.0])
    strategy = _built(3, task_types=[task_type] * 3)

    @tf.function
    def optimise(steps, learning_rate):
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                total, _ = strategy(losses)
            grad = tape.gradient(total, strategy.log_variances)
            strategy.log_variances.assign_sub(learning_rate * grad)
        return strategy(losses)

    _, weights = optimise(tf.constant(400), tf.constant(0.2))
    np.testing.assert_allclose(
        np.exp(np.asarray(strategy.log_variances)),
        factor * np.asarray(losses),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        np.asarray(weights), 1 / (2 * np.asarray(losses)), rtol=1e-4
    )


def test_dict_task_types_follow_model_task_names():
    strategy = UncertaintyWeighting(
        task_types={"seg": "classification", "depth": "regression"}, init=0.0
    )
    with pytest.raises(ValueError, match="task names"):
        strategy.build((2,))
    strategy = UncertaintyWeighting(
        task_types={"seg": "classification", "depth": "regression"}, init=0.0
    )
    strategy.set_task_names(["depth", "seg"])
    _, weights = strategy(_t([1.0, 1.0]))
    np.testing.assert_allclose(np.asarray(weights), [0.5, 1.0])
    bad = UncertaintyWeighting(task_types={"seg": "classification"})
    with pytest.raises(ValueError, match="missing"):
        bad.set_task_names(["seg", "depth"])


_INVALID_ARGUMENTS = [
    ({"task_types": ["regression", "ranking"]}, "task_types"),
    ({"task_types": "regression"}, "task_types"),
    ({"task_types": []}, "task_types"),
    ({"init": float("nan")}, "init"),
    ({"init": "zero"}, "init"),
    ({"init": []}, "init"),
]


def test_invalid_arguments_raise():
    for kwargs, match in _INVALID_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            UncertaintyWeighting(**kwargs)


def test_length_mismatch_raises_at_build():
    with pytest.raises(ValueError, match="task_types"):
        _built(3, task_types=["regression", "classification"])
    with pytest.raises(ValueError, match="init"):
        _built(3, init=[0.0, 1.0])
    strategy = UncertaintyWeighting(task_types=["regression"])
    with pytest.raises(ValueError, match="task_types"):
        strategy.set_task_names(["a", "b"])


@tf_only
def test_eager_equals_xla():
    make = functools.partial(
        _built, 3, task_types=["regression", "classification", "regression"]
    )
    cases = [(_t(losses), None) for losses in ([1.0, 2.0, 3.0], [0.1, 1e3, 1e-4])]
    checks.assert_xla_matches_eager(make, cases)


@tf_only
def test_state_round_trip_and_reset():
    strategy = _built(2, init=[0.0, 0.5])
    strategy.log_variances.assign([1.5, -2.0])
    checks.assert_state_round_trip(strategy, [_t([0.3, 7.0])])
    strategy.reset_state()
    np.testing.assert_array_equal(np.asarray(strategy.log_variances), [0.0, 0.5])
    assert UncertaintyWeighting.stateful


def test_training_flag_does_not_change_state():
    strategy = _built(2)
    before = np.asarray(strategy.log_variances).copy()
    strategy(_t([1.0, 2.0]), training=True)
    strategy(_t([1.0, 2.0]), training=False)
    np.testing.assert_array_equal(np.asarray(strategy.log_variances), before)


def test_permutation_equivariance_and_degenerate_inputs():
    strategy = UncertaintyWeighting(
        task_types=["regression", "classification", "regression"], init=[0.1, 0.2, 0.3]
    )
    permuted = UncertaintyWeighting(
        task_types=["regression", "regression", "classification"], init=[0.3, 0.1, 0.2]
    )
    losses = np.array([1.0, 2.0, 3.0], np.float32)
    perm = [2, 0, 1]
    total, weights = strategy(_t(losses))
    total_p, weights_p = permuted(_t(losses[perm]))
    np.testing.assert_allclose(float(total), float(total_p), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(weights)[perm], np.asarray(weights_p), rtol=1e-6
    )

    single = UncertaintyWeighting()
    total, weights = single(_t([2.0]))
    assert weights.shape == (1,)
    for scale in (0.0, 1e-10, 1e10):
        total, weights = strategy(_t(losses * scale))
        assert np.isfinite(np.asarray(total)) and np.all(
            np.isfinite(np.asarray(weights))
        )


def test_wrong_number_of_losses_raises():
    strategy = _built(2)
    with pytest.raises(ValueError, match="built for 2 tasks"):
        strategy(_t([1.0, 2.0, 3.0]))


# --- Missing tasks ------------------------------------------------------

_TYPES = ["regression", "classification", "regression"]
_INIT = [0.1, -0.3, 0.7]
_call = functools.partial(checks.loss_call, wrt=("log_variances",))


@tf_only
def test_missing_tasks_all_present_mask_changes_nothing():
    make = functools.partial(_built, 3, task_types=_TYPES, init=_INIT)
    checks.assert_all_ones_mask_is_no_mask(make, [[0.5, 2.0, 3.0]], call=_call)


@tf_only
def test_absent_task_is_left_out_as_if_only_present_tasks_existed():
    strategy = _built(3, task_types=_TYPES, init=_INIT)
    present_only = _built(
        2, task_types=[_TYPES[0], _TYPES[2]], init=[_INIT[0], _INIT[2]]
    )
    checks.assert_absent_task_is_dropped(
        strategy,
        present_only,
        [1.0, 0.0, 1.0],
        [[0.5, 0.0, 3.0]],
        call=_call,
        per_task=(False, True, True, True),
    )
    # Without the mask the absent task's regulariser 0.5 * s would remain.
    assert _call(strategy, [0.5, 0.0, 3.0])[3][1] == 0.5
    # No task present: a zero objective, finite and zero gradients.
    for value in _call(strategy, [0.0, 0.0, 0.0], _t([0.0, 0.0, 0.0])):
        np.testing.assert_array_equal(value, 0.0)


@tf_only
def test_absent_task_log_variance_is_restored_after_an_optimizer_step():
    strategy = _built(3, task_types=_TYPES, init=_INIT)
    # Adam gathers momentum in a step with every task, then task 1 is absent.
    checks.assert_restore_undoes_optimizer_steps(
        strategy,
        "log_variances",
        [([1.0, 2.0, 3.0], [1.0] * 3), ([1.0, 0.0, 3.0], [1.0, 0.0, 1.0])],
    )
    assert [axis for _, axis in strategy.per_task_state()] == [0]


@tf_only
def test_masked_eager_equals_xla():
    cases = [
        ([1.0, 0.0, 3.0], [1.0, 0.0, 1.0]),
        ([0.0, 2.0, 0.0], [0.0, 1.0, 0.0]),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ]
    make = functools.partial(_built, 3, task_types=_TYPES, init=_INIT)
    checks.assert_xla_matches_eager(make, cases, call=_call)
