"""Tests of PCGrad."""

import functools
import itertools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
from keras import ops

import keras_mtl.weighting as weighting
from keras_mtl.weighting.pcgrad import PCGrad, random_orders

pytestmark = pytest.mark.both_backends


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


class _FixedOrderPCGrad(PCGrad):
    """PCGrad visiting the tasks in given orders (for the reference)."""

    def __init__(self, orders, **kwargs):
        super().__init__(**kwargs)
        self._orders = np.asarray(orders, "int32")

    def _task_orders(self, num_tasks):
        return ops.convert_to_tensor(self._orders)


def _reference(grads, orders):
    """Float64 re-derivation of LibMTL `LibMTL/weighting/PCGrad.py` (commit
    b1f2a6f) on the vectors: returns (update, projected rows, batch_weight)."""
    grads = np.asarray(grads, np.float64)
    projected = grads.copy()
    batch_weight = np.ones(len(grads))
    for i in range(len(grads)):
        for j in orders[i]:
            dot = projected[i] @ grads[j]
            if dot < 0:
                coef = dot / (grads[j] @ grads[j] + 1e-8)
                projected[i] = projected[i] - coef * grads[j]
                batch_weight[j] -= coef
    return projected.sum(0), projected, batch_weight


def _random_grads(rng, num, dim):
    return (rng.normal(size=(num, dim)) * rng.uniform(0.3, 3.0, size=(num, 1))).astype(
        "float32"
    )


def test_registry_and_config_round_trip():
    assert isinstance(weighting.get("pcgrad"), PCGrad)
    original = PCGrad(seed=3, name="pc")
    rebuilt = PCGrad.from_config(original.get_config())
    assert rebuilt.get_config() == original.get_config()
    assert rebuilt.seed == 3
    assert PCGrad.requires == "gramian" and not PCGrad.supports_rep_grad


def test_invalid_arguments():
    with pytest.raises(ValueError, match="seed"):
        PCGrad(seed=1.5)
    with pytest.raises(ValueError, match="rep_grad"):
        PCGrad(rep_grad=True)


def test_two_conflicting_gradients_closed_form_and_no_conflict():
    g1 = np.array([1.0, 0.0, 2.0])
    g2 = np.array([-2.0, 1.0, 0.0])
    update, weights = PCGrad(seed=0)(np.stack([g1, g2]).astype("float32"))
    pc1 = g1 - (g1 @ g2) / (g2 @ g2 + 1e-8) * g2
    pc2 = g2 - (g2 @ g1) / (g1 @ g1 + 1e-8) * g1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), pc1 + pc2, rtol=1e-6, atol=1e-6
    )
    # The projected gradients no longer conflict with the other task's.
    assert pc1 @ g2 > -1e-6 and pc2 @ g1 > -1e-6
    d = keras.ops.convert_to_numpy(update).astype("float64")
    assert d @ g1 >= 0 and d @ g2 >= 0
    # Effective weights: 1 + the projection coefficients onto each row.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weights),
        [1 - (g2 @ g1) / (g1 @ g1), 1 - (g1 @ g2) / (g2 @ g2)],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weights) @ np.stack([g1, g2]),
        keras.ops.convert_to_numpy(update),
        rtol=1e-6,
        atol=1e-6,
    )


def test_non_conflicting_gradients_pass_unchanged():
    grads = np.array([[1.0, 0.5, 0.0], [0.2, 1.0, 0.1], [0.0, 0.3, 2.0]], "float32")
    update, weights = PCGrad(seed=1)(grads)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weights), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), grads.sum(0), rtol=1e-6
    )


@pytest.mark.parametrize("num", [3, 4, 5])
def test_matches_reference_for_given_orders(num):
    rng = np.random.default_rng(num)
    for _ in range(5):
        grads = _random_grads(rng, num, 6)
        orders = np.stack([rng.permutation(num) for _ in range(num)])
        update, weights = _FixedOrderPCGrad(orders)(grads)
        ref_update, _, ref_weights = _reference(grads, orders)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(update), ref_update, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(weights), ref_weights, rtol=1e-5, atol=1e-6
        )


