"""Tests of DBMTL (Dual-Balancing Multi-Task Learning)."""

import functools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
from backends import BACKEND
from fresh_compiled import on_jax

import keras_mtl.weighting as weighting
from keras_mtl.weighting.db_mtl import DBMTL

pytestmark = pytest.mark.both_backends


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


def _reference(grads_seq, losses_seq, beta=0.9, beta_sigma=0.0):
    """Float64 re-derivation of LibMTL `LibMTL/weighting/DB_MTL.py`."""
    buffer = np.zeros_like(np.asarray(grads_seq[0], np.float64))
    updates, alphas = [], []
    for k, (grads, losses) in enumerate(zip(grads_seq, losses_seq), start=1):
        grads = np.asarray(grads, np.float64)
        losses = np.asarray(losses, np.float64)
        log_grads = grads / (losses[:, None] + 1e-8)
        buffer = log_grads + beta / k**beta_sigma * (buffer - log_grads)
        norms = np.linalg.norm(buffer, axis=1)
        alpha = norms.max() / (norms + 1e-8)
        updates.append(alpha @ buffer)
        alphas.append(alpha)
    return updates, alphas, buffer


def _random_sequence(rng, steps, num_tasks=3, dim=5):
    grads = [rng.normal(size=(num_tasks, dim)).astype("float32") for _ in range(steps)]
    losses = [
        rng.uniform(0.1, 3.0, size=num_tasks).astype("float32") for _ in range(steps)
    ]
    return grads, losses


def _run(strategy, grads_seq, losses_seq):
    strategy.build(np.shape(grads_seq[0]))
    outputs = [
        strategy(_t(g), _t(x), training=True) for g, x in zip(grads_seq, losses_seq)
    ]
    return [keras.ops.convert_to_numpy(u) for u, _ in outputs], [
        keras.ops.convert_to_numpy(w) for _, w in outputs
    ]


def test_two_steps_by_hand():
    # LibMTL DB_MTL.py with beta = 0.9, beta_sigma = 0, buffer starting at 0.
    # Step 1: q = g / L = [[3, 0], [0, 0.5]], buffer = 0.1 q
    #         = [[0.3, 0], [0, 0.05]], norms (0.3, 0.05), alpha = (1, 6),
    #         update = [0.3, 0.3].
    # Step 2: q = [[0, 1], [1, 0]], buffer = 0.9 buffer + 0.1 q
    #         = [[0.27, 0.1], [0.1, 0.045]], norms sqrt(0.0829) and
    #         sqrt(0.012025), alpha_2 = sqrt(0.0829 / 0.012025),
    #         update = [0.27 + 0.1 alpha_2, 0.1 + 0.045 alpha_2].
    strategy = DBMTL()
    grads = [
        np.array([[3.0, 0.0], [0.0, 1.0]], "float32"),
        np.array([[0.0, 2.0], [1.0, 0.0]], "float32"),
    ]
    losses = [np.array([1.0, 2.0], "float32"), np.array([2.0, 1.0], "float32")]
    updates, alphas = _run(strategy, grads, losses)
    np.testing.assert_allclose(updates[0], [0.3, 0.3], rtol=1e-6)
    np.testing.assert_allclose(alphas[0], [1.0, 6.0], rtol=1e-6)
    alpha_2 = np.sqrt(0.0829 / 0.012025)
    np.testing.assert_allclose(
        updates[1], [0.27 + 0.1 * alpha_2, 0.1 + 0.045 * alpha_2], rtol=1e-6
    )
    np.testing.assert_allclose(alphas[1], [1.0, alpha_2], rtol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(strategy.grad_buffer),
        [[0.27, 0.1], [0.1, 0.045]],
        rtol=1e-6,
    )
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 2


@pytest.mark.parametrize("beta,beta_sigma", [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)])
def test_matches_reference_over_steps(beta, beta_sigma):
    grads, losses = _random_sequence(np.random.default_rng(0), steps=4)
    updates, alphas = _run(DBMTL(beta=beta, beta_sigma=beta_sigma), grads, losses)
    ref_updates, ref_alphas, _ = _reference(grads, losses, beta, beta_sigma)
    np.testing.assert_allclose(updates, ref_updates, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alphas, ref_alphas, rtol=1e-5)


