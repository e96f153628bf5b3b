"""Tests of ExcessMTL (robust weighting by excess risks)."""

import functools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
from backends import graph
from fresh_compiled import on_jax

import keras_mtl.weighting as weighting
from keras_mtl.weighting.excess_mtl import ExcessMTL

pytestmark = pytest.mark.both_backends


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


def _reference(grads_seq, robust_step_size=1e-2):
    """Float64 re-derivation of the official code (yifei-he/ExcessMTL,
    `LibMTL/LibMTL/weighting/ExcessMTL.py`, same as LibMTL's port)."""
    num_tasks = len(grads_seq[0])
    weight = np.ones(num_tasks)
    grad_sq_sum = np.zeros_like(np.asarray(grads_seq[0], np.float64))
    initial = None
    updates, weights = [], []
    for grads in grads_seq:
        grads = np.asarray(grads, np.float64)
        grad_sq_sum = grad_sq_sum + grads**2
        excess = np.array(
            [
                grads[i] * (1 / np.sqrt(grad_sq_sum[i] + 1e-7)) @ grads[i]
                for i in range(num_tasks)
            ]
        )
        if initial is None:
            initial = excess
        else:
            weight = weight * np.exp(excess / initial * robust_step_size)
            weight = weight / weight.sum() * num_tasks
        updates.append(weight @ grads)
        weights.append(weight)
    return updates, weights


def _run(strategy, grads_seq):
    strategy.build(np.shape(grads_seq[0]))
    outputs = [strategy(g) for g in grads_seq]
    return [keras.ops.convert_to_numpy(u) for u, _ in outputs], [
        keras.ops.convert_to_numpy(w) for _, w in outputs
    ]


def _random_sequence(rng, steps, num_tasks=3, dim=5):
    return [rng.normal(size=(num_tasks, dim)).astype("float32") for _ in range(steps)]


def test_two_steps_by_hand():
    # Step 1: S = g^2, e_t = sum g^2 / sqrt(g^2 + 1e-7) ~ ||g_t||_1 = (1, 1):
    #         only recorded; the weights stay 1, update = sum of rows.
    # Step 2: g = [[2, 0], [0, 1]], S = [[5, 0], [0, 2]],
    #         e = (4 / sqrt(5), 1 / sqrt(2)), r = e / e0,
    #         w = 2 softmax(eta r) with eta = 1.
    strategy = ExcessMTL(robust_step_size=1.0)
    strategy.build((2, 2))
    update, weight = strategy(np.eye(2, dtype="float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(update), [1.0, 1.0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), [1.0, 1.0])
    e0 = 1.0 / np.sqrt(1.0 + 1e-7)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(strategy.initial_excess), [e0, e0], rtol=1e-6
    )
    update, weight = strategy(np.array([[2.0, 0.0], [0.0, 1.0]], "float32"))
    ratio = np.array([4.0 / np.sqrt(5.0 + 1e-7), 1.0 / np.sqrt(2.0 + 1e-7)]) / e0
    expected = 2.0 * np.exp(ratio) / np.exp(ratio).sum()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(weight), expected, rtol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), [2 * expected[0], expected[1]], rtol=1e-6
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(strategy.grad_sq_sum),
        [[5.0, 0.0], [0.0, 2.0]],
        rtol=1e-6,
    )


@pytest.mark.parametrize("robust_step_size", [1e-2, 0.5])
def test_matches_reference_over_steps(robust_step_size):
    grads = _random_sequence(np.random.default_rng(0), steps=5)
    updates, weights = _run(ExcessMTL(robust_step_size=robust_step_size), grads)
    ref_updates, ref_weights = _reference(grads, robust_step_size)
    np.testing.assert_allclose(updates, ref_updates, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5)


def test_weights_positive_and_sum_to_num_tasks():
    rng = np.random.default_rng(1)
    strategy = ExcessMTL(robust_step_size=2.0)
    strategy.build((4, 6))
    grads = _t(rng.normal(size=(40, 4, 6)).astype("float32"))

    step = graph(lambda g: strategy(g)[1], layers=[strategy])
    weights = np.stack(
        [
            keras.ops.convert_to_numpy(step(grads[i] * np.float32(i % 4 + 1)))
            for i in range(40)
        ]
    )
    assert np.all(weights > 0)
    np.testing.assert_allclose(weights.sum(axis=1), 4.0, rtol=1e-5)


def test_task_with_larger_excess_risk_gains_weight():
    # Task 0 keeps its gradient (its excess-risk estimate decays only through
    # the accumulated curvature); task 1's gradient shrinks as it converges.
    strategy = ExcessMTL(robust_step_size=0.5)
    strategy.build((2, 3))
    base = np.array([[1.0, -1.0, 0.5], [0.5, 1.0, 1.0]], "float32")
    weights = []
    for k in range(6):
        decay = np.array([[1.0], [0.5**k]], "float32")
        weights.append(keras.ops.convert_to_numpy(strategy(base * decay)[1]))
    weights = np.array(weights)
    np.testing.assert_array_equal(weights[0], [1.0, 1.0])
    assert np.all(np.diff(weights[:, 0]) > 0)
    assert weights[-1, 0] > 1.0 > weights[-1, 1]


