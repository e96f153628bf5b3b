"""Tests of `SLAW` (Crawshaw and Kosecka, arXiv 2109.08218)."""

import functools

import keras
import missing_task_checks as checks
import numpy as np
import pytest
import tensorflow as tf
from backend_grads import tf_only
from keras import ops

import keras_mtl
from keras_mtl.weighting.slaw import SLAW

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _reference_weights(sequence, beta=0.99, eps=1e-5, warmup="arithmetic"):
    """The authors' algorithm re-derived in float64 numpy: running mean m and
    mean of squares q as in mtcrawshaw/meta `meta/utils/estimate.py`
    (`RunningStats`: arithmetic means for round(1 / (1 - beta)) steps, then
    EMAs) and the weights of `CLAW._update_weights` in `meta/train/loss.py`
    (unit weights at the first step). Returns the weights of every step."""
    sequence = np.asarray(sequence, np.float64)
    num_tasks = sequence.shape[1]
    threshold = round(1.0 / (1.0 - beta)) if warmup == "arithmetic" else 0
    m = np.zeros(num_tasks)
    q = np.zeros(num_tasks)
    out = []
    for n, losses in enumerate(sequence, start=1):
        if n <= threshold:
            m = (m * (n - 1) + losses) / n
            q = (q * (n - 1) + losses**2) / n
        else:
            m = beta * m + (1 - beta) * losses
            q = beta * q + (1 - beta) * losses**2
        s = np.sqrt(np.maximum(q - m**2, 0.0))
        if n == 1:
            out.append(np.ones(num_tasks))
            continue
        inv = 1.0 / np.maximum(s, eps)
        out.append(num_tasks * inv / inv.sum())
    return np.array(out)


def _feed(strategy, sequence):
    return np.array([np.asarray(strategy(_t(losses))[1]) for losses in sequence])


def test_registry_names_resolve():
    for name in ["slaw", "scaled_loss_approximate_weighting"]:
        assert isinstance(keras_mtl.weighting.get(name), SLAW)


def test_config_round_trip():
    strategy = SLAW(beta=0.9, epsilon=1e-4, warmup="none")
    config = strategy.get_config()
    assert (config["beta"], config["epsilon"], config["warmup"]) == (0.9, 1e-4, "none")
    assert SLAW.from_config(config).get_config() == config
    assert SLAW().warmup_steps == 100