def test_scaled_rows_have_equal_norm():
    grads, losses = _random_sequence(np.random.default_rng(1), steps=3)
    strategy = DBMTL()
    _, alphas = _run(strategy, grads, losses)
    buffer = keras.ops.convert_to_numpy(strategy.grad_buffer)
    scaled = alphas[-1][:, None] * buffer
    norms = np.linalg.norm(scaled, axis=1)
    np.testing.assert_allclose(norms, np.full(3, norms.max()), rtol=1e-5)
    np.testing.assert_allclose(
        norms.max(), np.linalg.norm(buffer, axis=1).max(), rtol=1e-6
    )


def test_invariant_to_loss_scaling():
    # L_k -> c L_k multiplies g_k by c too: log(c L_k) has the same gradient.
    grads, losses = _random_sequence(np.random.default_rng(2), steps=3)
    scale = np.array([1.0, 1000.0, 1e-3], "float32")
    scaled_grads = [g * scale[:, None] for g in grads]
    scaled_losses = [x * scale for x in losses]
    base, _ = _run(DBMTL(), grads, losses)
    scaled, _ = _run(DBMTL(), scaled_grads, scaled_losses)
    np.testing.assert_allclose(scaled, base, rtol=1e-4, atol=1e-7)


def test_permutation_equivariant():
    grads, losses = _random_sequence(np.random.default_rng(3), steps=2)
    perm = [2, 0, 1]
    base, base_w = _run(DBMTL(), grads, losses)
    permuted, permuted_w = _run(
        DBMTL(), [g[perm] for g in grads], [x[perm] for x in losses]
    )
    np.testing.assert_allclose(permuted, base, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(permuted_w[-1], base_w[-1][perm], rtol=1e-5)


def test_requires_losses():
    strategy = DBMTL()
    with pytest.raises(ValueError, match="losses"):
        strategy.aggregate(np.ones((2, 3), "float32"))


def test_invalid_arguments():
    for kwargs, name in [
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"beta_sigma": -1.0}, "beta_sigma"),
    ]:
        with pytest.raises(ValueError, match=name):
            DBMTL(**kwargs)


def test_no_rep_grad():
    with pytest.raises(ValueError, match="rep_grad"):
        DBMTL(rep_grad=True)


def test_degenerate_inputs_are_finite():
    cases = [
        (np.zeros((3, 4)), np.ones(3)),
        (np.zeros((3, 4)), np.zeros(3)),
        (np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [-1.0, -2.0, -3.0]]), np.ones(3)),
        (1e-10 * np.arange(12.0).reshape(3, 4), np.full(3, 1e-10)),
        (1e-10 * np.arange(12.0).reshape(3, 4), np.ones(3)),
        (1e10 * np.arange(12.0).reshape(3, 4), np.ones(3)),
        (1e10 * np.arange(12.0).reshape(3, 4), np.zeros(3)),
        (np.array([[1.0, -1.0, 0.5]]), np.array([2.0])),
    ]
    for grads, losses in cases:
        strategy = DBMTL()
        for _ in range(2):
            update = strategy.aggregate(
                grads.astype("float32"), losses.astype("float32")
            )
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(update))), (
                grads,
                losses,
            )


def test_one_task_is_scaled_log_gradient():
    strategy = DBMTL()
    update = strategy.aggregate(np.array([[2.0, -4.0]], "float32"), [2.0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), 0.1 * np.array([1.0, -2.0]), rtol=1e-6
    )


def test_eager_equals_xla():
    grads, losses = _random_sequence(np.random.default_rng(4), steps=3)
    make = functools.partial(DBMTL, beta_sigma=0.5)
    cases = [((g, x), None) for g, x in zip(grads, losses)]
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=(1e-7, 0.0))


def test_training_false_leaves_state():
    strategy = DBMTL()
    grads, losses = _random_sequence(np.random.default_rng(5), steps=1)
    strategy.build(grads[0].shape)
    first, _ = strategy(grads[0], losses[0], training=False)
    again, _ = strategy(grads[0], losses[0], training=False)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(first), keras.ops.convert_to_numpy(again)
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.grad_buffer), 0.0)
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 0


def test_config_and_registry():
    strategy = DBMTL(beta=0.8, beta_sigma=0.25, name="db")
    config = strategy.get_config()
    assert config["beta"] == 0.8 and config["beta_sigma"] == 0.25
    clone = DBMTL.from_config(config)
    assert clone.get_config() == config
    for name in ("db_mtl", "DB-MTL", "dbmtl", "dual_balancing", "DBMTL"):
        assert isinstance(weighting.get(name), DBMTL)
    restored = weighting.deserialize(weighting.serialize(strategy))
    assert isinstance(restored, DBMTL) and restored.beta == 0.8