def test_invariant_to_gradient_scale_of_a_task():
    # r_t = e_t / e0_t and S_t scale together with g_t (up to the 1e-7).
    grads = _random_sequence(np.random.default_rng(2), steps=4)
    scale = np.array([1.0, 100.0, 0.1], "float32")[:, None]
    _, base = _run(ExcessMTL(robust_step_size=0.5), grads)
    _, scaled = _run(ExcessMTL(robust_step_size=0.5), [g * scale for g in grads])
    np.testing.assert_allclose(scaled, base, rtol=1e-4)


def test_zero_step_size_keeps_equal_weights():
    grads = _random_sequence(np.random.default_rng(3), steps=3)
    updates, weights = _run(ExcessMTL(robust_step_size=0.0), grads)
    np.testing.assert_allclose(weights, np.ones((3, 3)), rtol=1e-6)
    np.testing.assert_allclose(updates, [g.sum(0) for g in grads], rtol=1e-5, atol=1e-6)


def test_degenerate_inputs_are_finite():
    cases = [
        np.zeros((3, 4)),
        np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [-1.0, -2.0, -3.0]]),
        1e-10 * np.arange(12.0).reshape(3, 4),
        1e10 * np.arange(12.0).reshape(3, 4),
        np.array([[1.0, -2.0]]),
    ]
    for grads in cases:
        strategy = ExcessMTL(robust_step_size=1.0)
        for _ in range(3):
            update = strategy.aggregate(grads.astype("float32"))
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(update))), grads
            assert np.all(
                np.isfinite(keras.ops.convert_to_numpy(strategy.loss_weight))
            ), grads
    # A task whose first gradient was zero (the reference divides by 0):
    strategy = ExcessMTL(robust_step_size=1.0)
    strategy.aggregate(np.array([[0.0, 0.0], [1.0, 1.0]], "float32"))
    strategy.aggregate(np.array([[5.0, 1.0], [1.0, 1.0]], "float32"))
    weight = keras.ops.convert_to_numpy(strategy.loss_weight)
    assert np.all(np.isfinite(weight))
    np.testing.assert_allclose(weight.sum(), 2.0, rtol=1e-6)


def test_eager_equals_xla():
    grads = _random_sequence(np.random.default_rng(4), steps=3)
    make = functools.partial(ExcessMTL, robust_step_size=0.3)
    cases = [(g, None) for g in grads]
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=(1e-6, 0.0))


def test_training_false_leaves_state():
    strategy = ExcessMTL()
    strategy.build((2, 2))
    strategy(np.eye(2, dtype="float32"), training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.grad_sq_sum), 0.0)
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 0


def test_invalid_arguments():
    for kwargs, name in [
        ({"robust_step_size": -0.1}, "robust_step_size"),
        ({"robust_step_size": float("nan")}, "robust_step_size"),
        ({"rep_grad": True}, "rep_grad"),
    ]:
        with pytest.raises(ValueError, match=name):
            ExcessMTL(**kwargs)


def test_config_and_registry():
    strategy = ExcessMTL(robust_step_size=0.05)
    config = strategy.get_config()
    assert config["robust_step_size"] == 0.05
    assert ExcessMTL.from_config(config).get_config() == config
    for name in ("excess_mtl", "ExcessMTL", "excessmtl", "excess"):
        assert isinstance(weighting.get(name), ExcessMTL)
    restored = weighting.deserialize(weighting.serialize(strategy))
    assert isinstance(restored, ExcessMTL) and restored.robust_step_size == 0.05


def test_state_round_trip_and_reset():
    grads = _random_sequence(np.random.default_rng(5), steps=4)
    strategy = ExcessMTL(robust_step_size=0.5)
    _run(strategy, grads[:3])
    checks.assert_state_round_trip(strategy, [grads[3]])
    strategy.reset_state()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.grad_sq_sum), 0.0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy.initial_excess), 0.0
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.loss_weight), 1.0)
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 0
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy(grads[0])[0]), grads[0].sum(0)
    )


# --- Missing tasks ---------------------------------------------------------


def test_supports_missing_tasks_and_marks_per_task_state():
    strategy = ExcessMTL()
    strategy.build((3, 4))
    checks.assert_all_state_is_per_task(strategy, 4)


def test_all_ones_mask_equals_the_unmasked_call():
    grads = _random_sequence(np.random.default_rng(10), steps=4)
    make = functools.partial(ExcessMTL, robust_step_size=0.5)
    checks.assert_all_ones_mask_is_no_mask(
        make, grads, rtol=1e-6, atol=1e-7, state_rtol=1e-6, state_atol=0.0
    )