def test_order_matters_and_projection_uses_original_gradients():
    # Three tasks, order of visits changes the result for task 0.
    grads = np.array([[1.0, 0.0], [-1.0, 1.0], [-1.0, -1.5]], "float32")
    first = np.array([[1, 2, 0], [0, 1, 2], [0, 1, 2]])
    second = np.array([[2, 1, 0], [0, 1, 2], [0, 1, 2]])
    u1, _ = _FixedOrderPCGrad(first)(grads)
    u2, _ = _FixedOrderPCGrad(second)(grads)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(u1), _reference(grads, first)[0], rtol=1e-5
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(u2), _reference(grads, second)[0], rtol=1e-5
    )
    assert not np.allclose(
        keras.ops.convert_to_numpy(u1), keras.ops.convert_to_numpy(u2)
    )


def test_random_orders_are_permutations_and_cover_all_orders():
    seen = set()
    for counter in range(60):
        orders = keras.ops.convert_to_numpy(random_orders(_t([7, counter], "int64"), 3))
        for row in orders:
            assert sorted(row.tolist()) == [0, 1, 2]
            seen.add(tuple(row.tolist()))
    assert seen == set(itertools.permutations(range(3)))


def test_deterministic_for_a_fixed_seed():
    rng = np.random.default_rng(4)
    sequence = [_random_grads(rng, 4, 5) for _ in range(6)]
    a, b, c = PCGrad(seed=11), PCGrad(seed=11), PCGrad(seed=12)
    outputs = [
        (
            keras.ops.convert_to_numpy(a(g)[0]),
            keras.ops.convert_to_numpy(b(g)[0]),
            keras.ops.convert_to_numpy(c(g)[0]),
        )
        for g in sequence
    ]
    for ua, ub, _ in outputs:
        np.testing.assert_array_equal(ua, ub)
    # Another seed gives other orders, hence (here) other updates.
    assert any(not np.allclose(ua, uc) for ua, _, uc in outputs)


def test_eager_equals_xla_with_random_orders():
    rng = np.random.default_rng(5)
    cases = [(_random_grads(rng, 4, 6), None) for _ in range(3)]
    make = functools.partial(PCGrad, seed=3)
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=(1e-5, 1e-6))


def test_identical_rows_and_one_task():
    row = np.array([0.5, -1.0, 2.0], "float32")
    update, weights = PCGrad(seed=0)(np.tile(row, (3, 1)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(update), 3 * row, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weights), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(PCGrad().aggregate(row[None])), row
    )


def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(6)
    g = _random_grads(rng, 4, 6)
    cases = [
        np.zeros((3, 5), "float32"),
        np.stack([g[0], g[1], g[0] + g[1]]),
        np.stack([g[0], -g[0]]),
        g * 1e-10,
        g * 1e10,
        g * np.array([[1e-10], [1.0], [1e10], [1.0]], "float32"),
    ]
    for grads in cases:
        update, weights = PCGrad(seed=0)(grads)
        assert (
            np.isfinite(keras.ops.convert_to_numpy(update)).all()
            and np.isfinite(keras.ops.convert_to_numpy(weights)).all()
        )
    # Opposite gradients cancel exactly (both projected to zero).
    update, _ = PCGrad(seed=0)(np.stack([g[0], -g[0]]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(update), 0.0, atol=1e-5)


def test_seed_state_round_trip():
    strategy = PCGrad(seed=21)
    grads = _random_grads(np.random.default_rng(7), 4, 5)
    strategy(grads)
    clone = PCGrad.from_config(strategy.get_config())
    clone.build(grads.shape)
    clone.set_weights(strategy.get_weights())
    clone.seed_generator.state.assign(strategy.seed_generator.state.value)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(clone(grads)[0]),
        keras.ops.convert_to_numpy(strategy(grads)[0]),
    )


# --- Missing tasks --------------------------------------------------------


def test_missing_tasks_all_present_mask_equals_unmasked():
    rng = np.random.default_rng(8)
    steps = [_random_grads(rng, 4, 6) for _ in range(4)]
    checks.assert_all_ones_mask_is_no_mask(functools.partial(PCGrad, seed=5), steps)


@pytest.mark.parametrize("absent", [(1,), (0, 3), (2, 3, 4)])
def test_missing_tasks_equal_pcgrad_on_present_rows(absent):
    # The K-task PCGrad with the same seed draws the same visit orders for
    # the present tasks, so updates and weights agree step after step.
    rng = np.random.default_rng(9)
    steps = [
        checks.with_absent(_random_grads(rng, 5, 4), absent=absent) for _ in range(6)
    ]
    pairs = checks.assert_absent_task_is_dropped(
        PCGrad(seed=13),
        PCGrad(seed=13),
        steps[0][1],
        [grads for grads, _ in steps],
        rtol=1e-7,
        atol=1e-6,
    )
    # The comparison covered projections.
    assert any(np.any(ref_weights != 1.0) for _, (_, ref_weights) in pairs)