def test_state_round_trip_and_reset():
    grads, losses = _random_sequence(np.random.default_rng(6), steps=3)
    strategy = DBMTL()
    _run(strategy, grads[:2], losses[:2])
    checks.assert_state_round_trip(strategy, [(grads[2], losses[2])])
    strategy.reset_state()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.grad_buffer), 0.0)
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 0
    fresh = DBMTL()
    fresh.build(grads[0].shape)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy(grads[0], losses[0])[0]),
        keras.ops.convert_to_numpy(fresh(grads[0], losses[0])[0]),
    )


# --- Missing tasks ---------------------------------------------------------


def test_supports_missing_tasks_and_marks_per_task_state():
    strategy = DBMTL()
    strategy.build((3, 4))
    checks.assert_all_state_is_per_task(strategy, 2)


def test_all_ones_mask_equals_the_unmasked_call():
    grads, losses = _random_sequence(np.random.default_rng(10), steps=3)
    make = functools.partial(DBMTL, beta_sigma=0.5)
    checks.assert_all_ones_mask_is_no_mask(make, list(zip(grads, losses)))


def test_absent_task_gets_zero_and_the_others_match_a_strategy_without_it():
    rng = np.random.default_rng(11)
    grads, losses = _random_sequence(rng, steps=5)
    full = DBMTL(beta_sigma=0.5)
    _run(full, grads[:2], losses[:2])
    present = [0, 2]
    alone = DBMTL(beta_sigma=0.5)
    alone.build((2, 5))
    alone.set_weights([w[present] for w in full.get_weights()])
    # An absent task's row and loss are 0.
    steps = [
        checks.with_absent(g, x, absent=(1,)) for g, x in zip(grads[2:], losses[2:])
    ]
    checks.assert_absent_task_is_dropped(
        full,
        alone,
        [1.0, 0.0, 1.0],
        [(g, x) for g, x, _ in steps],
        rtol=(1e-5, 1e-6),
        state_rtol=0.0,
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(full.steps), [5, 2, 5])
    assert int(keras.ops.convert_to_numpy(full.step)) == 5
    # The absent task's buffer did not decay; with beta_sigma > 0 its own
    # count sets its next beta_k = beta / 3^0.5 (not beta / 6^0.5).
    g, x = grads[0], losses[0]
    buffer = keras.ops.convert_to_numpy(full.grad_buffer)[1]
    full(g, x)
    expected = g[1] / (x[1] + 1e-8)
    expected = expected + 0.9 / 3**0.5 * (buffer - expected)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full.grad_buffer)[1], expected, rtol=1e-6
    )


def test_restore_absent_tasks_keeps_the_absent_state():
    grads, losses = _random_sequence(np.random.default_rng(12), steps=3)
    strategy = DBMTL()
    _run(strategy, grads[:2], losses[:2])
    g, x, mask = checks.with_absent(grads[2], losses[2], absent=(2,))
    checks.assert_restore_keeps_absent_state(
        strategy, mask, lambda: strategy(g, x, task_mask=_t(mask))
    )


def test_masked_results_are_finite():
    cases = [
        (np.zeros((3, 4)), np.zeros(3), [0.0, 1.0, 1.0]),
        (1e10 * np.arange(12.0).reshape(3, 4), np.zeros(3), [0.0, 1.0, 1.0]),
        (1e-10 * np.arange(12.0).reshape(3, 4), np.full(3, 1e-10), [0.0, 0.0, 1.0]),
        (np.ones((3, 4)), np.ones(3), [0.0, 0.0, 0.0]),
    ]
    for grads, losses, mask in cases:
        strategy = DBMTL()
        strategy.build((3, 4))
        checks.assert_masked_outputs_finite(strategy, [((grads, losses), mask)] * 2)
        assert np.all(
            keras.ops.convert_to_numpy(strategy.grad_buffer)[np.array(mask) == 0] == 0.0
        )


def test_masked_eager_equals_xla():
    grads, losses = _random_sequence(np.random.default_rng(13), steps=4)
    masks = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    masks = [np.array(m, "float32") for m in masks]
    cases = [((g * m[:, None], x * m), m) for g, x, m in zip(grads, losses, masks)]
    make = functools.partial(DBMTL, beta_sigma=0.5)
    # On JAX, XLA fuses the buffer update differently from the eager ops: an
    # entry that cancels terms of size ~1 differs by one float32 ulp of 1.
    atol = 1.2e-7 if BACKEND == "jax" else 1e-7
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=atol)


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# Stateful: every call is on a fresh strategy (its first step).
@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    degenerate_checks.check_cases(
        on_jax(DBMTL), degenerate_inputs.degenerate_cases(shapes=[shape])
    )