def test_absent_task_gets_zero_and_the_others_match_a_strategy_without_it():
    # ExcessMTL on the present tasks alone renormalises their weights to K;
    # the masked step keeps their sum instead (see the docstring), so the
    # weights and the update agree up to that one factor; the rest of the
    # state agrees exactly.
    rng = np.random.default_rng(11)
    grads = _random_sequence(rng, steps=6, num_tasks=4)
    full = ExcessMTL(robust_step_size=0.5)
    _run(full, grads[:3])
    present = [0, 1, 3]
    mask = _t([1.0, 1.0, 0.0, 1.0])
    for g in grads[3:]:
        g = g.copy()
        g[2] = 0.0  # an absent task's row
        alone = ExcessMTL(robust_step_size=0.5)
        alone.build((3, 5))
        alone.set_weights([w[present] for w in full.get_weights()])
        kept = keras.ops.convert_to_numpy(full.loss_weight)[present].sum()
        absent_weight = keras.ops.convert_to_numpy(full.loss_weight)[2]
        update, weight = full(g, task_mask=mask)
        expected_update, expected_weight = alone(g[present])
        factor = kept / 3.0
        assert keras.ops.convert_to_numpy(weight)[2] == 0.0
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(weight)[present],
            factor * keras.ops.convert_to_numpy(expected_weight),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(update),
            factor * keras.ops.convert_to_numpy(expected_update),
            rtol=1e-5,
            atol=1e-6,
        )
        stored = keras.ops.convert_to_numpy(full.loss_weight)
        assert stored[2] == absent_weight
        np.testing.assert_allclose(stored.sum(), 4.0, rtol=1e-6)
        for a, b in zip(full.get_weights()[:2], alone.get_weights()[:2]):
            np.testing.assert_array_equal(a[present], b)  # S and e0
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(full.steps), [6, 6, 3, 6])
    assert int(keras.ops.convert_to_numpy(full.step)) == 6


def test_initial_estimate_is_recorded_at_the_first_present_step():
    strategy = ExcessMTL(robust_step_size=1.0)
    strategy.build((2, 2))
    mask = _t([1.0, 0.0])
    # Task 1 absent for two steps: task 0 alone (K = 1) keeps its weight.
    for g in ([[1.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]):
        _, weight = strategy(np.array(g, "float32"), task_mask=mask)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(weight), [1.0, 0.0], rtol=1e-6
        )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy.initial_excess)[1], 0.0
    )
    # Task 1 arrives: e0_1 = e_1, r_1 = 1; task 0 has r_0 = e_0 / e0_0.
    update, weight = strategy(np.array([[1.0, 0.0], [0.0, 3.0]], "float32"))
    e1 = 9.0 / np.sqrt(9.0 + 1e-7)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(strategy.initial_excess)[1], e1, rtol=1e-6
    )
    e0 = 1.0 / np.sqrt(1.0 + 1e-7)
    r0 = (1.0 / np.sqrt(6.0 + 1e-7)) / e0
    expected = 2.0 * np.exp([r0, 1.0]) / np.exp([r0, 1.0]).sum()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(weight), expected, rtol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), [expected[0], 3 * expected[1]], rtol=1e-5
    )


def test_restore_absent_tasks_keeps_the_absent_state():
    grads = _random_sequence(np.random.default_rng(12), steps=3)
    strategy = ExcessMTL(robust_step_size=0.5)
    _run(strategy, grads[:2])
    g, mask = checks.with_absent(grads[2], absent=(0,))
    checks.assert_restore_keeps_absent_state(
        strategy,
        mask,
        lambda: strategy(g, task_mask=_t(mask)),
        skip_moved=("initial_excess",),  # e0 is recorded once
    )


def test_masked_results_are_finite():
    cases = [
        (np.zeros((3, 4)), [0.0, 1.0, 1.0]),
        (1e10 * np.arange(12.0).reshape(3, 4), [0.0, 1.0, 1.0]),
        (1e-10 * np.arange(12.0).reshape(3, 4), [1.0, 0.0, 0.0]),
        (np.ones((3, 4)), [0.0, 0.0, 0.0]),
    ]
    for grads, mask in cases:
        strategy = ExcessMTL(robust_step_size=1.0)
        strategy.build((3, 4))
        steps = [(grads * (k + 1), mask) for k in range(3)]
        checks.assert_masked_outputs_finite(strategy, steps)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(strategy.loss_weight).sum(), 3.0, rtol=1e-6
        )


def test_masked_eager_equals_xla():
    grads = _random_sequence(np.random.default_rng(13), steps=4)
    masks = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    masks = [np.array(m, "float32") for m in masks]
    cases = [(g * m[:, None], m) for g, m in zip(grads, masks)]
    make = functools.partial(ExcessMTL, robust_step_size=0.5)
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=1e-7)


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# Stateful: every call is on a fresh strategy (its first step).
@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    degenerate_checks.check_cases(
        on_jax(ExcessMTL), degenerate_inputs.degenerate_cases(shapes=[shape])
    )
