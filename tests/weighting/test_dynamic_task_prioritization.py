"""Tests of `DynamicTaskPrioritization` (Guo et al., ECCV 2018)."""

import functools

import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.dynamic_task_prioritization import (
    DynamicTaskPrioritization,
)

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _focal(kappa, gamma=1.0, lo=1e-3, hi=0.99):
    k = np.clip(np.asarray(kappa, np.float64), lo, hi)
    return -((1 - k) ** gamma) * np.log(k)


def test_registry_names_resolve():
    for name in ["dtp", "dynamic_task_prioritization"]:
        strategy = keras_mtl.weighting.get(name)
        assert isinstance(strategy, DynamicTaskPrioritization)
        assert strategy.kpi_metric == "accuracy"


def test_config_round_trip_and_kpi_metric():
    strategy = DynamicTaskPrioritization(
        kpi="auc",
        gamma=[1.0, 2.0],
        alpha=0.5,
        epsilon=0.1,
        max_kpi=1.0,
        warmup_steps=3,
    )
    assert strategy.kpi_metric == "auc"
    assert DynamicTaskPrioritization.kpi_metric is None  # class default untouched
    config = strategy.get_config()
    clone = DynamicTaskPrioritization.from_config(config)
    assert clone.get_config() == config
    assert clone.kpi_metric == "auc"
    assert config["gamma"] == [1.0, 2.0] and config["warmup_steps"] == 3


_INVALID_ARGUMENTS = [
    ({"kpi": None}, "kpi"),
    ({"kpi": ""}, "kpi"),
    ({"gamma": -1.0}, "gamma"),
    ({"gamma": []}, "gamma"),
    ({"gamma": "x"}, "gamma"),
    ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.5}, "alpha"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"epsilon": 0.995}, "epsilon"),
    ({"max_kpi": 1.5}, "max_kpi"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"warmup_steps": 2.5}, "warmup_steps"),
]


def test_invalid_arguments_raise():
    for kwargs, match in _INVALID_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            DynamicTaskPrioritization(**kwargs)


def test_missing_kpis_raise_a_clear_error():
    strategy = DynamicTaskPrioritization()
    with pytest.raises(ValueError, match="kpis=.*'accuracy'"):
        strategy(_t([1.0, 2.0]))
    strategy = DynamicTaskPrioritization()
    with pytest.raises(ValueError, match="kpis"):
        strategy(_t([1.0, 2.0]), kpis=_t([0.5, 0.5, 0.5]))


def test_closed_form_weights_and_objective():
    strategy = DynamicTaskPrioritization(alpha=1.0, gamma=[1.0, 2.0, 0.5])
    kappa = [0.3, 0.6, 0.95]
    losses = _t([2.0, 1.0, 3.0])
    total, weights = strategy(losses, kpis=_t(kappa))
    expected = _focal(kappa, gamma=np.array([1.0, 2.0, 0.5]))
    np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-5)
    np.testing.assert_allclose(float(total), expected @ [2.0, 1.0, 3.0], rtol=1e-5)
    (_, weights), (grad,) = value_and_grad(
        lambda x: strategy(x, kpis=_t(kappa)), losses, layers=[strategy]
    )
    np.testing.assert_allclose(grad, weights)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_weight_decreases_with_kpi_and_vanishes_at_one(gamma):
    kappa = np.linspace(0.0, 1.0, 41)
    strategy = DynamicTaskPrioritization(alpha=1.0, gamma=gamma, max_kpi=1.0)
    _, weights = strategy(_t(np.ones(41)), kpis=_t(kappa))
    w = np.asarray(weights)
    assert np.all(np.diff(w) < 0)
    assert w[-1] == 0.0
    assert w[-2] < w[0] * 0.05
    clipped = DynamicTaskPrioritization(alpha=1.0, gamma=gamma)
    _, weights = clipped(_t([1.0, 1.0]), kpis=_t([0.0, 1.0]))
    np.testing.assert_allclose(
        np.asarray(weights), _focal([0.0, 1.0], gamma), rtol=1e-5
    )
    assert 0 < np.asarray(weights)[1] < 2e-3 and np.isfinite(np.asarray(weights)[0])


