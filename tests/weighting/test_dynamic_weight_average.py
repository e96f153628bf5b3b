"""Tests of `DynamicWeightAverage` (Liu, Johns, Davison, CVPR 2019)."""

import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.weighting.dynamic_weight_average import DynamicWeightAverage


def _t(values):
    return tf.constant(values, dtype=tf.float32)


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
            out.append(weights.numpy())
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
    assert not np.allclose(weights.numpy(), 1.0)


def test_equal_descent_rates_give_unit_weights():
    strategy = DynamicWeightAverage()
    _run_epochs(strategy, [[[2.0, 40.0, 0.3]], [[1.0, 20.0, 0.15]]])
    _, weights = strategy(_t([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(weights.numpy(), [1.0, 1.0, 1.0], rtol=1e-6)


def test_slower_task_gets_larger_weight_and_sum_is_t():
    strategy = DynamicWeightAverage()
    # Task 0 halves, task 1 barely moves, task 2 increases.
    _run_epochs(strategy, [[[2.0, 2.0, 2.0]], [[1.0, 1.9, 2.2]]])
    _, weights = strategy(_t([1.0, 1.0, 1.0]))
    w = weights.numpy()
    assert w[0] < w[1] < w[2]
    np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-6)


def test_temperature_limits():
    history = [[[2.0, 2.0]], [[0.2, 2.0]]]
    hot = DynamicWeightAverage(temperature=1e6)
    _run_epochs(hot, history)
    np.testing.assert_allclose(hot(_t([1.0, 1.0]))[1].numpy(), [1.0, 1.0], atol=1e-5)
    cold = DynamicWeightAverage(temperature=1e-3)
    _run_epochs(cold, history)
    np.testing.assert_allclose(cold(_t([1.0, 1.0]))[1].numpy(), [0.0, 2.0], atol=1e-5)


def test_epoch_mean_uses_all_steps_and_empty_epochs_are_skipped():
    strategy = DynamicWeightAverage(temperature=1.0)
    strategy.build((2,))
    for losses in ([1.0, 4.0], [3.0, 2.0]):
        strategy(_t(losses))
    strategy.on_epoch_end()
    strategy.on_epoch_end()  # no steps: nothing recorded
    np.testing.assert_allclose(strategy.latest.numpy(), [2.0, 3.0])
    assert float(strategy.count.numpy()) == 1.0
    strategy(_t([1.0, 1.5]))
    strategy.on_epoch_end()
    _, weights = strategy(_t([1.0, 1.0]))
    np.testing.assert_allclose(
        weights.numpy(), _reference_epoch_weights([[2, 3], [1, 1.5]], 1.0, 2), rtol=1e-6
    )


def test_training_false_changes_nothing():
    strategy = DynamicWeightAverage()
    strategy.build((2,))
    strategy(_t([1.0, 2.0]), training=False)
    strategy.on_epoch_end()
    assert all(not np.any(v.numpy()) for v in strategy.weights)


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
        np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-5)
        if ema is None:
            ema, prev = losses.copy(), losses.copy()
        else:
            prev, ema = ema, beta * ema + (1 - beta) * losses
        e = np.exp(ema / prev / temperature)
        expected = 3 * e / e.sum()
    strategy.on_epoch_end()  # a no-op in step mode
    np.testing.assert_allclose(
        strategy(_t(sequence[0]))[1].numpy(), expected, rtol=1e-5
    )


@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_eager_equals_xla(mode):
    eager = DynamicWeightAverage(mode=mode)
    eager.build((3,))
    compiled = DynamicWeightAverage.from_config(eager.get_config())
    compiled.build((3,))

    @tf.function(jit_compile=True)
    def step(losses):
        return compiled(losses)

    rng = np.random.default_rng(2)
    for _ in range(4):
        for _ in range(3):
            losses = _t(rng.uniform(0.1, 5.0, size=3))
            total_e, w_e = eager(losses)
            total_c, w_c = step(losses)
            np.testing.assert_allclose(w_e.numpy(), w_c.numpy(), rtol=1e-6)
            np.testing.assert_allclose(total_e.numpy(), total_c.numpy(), rtol=1e-6)
        eager.on_epoch_end()
        compiled.on_epoch_end()


@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_state_round_trip_and_reset(mode):
    strategy = DynamicWeightAverage(mode=mode)
    _run_epochs(strategy, [[[1.0, 2.0], [1.5, 2.5]], [[0.5, 2.4]], [[0.4, 2.3]]])
    clone = DynamicWeightAverage.from_config(strategy.get_config())
    clone.build((2,))
    clone.set_weights(strategy.get_weights())
    for losses in ([0.3, 2.0], [0.2, 1.9]):
        for a, b in zip(strategy(_t(losses)), clone(_t(losses))):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        strategy.on_epoch_end()
        clone.on_epoch_end()
    assert not np.allclose(strategy(_t([1.0, 1.0]))[1].numpy(), 1.0)
    strategy.reset_state()
    assert all(not np.any(v.numpy()) for v in strategy.weights)
    np.testing.assert_array_equal(strategy(_t([1.0, 1.0]))[1].numpy(), [1.0, 1.0])


def test_weights_are_constants_and_degenerate_inputs_are_finite():
    strategy = DynamicWeightAverage()
    _run_epochs(strategy, [[[1.0, 0.0]], [[0.5, 0.0]]])
    losses = _t([1.0, 2.0])
    with tf.GradientTape() as tape:
        tape.watch(losses)
        total, weights = strategy(losses)
    np.testing.assert_allclose(tape.gradient(total, losses).numpy(), weights.numpy())
    for scale in (1e-10, 1e10):
        s = DynamicWeightAverage()
        got = _run_epochs(s, [[[scale, 1.0]], [[scale * 1e-3, 1.0]], [[scale, 2.0]]])
        assert np.all(np.isfinite(got))
        assert np.all(np.isfinite(s(_t([1.0, 1.0]))[1].numpy()))
    single = DynamicWeightAverage()
    got = _run_epochs(single, [[[2.0]], [[1.0]], [[0.5]]])
    np.testing.assert_allclose(got, [[1.0]] * 3)