def test_missing_tasks_orders_restricted_to_present_tasks():
    seed = _t([3, 17], "int64")
    mask = np.array([1, 0, 1, 1, 0, 1], "float32")
    present = np.flatnonzero(mask)
    full = keras.ops.convert_to_numpy(random_orders(seed, 6, mask))
    small = keras.ops.convert_to_numpy(random_orders(seed, len(present)))
    for rank, i in enumerate(present):
        restricted = [j for j in full[i] if mask[j] > 0]
        assert restricted == present[small[rank]].tolist()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(random_orders(seed, 6, np.ones(6, "float32"))),
        keras.ops.convert_to_numpy(random_orders(seed, 6)),
    )


def test_missing_tasks_drop_the_absent_row_even_if_not_zero():
    rng = np.random.default_rng(10)
    grads = _random_grads(rng, 3, 4)
    mask = np.array([1.0, 0.0, 1.0], "float32")
    zeroed = grads * mask[:, None]
    u1, w1 = PCGrad(seed=2)(grads, task_mask=mask)
    u2, w2 = PCGrad(seed=2)(zeroed, task_mask=mask)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(u1), keras.ops.convert_to_numpy(u2), atol=1e-6
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(w1), keras.ops.convert_to_numpy(w2)
    )


def test_missing_tasks_no_per_task_state_and_finite():
    strategy = PCGrad(seed=0)
    rng = np.random.default_rng(11)
    g = _random_grads(rng, 3, 4)
    checks.assert_masked_outputs_finite(
        strategy,
        [
            (g, [0.0, 1.0, 1.0]),
            (g * np.array([[1.0], [1e10], [1e-10]], "float32"), [1.0, 0.0, 1.0]),
            (np.zeros((3, 4), "float32"), [0.0, 0.0, 0.0]),
            (g, [0.0, 0.0, 1.0]),
        ],
    )
    # One present task: its gradient passes unchanged.
    update, weights = strategy(g * [[0.0], [0.0], [1.0]], task_mask=[0.0, 0.0, 1.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(update), g[2], rtol=1e-6)
    # Stateless: nothing for the model to restore.
    assert strategy.per_task_state() == []


def test_missing_tasks_eager_equals_xla():
    rng = np.random.default_rng(12)
    cases = [
        checks.with_absent(_random_grads(rng, 4, 6), absent=absent)
        for absent in [(0,), (2,), (1, 3)]
    ]
    make = functools.partial(PCGrad, seed=4)
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=1e-6)


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# Random visit orders: no permutation check.
@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    degenerate_checks.check_cases(
        lambda: PCGrad(seed=0),
        degenerate_inputs.degenerate_cases(shapes=[shape]),
        lambda case: {"permutation": False},
    )


def test_evaluation_call_keeps_the_random_state():
    """training=False draws the visit orders of the next training call and
    leaves the seed generator's state unchanged (the strategy contract)."""
    grads = np.random.default_rng(0).normal(size=(4, 9))
    degenerate_checks.assert_evaluation_keeps_random_state(
        lambda: PCGrad(seed=1), grads
    )


def test_random_orders_are_pinned_on_every_backend():
    # The bits of TensorFlow's original implementation (int64 seed state),
    # reproduced from int32 (JAX's integers) and uint32 seeds alike.
    for dtype in ("int32", "uint32"):
        seed = keras.ops.convert_to_tensor(np.array([0, 3]), dtype)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(random_orders(seed, 3)),
            [[1, 0, 2], [1, 2, 0], [1, 0, 2]],
        )
        seed = keras.ops.convert_to_tensor(np.array([5, 3]), dtype)
        mask = keras.ops.convert_to_tensor(np.array([1, 0, 1, 1, 1], "float32"))
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(random_orders(seed, 5, mask)),
            [[3, 0, 4, 1, 2], [0, 4, 3, 1, 2], [0, 4, 3, 1, 2], [0, 3, 1, 2, 4]]
            + [[1, 2, 0, 3, 4]],
        )