def test_kpi_ema_matches_numpy():
    alpha = 0.3
    strategy = DynamicTaskPrioritization(alpha=alpha, gamma=2.0)
    rng = np.random.default_rng(0)
    kpis = rng.uniform(0.0, 1.0, size=(6, 3))
    average = None
    for kappa in kpis:
        average = kappa if average is None else alpha * kappa + (1 - alpha) * average
        _, weights = strategy(_t([1.0, 1.0, 1.0]), kpis=_t(kappa))
        np.testing.assert_allclose(np.asarray(weights), _focal(average, 2.0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(strategy.kpi_average), average, rtol=1e-6)


def test_warmup_and_training_flag():
    strategy = DynamicTaskPrioritization(alpha=0.5, warmup_steps=2)
    for _ in range(2):
        _, weights = strategy(_t([1.0, 1.0]), kpis=_t([0.2, 0.8]))
        np.testing.assert_array_equal(np.asarray(weights), [1.0, 1.0])
    _, weights = strategy(_t([1.0, 1.0]), kpis=_t([0.2, 0.8]))
    np.testing.assert_allclose(np.asarray(weights), _focal([0.2, 0.8]), rtol=1e-5)
    before = [np.asarray(v).copy() for v in strategy.weights]
    _, weights = strategy(_t([1.0, 1.0]), kpis=_t([0.9, 0.1]), training=False)
    # Evaluation sees the would-be average but does not store it.
    np.testing.assert_allclose(np.asarray(weights), _focal([0.55, 0.45]), rtol=1e-5)
    for b, v in zip(before, strategy.weights):
        np.testing.assert_array_equal(b, np.asarray(v))


def _call(strategy, losses, kpis, task_mask=None):
    return checks.default_call(strategy, losses, kpis=kpis, task_mask=task_mask)


@tf_only
def test_eager_equals_xla():
    make = functools.partial(
        DynamicTaskPrioritization, alpha=0.4, warmup_steps=1, gamma=[1.0, 2.0, 1.5]
    )
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(5):
        losses = _t(rng.uniform(0.1, 3.0, 3))
        cases.append(((losses, _t(rng.uniform(0.0, 1.0, 3))), None))
    checks.assert_xla_matches_eager(make, cases, call=_call)


@tf_only
def test_state_round_trip_and_reset():
    strategy = DynamicTaskPrioritization(alpha=0.2)
    for kappa in ([0.1, 0.5], [0.3, 0.6], [0.5, 0.7]):
        strategy(_t([1.0, 1.0]), kpis=_t(kappa))
    steps = [(_t([1.0, 2.0]), _t(kappa)) for kappa in ([0.6, 0.7], [0.65, 0.9])]
    checks.assert_state_round_trip(strategy, steps, call=_call)
    strategy.reset_state()
    assert all(not np.any(np.asarray(v)) for v in strategy.weights)
    # After a reset the first KPI initialises the average again.
    _, weights = strategy(_t([1.0, 1.0]), kpis=_t([0.9, 0.9]))
    np.testing.assert_allclose(np.asarray(weights), _focal([0.9, 0.9]), rtol=1e-5)


def test_permutation_equivariance_and_degenerate_inputs():
    strategy = DynamicTaskPrioritization(alpha=1.0)
    losses = np.array([1.0, 2.0, 3.0], np.float32)
    kappa = np.array([0.2, 0.5, 0.7], np.float32)
    perm = [1, 2, 0]
    _, w = strategy(_t(losses), kpis=_t(kappa))
    _, w_p = strategy(_t(losses[perm]), kpis=_t(kappa[perm]))
    np.testing.assert_allclose(np.asarray(w)[perm], np.asarray(w_p), rtol=1e-6)
    single = DynamicTaskPrioritization(alpha=1.0)
    _, w = single(_t([5.0]), kpis=_t([0.5]))
    np.testing.assert_allclose(np.asarray(w), _focal([0.5]), rtol=1e-5)
    for scale in (0.0, 1e-10, 1e10):
        total, w = strategy(_t(losses * scale), kpis=_t([0.0, 1.0, 0.5]))
        assert np.isfinite(np.asarray(total)) and np.all(np.isfinite(np.asarray(w)))


# --- Missing tasks ---------------------------------------------------------


@tf_only
def test_supports_missing_tasks_and_marks_per_task_state():
    strategy = DynamicTaskPrioritization()
    strategy.build((3,))
    checks.assert_all_state_is_per_task(strategy, 2)


@tf_only
def test_all_ones_mask_equals_the_unmasked_call():
    rng = np.random.default_rng(10)
    make = functools.partial(
        DynamicTaskPrioritization, alpha=0.3, warmup_steps=2, gamma=[1.0, 2.0]
    )
    steps = []
    for _ in range(5):
        losses = _t(rng.uniform(0.1, 3.0, 2))
        steps.append((losses, _t(rng.uniform(0.0, 1.0, 2))))
    checks.assert_all_ones_mask_is_no_mask(make, steps, call=_call)


@tf_only
def test_absent_task_gets_zero_and_the_others_match_a_strategy_without_it():
    rng = np.random.default_rng(11)
    gamma = [1.0, 2.0, 1.5]
    full = DynamicTaskPrioritization(alpha=0.3, gamma=gamma, warmup_steps=3)
    for _ in range(2):
        full(_t(rng.uniform(0.1, 3.0, 3)), kpis=_t(rng.uniform(0.0, 1.0, 3)))
    present = [0, 2]
    alone = DynamicTaskPrioritization(alpha=0.3, gamma=[1.0, 1.5], warmup_steps=3)
    alone.build((2,))
    alone.set_weights([w[present] for w in full.get_weights()])
    steps = []
    for _ in range(3):  # through the end of the warm-up
        losses = rng.uniform(0.1, 3.0, 3)
        kpis = rng.uniform(0.0, 1.0, 3)
        losses[1], kpis[1] = 0.0, np.nan  # an absent task's loss and metric
        steps.append((_t(losses), _t(kpis)))
    checks.assert_absent_task_is_dropped(
        full, alone, [1, 0, 1], steps, call=_call, rtol=(1e-6, 0.0), state_rtol=0.0
    )
    assert np.all(np.isfinite(np.asarray(full.kpi_average)))


def test_first_present_step_initialises_the_average_and_starts_the_warmup():
    strategy = DynamicTaskPrioritization(alpha=0.5, warmup_steps=1)
    mask_0 = _t([1.0, 0.0])
    strategy(_t([1.0, 0.0]), kpis=_t([0.2, 0.0]), task_mask=mask_0)
    _, weights = strategy(_t([1.0, 0.0]), kpis=_t([0.4, 0.0]), task_mask=mask_0)
    np.testing.assert_allclose(np.asarray(weights), [_focal(0.3), 0.0], rtol=1e-5)
    # Task 1 arrives: its average starts at its KPI and it is warming up.
    _, weights = strategy(_t([1.0, 1.0]), kpis=_t([0.6, 0.8]))
    np.testing.assert_allclose(np.asarray(weights), [_focal(0.45), 1.0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(strategy.kpi_average), [0.45, 0.8], rtol=1e-6)
    _, weights = strategy(_t([1.0, 1.0]), kpis=_t([0.6, 0.6]))
    np.testing.assert_allclose(np.asarray(weights), _focal([0.525, 0.7]), rtol=1e-5)


@tf_only
def test_restore_absent_tasks_keeps_the_absent_state():
    strategy = DynamicTaskPrioritization(alpha=0.5, warmup_steps=3)
    strategy(_t([1.0, 1.0, 1.0]), kpis=_t([0.2, 0.3, 0.4]))
    mask = _t([1.0, 0.0, 1.0])
    checks.assert_restore_keeps_absent_state(
        strategy,
        mask,
        lambda: strategy(_t([1.0, 0.0, 1.0]), kpis=_t([0.6, 0.9, 0.8]), task_mask=mask),
    )


@tf_only
def test_masked_results_are_finite():
    step = (_t([0.0, 1e10, 1e-10]), _t([np.nan, 0.0, 1.0]))
    checks.assert_masked_outputs_finite(
        DynamicTaskPrioritization(),
        [(step, [0.0, 1.0, 1.0]), (step, [0.0, 0.0, 0.0])],
        call=_call,
        zero_absent=False,
    )


@tf_only
def test_masked_eager_equals_xla():
    make = functools.partial(
        DynamicTaskPrioritization, alpha=0.4, warmup_steps=1, gamma=[1.0, 2.0, 1.5]
    )
    rng = np.random.default_rng(12)
    cases = []
    for k in range(6):
        mask = _t([1.0, float(k % 3 != 0), float(k % 2 == 0)])
        losses = _t(rng.uniform(0.1, 3.0, 3)) * mask
        cases.append(((losses, _t(rng.uniform(0.0, 1.0, 3))), mask))
    checks.assert_xla_matches_eager(make, cases, call=_call)
