"""Tests of GradDrop (Gradient Sign Dropout)."""

import functools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
from backends import compiled
from fresh_compiled import on_jax
from keras import ops

import keras_mtl.weighting as weighting
from keras_mtl.weighting.graddrop import GradDrop

pytestmark = pytest.mark.both_backends


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


class _FixedUniformGradDrop(GradDrop):
    """GradDrop with given uniform draws (for the reference)."""

    def __init__(self, uniform, **kwargs):
        super().__init__(**kwargs)
        self._uniform = np.asarray(uniform, "float32")

    def _draw_uniform(self, shape):
        return ops.convert_to_tensor(self._uniform)


def _reference(grads, uniform, leak=0.0):
    """Float64 re-derivation of LibMTL `LibMTL/weighting/GradDrop.py`, with
    each coordinate its own feature (batch of one, positive activations)."""
    grads = np.asarray(grads, np.float64)
    purity = 0.5 * (1 + grads.sum(0) / (np.abs(grads).sum(0) + 1e-7))
    mask = (purity > uniform)[None] * (grads > 0) + (purity < uniform)[None] * (
        grads < 0
    )
    return (grads * (leak + (1 - leak) * mask)).sum(0)


def test_matches_reference_for_given_draws():
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(3, 50)).astype("float32")
    uniform = rng.uniform(size=50).astype("float32")
    for leak in (0.0, 0.3):
        strategy = _FixedUniformGradDrop(uniform, leak=leak)
        update, weights = strategy(grads)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(update),
            _reference(grads, uniform, leak),
            rtol=1e-6,
        )
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(weights), [1.0, 1.0, 1.0]
        )


def test_sign_purity():
    strategy = GradDrop()
    grads = np.array([[3.0, 1.0, 2.0, 0.0], [-1.0, 1.0, -2.0, 0.0]], "float32")
    purity = keras.ops.convert_to_numpy(
        strategy.sign_purity(ops.convert_to_tensor(grads))
    )
    # 0.5 (1 + sum / (sum |.| + 1e-7)): 0.75, ~1, 0.5, 0.5.
    np.testing.assert_allclose(purity, [0.75, 1.0, 0.5, 0.5], atol=1e-7)


def test_agreeing_signs_pass_unchanged():
    grads = np.array(
        [
            [1.0, -2.0, 0.5, 3.0, 0.0],
            [2.0, -0.1, 1.5, -3.0, -1.0],
            [0.3, -1.0, 0.0, 1.0, -2.0],
        ],
        "float32",
    )
    for seed in range(5):
        update = keras.ops.convert_to_numpy(GradDrop(seed=seed).aggregate(grads))
        # Columns 0-2 agree in sign (zeros aside), column 4 too.
        np.testing.assert_allclose(
            update[[0, 1, 2, 4]], grads.sum(0)[[0, 1, 2, 4]], rtol=1e-6
        )
        # Column 3 conflicts: only the positive (4.0) or negative (-3.0) part.
        assert update[3] in (np.float32(4.0), np.float32(-3.0))


def test_kept_sign_frequency_matches_purity():
    # Each column is an independent draw: g = (a, -b) keeps the positive
    # part with probability P = 0.5 (1 + (a - b) / (a + b)) = a / (a + b).
    columns = 4000
    cases = [(3.0, 1.0), (1.0, 1.0), (1.0, 4.0)]
    grads = np.concatenate(
        [np.tile([[a], [-b]], (1, columns)) for a, b in cases], axis=1
    ).astype("float32")
    update = keras.ops.convert_to_numpy(GradDrop(seed=3).aggregate(grads)).reshape(
        len(cases), columns
    )
    for (a, b), values in zip(cases, update):
        assert set(np.unique(values).tolist()) <= {a, -b}
        frequency = np.mean(values == a)
        expected = a / (a + b)
        assert abs(frequency - expected) < 4 * np.sqrt(
            expected * (1 - expected) / columns
        )
    # In expectation the update is the net gradient (a - b) in the
    # direction of the dominant sign: E = P a - (1 - P) b.
    means = update.mean(axis=1)
    for (a, b), mean in zip(cases, means):
        expected = a * a / (a + b) - b * b / (a + b)
        assert abs(mean - expected) < 0.15


