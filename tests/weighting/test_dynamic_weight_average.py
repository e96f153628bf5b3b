"""Tests of `DynamicWeightAverage` (Liu, Johns, Davison, CVPR 2019)."""

import functools

import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.dynamic_weight_average import DynamicWeightAverage

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _reference_epoch_weights(epoch_means, temperature, num_tasks):
    """LibMTL/weighting/DWA.py re-derived in numpy: weights of the epoch that
    follows the listed completed epochs."""
    if len(epoch_means) < 2:
        return np.ones(num_tasks)
    r = np.asarray(epoch_means[-1], np.float64) / np.asarray(epoch_means[-2])
    e = np.exp(r / temperature)
    return num_tasks * e / e.sum()


def _run_epochs(strategy, epochs):
    """Feeds a list of epochs (each a list of per-step loss vectors) and
    returns the weights returned at every step."""
    out = []
    for epoch in epochs:
        for losses in epoch:
            _, weights = strategy(_t(losses))
            out.append(np.asarray(weights))
        strategy.on_epoch_end()
    return out


def test_registry_names_resolve():
    for name in ["dwa", "dynamic_weight_average", "DWA"]:
        assert isinstance(keras_mtl.weighting.get(name), DynamicWeightAverage)


def test_config_round_trip():
    strategy = DynamicWeightAverage(temperature=3.0, mode="step", ema_decay=0.5)
    config = strategy.get_config()
    assert {k: config[k] for k in ("temperature", "mode", "ema_decay")} == {
        "temperature": 3.0,
        "mode": "step",
        "ema_decay": 0.5,
    }
    assert DynamicWeightAverage.from_config(config).get_config() == config


_INVALID_ARGUMENTS = [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -2.0}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"mode": "batch"}, "mode"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"ema_decay": -0.1}, "ema_decay"),
]


def test_invalid_arguments_raise():
    for kwargs, match in _INVALID_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            DynamicWeightAverage(**kwargs)


def test_epoch_mode_matches_libmtl_rule():
    rng = np.random.default_rng(0)
    epochs = [rng.uniform(0.5, 3.0, size=(4, 3)).tolist() for _ in range(5)]
    strategy = DynamicWeightAverage(temperature=2.0)
    got = _run_epochs(strategy, epochs)
    means = [np.mean(epoch, axis=0) for epoch in epochs]
    for e in range(5):
        expected = _reference_epoch_weights(means[:e], 2.0, 3)
        for step in range(4):
            np.testing.assert_allclose(got[4 * e + step], expected, rtol=1e-5)


def test_first_two_epochs_use_unit_weights():
    strategy = DynamicWeightAverage()
    got = _run_epochs(strategy, [[[5.0, 0.1]], [[1.0, 0.1]]])
    np.testing.assert_array_equal(got, np.ones((2, 2)))
    _, weights = strategy(_t([1.0, 1.0]))
    assert not np.allclose(np.asarray(weights), 1.0)