_INVALID_ARGUMENTS = [
    ({"beta": 1.0}, "beta"),
    ({"beta": -0.5}, "beta"),
    ({"beta": "x"}, "beta"),
    ({"epsilon": 0.0}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"),
    ({"warmup": "linear"}, "warmup"),
]


def test_invalid_arguments_raise():
    for kwargs, match in _INVALID_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            SLAW(**kwargs)


@pytest.mark.parametrize("warmup", ["arithmetic", "none"])
def test_matches_the_reference_algorithm(warmup):
    # beta = 0.95: 50 steps go through the 20-step arithmetic warm-up and
    # into the EMAs.
    rng = np.random.default_rng(0)
    scales = np.array([0.5, 2.0, 20.0])
    sequence = scales * (1.0 + 0.3 * rng.standard_normal((50, 3))) + scales
    got = _feed(SLAW(beta=0.95, warmup=warmup), sequence)
    expected = _reference_weights(sequence, beta=0.95, warmup=warmup)
    np.testing.assert_allclose(got, expected, rtol=2e-4)
    np.testing.assert_allclose(got.sum(axis=1), 3.0, rtol=1e-5)


def test_known_standard_deviations_give_the_closed_form():
    # Each task alternates m_t - sd_t, m_t + sd_t: after an even number of
    # warm-up steps the arithmetic std is exactly sd_t, so
    # w_t = T (1 / sd_t) / sum_j (1 / sd_j).
    means = np.array([5.0, 1.0, 300.0, 2.0])
    sds = np.array([0.5, 0.01, 30.0, 2.0])
    signs = np.where(np.arange(40) % 2 == 0, -1.0, 1.0)[:, None]
    sequence = means + signs * sds
    got = _feed(SLAW(), sequence)
    inv = 1.0 / sds
    np.testing.assert_allclose(got[-1], 4 * inv / inv.sum(), rtol=1e-4)
    np.testing.assert_array_equal(got[0], np.ones(4))


def test_scaling_a_loss_divides_its_weight():
    rng = np.random.default_rng(1)
    sequence = 1.0 + 0.2 * rng.standard_normal((30, 2))
    base = _feed(SLAW(), sequence)[-1]
    scaled = _feed(SLAW(), sequence * [1.0, 100.0])[-1]
    np.testing.assert_allclose(
        scaled[0] / scaled[1], 100 * base[0] / base[1], rtol=1e-3
    )


def test_first_step_constant_and_non_finite_losses_give_unit_weights():
    strategy = SLAW()
    np.testing.assert_array_equal(_feed(strategy, [[1.0, 50.0]]), [[1.0, 1.0]])
    # Constant losses: every std is floored at eps, so the weights stay 1.
    np.testing.assert_allclose(_feed(strategy, [[1.0, 50.0]] * 3), 1.0)
    _, weights = strategy(_t([np.nan, 1.0]))
    np.testing.assert_array_equal(np.asarray(weights), [1.0, 1.0])
    strategy = SLAW()
    _feed(strategy, [[1.0, 2.0], [2.0, 1.0]])
    _, weights = strategy(_t([np.inf, 1.0]))
    np.testing.assert_array_equal(np.asarray(weights), [1.0, 1.0])


def test_large_mean_small_fluctuation_is_accurate_in_float32():
    # q - m^2 would cancel catastrophically in float32 here (m^2 = 2^20,
    # variance 2^-14, below the spacing of float32 numbers near q); the
    # variance recursion keeps the ratio exact. All inputs are exact in
    # float32.
    signs = np.where(np.arange(20) % 2 == 0, -1.0, 1.0)[:, None]
    sds = np.array([2.0**-7, 2.0**-3])
    sequence = np.array([1024.0, 1.0]) + signs * sds
    got = _feed(SLAW(), sequence)[-1]
    np.testing.assert_allclose(got, 2 * np.array([16.0, 1.0]) / 17.0, rtol=2e-3)


def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(2)
    for scale in (1e-10, 1e10):
        sequence = scale * rng.uniform(0.5, 1.5, (5, 3))
        got = _feed(SLAW(), sequence)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got.sum(axis=1), 3.0, rtol=1e-5)
    np.testing.assert_allclose(_feed(SLAW(), [[1.0], [3.0], [2.0]]), 1.0)
    zero = _feed(SLAW(), np.zeros((4, 2)))
    np.testing.assert_array_equal(zero, np.ones((4, 2)))


def test_permutation_equivariance():
    rng = np.random.default_rng(3)
    sequence = rng.uniform(0.1, 3.0, (12, 3)) * [1.0, 5.0, 0.2]
    perm = [2, 0, 1]
    got = _feed(SLAW(), sequence)
    got_p = _feed(SLAW(), sequence[:, perm])
    np.testing.assert_allclose(got[:, perm], got_p, rtol=1e-5)


def test_training_false_uses_stored_statistics_without_updating():
    strategy = SLAW()
    _feed(strategy, [[1.0, 2.0], [3.0, 2.5]])
    before = [np.asarray(v).copy() for v in strategy.weights]
    _, weights = strategy(_t([100.0, 0.0]), training=False)
    for b, v in zip(before, strategy.weights):
        np.testing.assert_array_equal(b, np.asarray(v))
    np.testing.assert_allclose(
        np.asarray(weights), _reference_weights([[1.0, 2.0], [3.0, 2.5]])[-1], rtol=1e-5
    )
    fresh = SLAW()
    fresh.build((2,))
    np.testing.assert_array_equal(fresh(_t([1.0, 2.0]), training=False)[1], [1, 1])


@tf_only
@pytest.mark.parametrize("warmup", ["arithmetic", "none"])
def test_eager_equals_xla(warmup):
    make = functools.partial(SLAW, beta=0.8, warmup=warmup)  # warm-up of 5 steps
    rng = np.random.default_rng(4)
    cases = [(_t(rng.uniform(0.1, 4.0, 3)), None) for _ in range(9)]
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5)