def test_leak_one_is_plain_sum():
    grads = np.random.default_rng(1).normal(size=(3, 20)).astype("float32")
    update = GradDrop(leak=1.0, seed=0).aggregate(grads)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), grads.sum(0), rtol=1e-5, atol=1e-6
    )


def test_deterministic_for_a_seed_and_random_across_calls():
    grads = np.random.default_rng(2).normal(size=(3, 40)).astype("float32")
    first = GradDrop(seed=5)
    second = GradDrop(seed=5)
    a1, a2 = (
        keras.ops.convert_to_numpy(first.aggregate(grads)),
        keras.ops.convert_to_numpy(first.aggregate(grads)),
    )
    b1, b2 = (
        keras.ops.convert_to_numpy(second.aggregate(grads)),
        keras.ops.convert_to_numpy(second.aggregate(grads)),
    )
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)


def test_degenerate_inputs_are_finite():
    cases = [
        np.zeros((3, 4)),
        np.array([[1.0, 2.0, 3.0], [-2.0, -4.0, -6.0], [1.0, 2.0, 3.0]]),
        1e-10 * np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0], [0.0, 0.0, 1.0]]),
        1e10 * np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0], [0.0, 0.0, 1.0]]),
    ]
    for grads in cases:
        update = keras.ops.convert_to_numpy(
            GradDrop(seed=0).aggregate(grads.astype("float32"))
        )
        assert np.all(np.isfinite(update)), grads
    np.testing.assert_array_equal(
        GradDrop().aggregate(np.zeros((2, 3), "float32")), 0.0
    )
    one = np.array([[1.0, -3.0, 0.0]], "float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(GradDrop(seed=0).aggregate(one)), one[0]
    )


def test_eager_equals_xla():
    grads = np.random.default_rng(3).normal(size=(3, 30)).astype("float32")
    eager_strategy, xla_strategy = GradDrop(seed=9), GradDrop(seed=9)
    xla_strategy.build(grads.shape)
    step = compiled(lambda g: xla_strategy(g, training=True), layers=[xla_strategy])
    for _ in range(2):
        eager = keras.ops.convert_to_numpy(eager_strategy.aggregate(grads))
        xla = keras.ops.convert_to_numpy(step(_t(grads))[0])
        np.testing.assert_allclose(xla, eager, rtol=1e-6)


def test_rep_grad_is_supported():
    assert GradDrop.supports_rep_grad
    strategy = GradDrop(rep_grad=True, leak=0.2, seed=1)
    assert GradDrop.from_config(strategy.get_config()).rep_grad


def test_invalid_arguments():
    for leak in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="leak"):
            GradDrop(leak=leak)


def test_config_and_registry():
    strategy = GradDrop(leak=0.25, seed=4)
    config = strategy.get_config()
    assert (config["leak"], config["seed"], config["rep_grad"]) == (0.25, 4, False)
    assert GradDrop.from_config(config).get_config() == config
    for name in ("graddrop", "grad_drop", "gradient_sign_dropout", "GradDrop"):
        assert isinstance(weighting.get(name), GradDrop)
    assert not GradDrop.stateful
    restored = weighting.deserialize(weighting.serialize(strategy))
    assert isinstance(restored, GradDrop) and restored.leak == 0.25