def test_equal_descent_rates_give_unit_weights():
    strategy = DynamicWeightAverage()
    _run_epochs(strategy, [[[2.0, 40.0, 0.3]], [[1.0, 20.0, 0.15]]])
    _, weights = strategy(_t([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(np.asarray(weights), [1.0, 1.0, 1.0], rtol=1e-6)


def test_slower_task_gets_larger_weight_and_sum_is_t():
    strategy = DynamicWeightAverage()
    # Task 0 halves, task 1 barely moves, task 2 increases.
    _run_epochs(strategy, [[[2.0, 2.0, 2.0]], [[1.0, 1.9, 2.2]]])
    _, weights = strategy(_t([1.0, 1.0, 1.0]))
    w = np.asarray(weights)
    assert w[0] < w[1] < w[2]
    np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-6)


def test_temperature_limits():
    history = [[[2.0, 2.0]], [[0.2, 2.0]]]
    hot = DynamicWeightAverage(temperature=1e6)
    _run_epochs(hot, history)
    np.testing.assert_allclose(
        np.asarray(hot(_t([1.0, 1.0]))[1]), [1.0, 1.0], atol=1e-5
    )
    cold = DynamicWeightAverage(temperature=1e-3)
    _run_epochs(cold, history)
    np.testing.assert_allclose(
        np.asarray(cold(_t([1.0, 1.0]))[1]), [0.0, 2.0], atol=1e-5
    )


def test_epoch_mean_uses_all_steps_and_empty_epochs_are_skipped():
    strategy = DynamicWeightAverage(temperature=1.0)
    strategy.build((2,))
    for losses in ([1.0, 4.0], [3.0, 2.0]):
        strategy(_t(losses))
    strategy.on_epoch_end()
    strategy.on_epoch_end()  # no steps: nothing recorded
    np.testing.assert_allclose(np.asarray(strategy.latest), [2.0, 3.0])
    assert float(np.asarray(strategy.count)) == 1.0
    strategy(_t([1.0, 1.5]))
    strategy.on_epoch_end()
    _, weights = strategy(_t([1.0, 1.0]))
    np.testing.assert_allclose(
        np.asarray(weights),
        _reference_epoch_weights([[2, 3], [1, 1.5]], 1.0, 2),
        rtol=1e-6,
    )


def test_training_false_changes_nothing():
    strategy = DynamicWeightAverage()
    strategy.build((2,))
    strategy(_t([1.0, 2.0]), training=False)
    strategy.on_epoch_end()
    assert all(not np.any(np.asarray(v)) for v in strategy.weights)


def test_step_mode_matches_meta_ema_variant():
    # mtcrawshaw/meta, meta/train/loss.py::DWA: weights of a step come from
    # the EMA before and after the previous step's loss; EMA starts at the
    # first loss.
    rng = np.random.default_rng(1)
    sequence = rng.uniform(0.5, 2.0, size=(8, 3))
    beta, temperature = 0.9, 2.0
    strategy = DynamicWeightAverage(temperature=temperature, mode="step")
    ema = prev = None
    expected = np.ones(3)
    for losses in sequence:
        _, weights = strategy(_t(losses))
        np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-5)
        if ema is None:
            ema, prev = losses.copy(), losses.copy()
        else:
            prev, ema = ema, beta * ema + (1 - beta) * losses
        e = np.exp(ema / prev / temperature)
        expected = 3 * e / e.sum()
    strategy.on_epoch_end()  # a no-op in step mode
    np.testing.assert_allclose(
        np.asarray(strategy(_t(sequence[0]))[1]), expected, rtol=1e-5
    )


@tf_only
@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_eager_equals_xla(mode):
    rng = np.random.default_rng(2)
    epochs = [
        [(_t(rng.uniform(0.1, 5.0, size=3)), None) for _ in range(3)] for _ in range(4)
    ]
    make = functools.partial(DynamicWeightAverage, mode=mode)
    checks.assert_xla_matches_eager(make, checks.with_epoch_ends(epochs))


@tf_only
@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_state_round_trip_and_reset(mode):
    strategy = DynamicWeightAverage(mode=mode)
    _run_epochs(strategy, [[[1.0, 2.0], [1.5, 2.5]], [[0.5, 2.4]], [[0.4, 2.3]]])
    steps = checks.with_epoch_ends([[_t([0.3, 2.0])], [_t([0.2, 1.9])]])
    checks.assert_state_round_trip(strategy, steps)
    assert not np.allclose(np.asarray(strategy(_t([1.0, 1.0]))[1]), 1.0)
    strategy.reset_state()
    assert all(not np.any(np.asarray(v)) for v in strategy.weights)
    np.testing.assert_array_equal(np.asarray(strategy(_t([1.0, 1.0]))[1]), [1.0, 1.0])


def test_weights_are_constants_and_degenerate_inputs_are_finite():
    strategy = DynamicWeightAverage()
    _run_epochs(strategy, [[[1.0, 0.0]], [[0.5, 0.0]]])
    (_, weights), (grad,) = value_and_grad(strategy, [1.0, 2.0], layers=[strategy])
    np.testing.assert_allclose(grad, weights)
    for scale in (1e-10, 1e10):
        s = DynamicWeightAverage()
        got = _run_epochs(s, [[[scale, 1.0]], [[scale * 1e-3, 1.0]], [[scale, 2.0]]])
        assert np.all(np.isfinite(got))
        assert np.all(np.isfinite(np.asarray(s(_t([1.0, 1.0]))[1])))
    single = DynamicWeightAverage()
    got = _run_epochs(single, [[[2.0]], [[1.0]], [[0.5]]])
    np.testing.assert_allclose(got, [[1.0]] * 3)


# --- Missing tasks ------------------------------------------------------


def _masked_epochs(strategy, epochs):
    """Like `_run_epochs`, each step a pair (losses, task_mask)."""
    out = []
    for epoch in epochs:
        for losses, mask in epoch:
            _, weights = strategy(_t(losses), task_mask=_t(mask))
            out.append(np.asarray(weights))
        strategy.on_epoch_end()
    return out


@tf_only
@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_missing_tasks_all_present_mask_changes_nothing(mode):
    rng = np.random.default_rng(4)
    epochs = [[_t(x) for x in rng.uniform(0.5, 3.0, size=(3, 3))] for _ in range(4)]
    make = functools.partial(DynamicWeightAverage, mode=mode)
    *_, outputs = checks.assert_all_ones_mask_is_no_mask(
        make, checks.with_epoch_ends(epochs), rtol=1e-6
    )
    assert not np.allclose(outputs[-1][1], 1.0)


def test_epoch_mode_absent_task_as_if_only_present_tasks_existed():
    rng = np.random.default_rng(5)
    full = DynamicWeightAverage(temperature=1.5)
    present_only = DynamicWeightAverage(temperature=1.5)
    # Two epochs with every task, for both strategies.
    for _ in range(2):
        for losses in rng.uniform(0.5, 3.0, size=(3, 3)):
            full(_t(losses))
            present_only(_t(losses[[0, 2]]))
        full.on_epoch_end()
        present_only.on_epoch_end()
    # Epoch 2: task 1 labelled only at the first step; epoch 3: never.
    epoch_2 = rng.uniform(0.5, 3.0, size=(3, 3))
    epoch_3 = rng.uniform(0.5, 3.0, size=(2, 3))
    schedule = [
        (epoch_2, [[1, 1, 1], [1, 0, 1], [1, 0, 1]]),
        (epoch_3, [[1, 0, 1], [1, 0, 1]]),
    ]
    for epoch, masks in schedule:
        for losses, mask in zip(epoch, masks):
            mask = np.asarray(mask, np.float32)
            _, weights = full(_t(losses * mask), task_mask=_t(mask))
            _, expected = present_only(_t(losses[[0, 2]]))
            if mask[1] == 0:
                np.testing.assert_allclose(
                    np.asarray(weights)[[0, 2]], np.asarray(expected), rtol=1e-6
                )
                assert np.asarray(weights)[1] == 0.0
                np.testing.assert_allclose(np.asarray(weights).sum(), 2.0, rtol=1e-6)
        latest_1 = np.asarray(full.latest)[1]
        full.on_epoch_end()
        present_only.on_epoch_end()
        np.testing.assert_allclose(
            np.asarray(full.latest)[[0, 2]], np.asarray(present_only.latest), rtol=1e-6
        )
    # Task 1's epoch-2 mean is its only labelled loss; epoch 3 (no label) is
    # not recorded for it, so its history still ends with epoch 2.
    np.testing.assert_allclose(latest_1, epoch_2[0, 1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(full.latest)[1], epoch_2[0, 1], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(full.task_count), [2.0, 2.0, 2.0])


@tf_only
def test_step_mode_absent_task_as_if_only_present_tasks_existed():
    rng = np.random.default_rng(6)
    full = DynamicWeightAverage(mode="step")
    present_only = DynamicWeightAverage(mode="step")
    for losses in rng.uniform(0.5, 3.0, size=(3, 3)):
        full(_t(losses))
        present_only(_t(losses[[0, 2]]))
    # The absent task's EMA does not move while it is absent.
    steps = [_t(x * [1, 0, 1]) for x in rng.uniform(0.5, 3.0, size=(4, 3))]
    checks.assert_absent_task_is_dropped(full, present_only, [1.0, 0.0, 1.0], steps)


def test_task_without_two_recorded_epochs_enters_with_ratio_one():
    # Documented choice: task 1 has no label in epochs 0 and 1; in epoch 2
    # it takes part in the softmax with the neutral ratio r = 1, and while
    # no present task has a ratio the present tasks get w = 1.
    strategy = DynamicWeightAverage(temperature=2.0)
    _masked_epochs(
        strategy,
        [
            [([2.0, 0.0, 1.0], [1, 0, 1])],
            [([1.0, 0.0, 1.5], [1, 0, 1])],
        ],
    )
    np.testing.assert_array_equal(np.asarray(strategy.task_count), [2.0, 0.0, 2.0])
    _, weights = strategy(_t([1.0, 1.0, 1.0]), task_mask=_t([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(
        np.asarray(weights),
        _reference_epoch_weights([[2.0, 1.0, 1.0], [1.0, 1.0, 1.5]], 2.0, 3),
        rtol=1e-6,
    )
    _, weights = strategy(_t([0.0, 1.0, 0.0]), task_mask=_t([0.0, 1.0, 0.0]))
    np.testing.assert_array_equal(np.asarray(weights), [0.0, 1.0, 0.0])


@tf_only
@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_absent_task_state_is_unchanged_and_restorable(mode):
    strategy = DynamicWeightAverage(mode=mode)
    _run_epochs(strategy, [[[1.0, 2.0, 3.0]], [[0.9, 1.5, 2.0]], [[0.8, 1.4, 2.5]]])
    strategy(_t([0.7, 1.2, 2.0]))
    assert [axis for _, axis in strategy.per_task_state()] == [0] * 5
    mask = _t([1.0, 0.0, 1.0])

    def step():
        _, weights = strategy(_t([0.5, 0.0, 1.0]), task_mask=mask)
        assert np.all(np.isfinite(np.asarray(weights)))

    # The strategy itself leaves the absent task's state alone; the model's
    # restore (run here as the model does) is then a no-op for it.
    checks.assert_restore_keeps_absent_state(strategy, mask, step, moved="any")
    # No task present: zero weights, nothing per task moves.
    snapshot = strategy.task_state_snapshot()
    _, weights = strategy(_t([0.0, 0.0, 0.0]), task_mask=_t([0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(np.asarray(weights), 0.0)
    for (variable, _), before in zip(strategy.per_task_state(), snapshot):
        np.testing.assert_array_equal(np.asarray(variable), np.asarray(before))


@tf_only
@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_masked_eager_equals_xla(mode):
    rng = np.random.default_rng(7)
    masks = [[1, 1, 1], [1, 0, 1], [0, 1, 1], [0, 0, 0], [1, 1, 0]]
    epochs = []
    for epoch in range(4):
        epochs.append([])
        for i in range(3):
            mask = _t(masks[(epoch + i) % len(masks)])
            epochs[-1].append((_t(rng.uniform(0.1, 5.0, size=3)) * mask, mask))
    make = functools.partial(DynamicWeightAverage, mode=mode)
    checks.assert_xla_matches_eager(make, checks.with_epoch_ends(epochs))