@tf_only
def test_state_round_trip_and_reset():
    rng = np.random.default_rng(5)
    strategy = SLAW(beta=0.9)
    _feed(strategy, rng.uniform(0.5, 2.0, (15, 2)))
    checks.assert_state_round_trip(
        strategy, [_t(x) for x in rng.uniform(0.5, 2.0, (3, 2))]
    )
    strategy.reset_state()
    assert all(not np.any(np.asarray(v)) for v in strategy.weights)
    np.testing.assert_array_equal(strategy(_t([4.0, 1.0]))[1], [1.0, 1.0])


def _mtregression_weights(sigmas, steps=800, average_over=200):
    """A small version of the MTRegression toy (methods.md C1): targets
    sigma_t * tanh(x (B + E_t)), a 2-layer tanh trunk with linear heads,
    per-task MSE, Adam, trained inside one tf.function. Returns SLAW's
    weights averaged over the last `average_over` steps."""
    num_tasks, d_in, d_out, hidden, batch, n = len(sigmas), 20, 8, 32, 64, 2000
    rng = np.random.default_rng(0)
    shared = rng.normal(0.0, 10.0, (d_in, d_out))
    specific = rng.normal(0.0, 3.5, (num_tasks, d_in, d_out))
    x = rng.normal(0.0, 0.035, (n, d_in))
    y = np.stack(
        [s * np.tanh(x @ (shared + specific[t])) for t, s in enumerate(sigmas)]
    )
    x = tf.constant(x, tf.float32)
    y = tf.constant(y, tf.float32)
    init = keras.initializers.GlorotUniform(seed=0)
    variables = [
        tf.Variable(init((d_in, hidden))),
        tf.Variable(tf.zeros(hidden)),
        tf.Variable(init((hidden, hidden))),
        tf.Variable(tf.zeros(hidden)),
        tf.Variable(init((num_tasks, hidden, d_out))),
        tf.Variable(tf.zeros((num_tasks, d_out))),
    ]
    w1, b1, w2, b2, heads, head_bias = variables
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(variables)
    strategy = SLAW()
    strategy.build((num_tasks,))

    @tf.function
    def train():
        weight_sum = tf.zeros(num_tasks)
        for k in tf.range(steps):
            idx = tf.random.stateless_uniform(
                (batch,), seed=[k, 0], maxval=n, dtype=tf.int32
            )
            xb, yb = tf.gather(x, idx), tf.gather(y, idx, axis=1)
            with tf.GradientTape() as tape:
                h = tf.tanh(tf.tanh(xb @ w1 + b1) @ w2 + b2)
                pred = tf.einsum("bh,thd->tbd", h, heads) + head_bias[:, None]
                losses = tf.reduce_mean(tf.square(pred - yb), axis=[1, 2])
                total, weights = strategy(losses)
            grads = tape.gradient(total, variables)
            optimizer.apply_gradients(zip(grads, variables))
            if k >= steps - average_over:
                weight_sum += weights
        return weight_sum / average_over

    return np.asarray(train())


@tf_only
def test_weights_approach_inverse_squared_output_scales_on_mtregression():
    sigmas = np.array([1.0, 3.0, 10.0])
    ideal = 1.0 / sigmas**2
    ideal = len(sigmas) * ideal / ideal.sum()  # [2.676, 0.297, 0.027]
    weights = _mtregression_weights(sigmas)
    error = np.mean((weights - ideal) ** 2)
    equal_error = np.mean((1.0 - ideal) ** 2)  # EW's weights are all 1
    assert np.all(np.diff(weights) < 0)
    assert error < 0.02 * equal_error, (weights, ideal, error, equal_error)


# --- Missing tasks ---------------------------------------------------------


def _masked_feed(strategy, sequence, masks):
    return np.array(
        [
            np.asarray(strategy(_t(losses), task_mask=_t(mask))[1])
            for losses, mask in zip(sequence, masks)
        ]
    )


@tf_only
def test_supports_missing_tasks_and_marks_per_task_state():
    strategy = SLAW()
    strategy.build((3,))
    checks.assert_all_state_is_per_task(strategy, 3)  # the count is per task too