def test_state_round_trip():
    # Stateless apart from the RNG: a clone with the RNG state copied over
    # gives the same masks.
    grads = np.random.default_rng(4).normal(size=(2, 16)).astype("float32")
    strategy = GradDrop(seed=6)
    strategy.aggregate(grads)
    clone = GradDrop.from_config(strategy.get_config())
    clone.build(grads.shape)
    clone.set_weights(strategy.get_weights())
    clone.seed_generator.state.assign(strategy.seed_generator.state)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(clone.aggregate(grads)),
        keras.ops.convert_to_numpy(strategy.aggregate(grads)),
    )
    strategy.reset_state()  # stateless: nothing to reset, must not raise


# --- Missing tasks --------------------------------------------------------


def test_missing_tasks_all_present_mask_equals_unmasked():
    grads = np.random.default_rng(5).normal(size=(3, 30)).astype("float32")
    make = functools.partial(GradDrop, seed=2, leak=0.1)
    checks.assert_all_ones_mask_is_no_mask(make, [grads, grads])


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_missing_tasks_equal_graddrop_on_present_rows(leak):
    rng = np.random.default_rng(6)
    for absent in [(1,), (0, 2), (3,)]:
        full, small = GradDrop(seed=8, leak=leak), GradDrop(seed=8, leak=leak)
        present = [t for t in range(4) if t not in absent]
        # Two steps: the seed generators advance alike.
        steps = [
            checks.with_absent(rng.normal(size=(4, 60)), absent=absent)
            for _ in range(2)
        ]
        mask = steps[0][1]
        pairs = checks.assert_absent_task_is_dropped(
            full,
            small,
            mask,
            [grads for grads, _ in steps],
            rtol=(1e-7, 0.0),
            atol=(1e-6, 0.0),
        )
        for (_, weights), _ in pairs:
            np.testing.assert_array_equal(weights, mask)
        # Against the reference with the draws of the K-task strategy.
        grads = steps[-1][0]
        uniform = np.random.default_rng(0).uniform(size=60).astype("float32")
        fixed = _FixedUniformGradDrop(uniform, leak=leak)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(fixed(grads, task_mask=mask)[0]),
            _reference(grads[present], uniform, leak),
            rtol=1e-6,
            atol=1e-7,
        )


def test_missing_tasks_finite_and_stateless():
    strategy = GradDrop(seed=1)
    g = np.random.default_rng(7).normal(size=(3, 8)).astype("float32")
    cases = [
        (g * np.array([[1e10], [1.0], [1e-10]], "float32"), [1.0, 0.0, 1.0]),
        (np.zeros((3, 8), "float32"), [0.0, 0.0, 0.0]),
        (g, [0.0, 0.0, 1.0]),
    ]
    for (_, weights), (_, mask) in zip(
        checks.assert_masked_outputs_finite(strategy, cases), cases
    ):
        np.testing.assert_array_equal(weights, mask)
    # One present task: its signs all agree, the gradient passes unchanged.
    update, _ = strategy(g * [[0.0], [0.0], [1.0]], task_mask=[0.0, 0.0, 1.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(update), g[2], rtol=1e-6)
    assert strategy.per_task_state() == []


def test_missing_tasks_eager_equals_xla():
    rng = np.random.default_rng(8)
    cases = [
        checks.with_absent(rng.normal(size=(3, 20)), absent=a) for a in [(0,), (2,)]
    ]
    make = functools.partial(GradDrop, seed=3)
    checks.assert_xla_matches_eager(make, cases, rtol=(1e-6, 0.0))


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# With one seed the draws are per coordinate, not per task: permuting the
# tasks leaves the update unchanged.
@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    degenerate_checks.check_cases(
        on_jax(lambda: GradDrop(seed=0)),
        degenerate_inputs.degenerate_cases(shapes=[shape]),
    )


def test_evaluation_call_keeps_the_random_state():
    """training=False draws what the next training call draws and leaves
    the seed generator's state unchanged (the strategy contract)."""
    grads = np.random.default_rng(0).normal(size=(3, 9))
    degenerate_checks.assert_evaluation_keeps_random_state(
        lambda: GradDrop(seed=1), grads
    )