@tf_only
def test_all_ones_mask_equals_the_unmasked_call():
    rng = np.random.default_rng(10)
    sequence = rng.uniform(0.1, 3.0, (8, 3))
    make = functools.partial(SLAW, beta=0.8)
    checks.assert_all_ones_mask_is_no_mask(make, [_t(losses) for losses in sequence])


@tf_only
def test_absent_task_gets_zero_and_the_others_match_a_strategy_without_it():
    rng = np.random.default_rng(11)
    full = SLAW(beta=0.9)
    _feed(full, rng.uniform(0.1, 3.0, (6, 3)) * [1.0, 10.0, 0.1])
    present = [0, 2]
    alone = SLAW(beta=0.9)
    alone.build((2,))
    alone.set_weights([w[present] for w in full.get_weights()])
    sequence = rng.uniform(0.1, 3.0, (4, 3)) * [1.0, 10.0, 0.1]
    sequence[:, 1] = 0.0  # an absent task's loss
    pairs = checks.assert_absent_task_is_dropped(
        full, alone, [1.0, 0.0, 1.0], [_t(x) for x in sequence], state_rtol=0.0
    )
    for (_, weights), _ in pairs:
        np.testing.assert_allclose(weights.sum(), 2.0, rtol=1e-6)  # K


def test_counts_are_per_task():
    # Task 1 is absent for the first 3 steps: its statistics are the
    # arithmetic mean and variance of its own 3 losses, and the weights are
    # 1 until it has been seen twice.
    strategy = SLAW()
    sequence = np.array(
        [[1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [3.0, 10.0], [1.0, 30.0], [2.0, 20.0]]
    )
    masks = [[1.0, 0.0]] * 3 + [[1.0, 1.0]] * 3
    got = _masked_feed(strategy, sequence, masks)
    np.testing.assert_array_equal(got[:3], [[1.0, 0.0]] * 3)
    np.testing.assert_array_equal(got[3], [1.0, 1.0])  # task 1 seen once
    np.testing.assert_array_equal(np.asarray(strategy.steps), [6.0, 3.0])
    np.testing.assert_allclose(
        np.asarray(strategy.loss_mean), [13 / 6, 20.0], rtol=1e-6
    )
    variances = [np.var(sequence[:, 0]), np.var([10.0, 30.0, 20.0])]
    np.testing.assert_allclose(np.asarray(strategy.loss_variance), variances, rtol=1e-5)
    inv = 1.0 / np.sqrt(variances)
    np.testing.assert_allclose(got[-1], 2 * inv / inv.sum(), rtol=1e-5)


@tf_only
def test_restore_absent_tasks_keeps_the_absent_state():
    rng = np.random.default_rng(12)
    strategy = SLAW()
    _feed(strategy, rng.uniform(0.1, 3.0, (5, 3)))
    mask = _t([0.0, 1.0, 1.0])
    checks.assert_restore_keeps_absent_state(
        strategy, mask, lambda: strategy(_t([0.0, 1.5, 2.5]), task_mask=mask)
    )


@tf_only
def test_masked_results_are_finite():
    sequence = np.array([[0.0, 1e-10, 1e10], [0.0, 2e-10, 3e10]] * 2)
    for mask in ([0.0, 1.0, 1.0], [0.0, 0.0, 0.0]):
        strategy = SLAW()
        checks.assert_masked_outputs_finite(strategy, [(x, mask) for x in sequence])
    # training=False with a mask: stored statistics, over present tasks.
    _, weights = strategy(_t([0.0, 0.0, 0.0]), training=False, task_mask=_t([0, 0, 0]))
    np.testing.assert_array_equal(np.asarray(weights), [0.0, 0.0, 0.0])


@tf_only
def test_masked_eager_equals_xla():
    rng = np.random.default_rng(13)
    cases = []
    for k in range(9):
        mask = _t([1.0, float(k % 3 != 0), float(k % 2 == 0)])
        cases.append((_t(rng.uniform(0.1, 4.0, 3)) * mask, mask))
    checks.assert_xla_matches_eager(functools.partial(SLAW, beta=0.8), cases, rtol=1e-5)
