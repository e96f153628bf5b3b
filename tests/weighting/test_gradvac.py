"""Tests of GradVac (Gradient Vaccine)."""

import functools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
from fresh_compiled import on_jax
from keras import ops

import keras_mtl.weighting as weighting
from keras_mtl.weighting.gradvac import GradVac

pytestmark = pytest.mark.both_backends


class _FixedOrderGradVac(GradVac):
    """GradVac visiting the other tasks in a given order (for the reference)."""

    def __init__(self, orders, **kwargs):
        super().__init__(**kwargs)
        self._orders = np.asarray(orders, "int32")

    def _task_orders(self, num_tasks):
        return ops.convert_to_tensor(self._orders)


def _reference(grads, targets, orders, beta=0.5):
    """Float64 re-derivation of LibMTL `LibMTL/weighting/GradVac.py`
    (group_type 0): returns the update, the new targets and the per-task
    projected gradients."""
    grads = np.asarray(grads, np.float64)
    targets = np.array(targets, np.float64)
    projected = grads.copy()
    for i in range(len(grads)):
        for j in orders[i]:
            if j == i:
                continue
            norm_i = np.linalg.norm(projected[i])
            norm_j = np.linalg.norm(grads[j])
            cos = projected[i] @ grads[j] / (norm_i * norm_j + 1e-8)
            target = targets[i, j]
            if cos < target:
                coef = (
                    norm_i
                    * (target * np.sqrt(1 - cos**2) - cos * np.sqrt(1 - target**2))
                    / (norm_j * np.sqrt(1 - target**2) + 1e-8)
                )
                projected[i] = projected[i] + coef * grads[j]
                targets[i, j] = (1 - beta) * target + beta * cos
    return projected.sum(0), targets, projected


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_first_step_projects_conflicts_like_pcgrad():
    # Targets start at 0: a conflicting g_i is projected onto the normal
    # plane of g_j, i.e. g_i - (g_i.g_j / ||g_j||^2) g_j.
    g1 = np.array([1.0, 0.0, 2.0])
    g2 = np.array([-2.0, 1.0, 0.0])
    strategy = GradVac(seed=1)
    update, weights = strategy(np.stack([g1, g2]).astype("float32"))
    pc1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    pc2 = g2 - (g2 @ g1) / (g1 @ g1) * g1
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), pc1 + pc2, rtol=1e-5, atol=1e-6
    )
    # The effective weights reproduce the update from the original rows.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weights) @ np.stack([g1, g2]), pc1 + pc2, rtol=1e-5
    )
    # The targets moved by beta towards the observed similarities.
    cos = _cos(g1, g2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(strategy.targets),
        [[0, 0.5 * cos], [0.5 * cos, 0]],
        rtol=1e-5,
    )


def test_adjusted_cosine_equals_the_target():
    # Step 1 sets phi_12 = phi_21 = beta * cos_1 < 0; step 2 has a stronger
    # conflict, so each gradient is moved until its cosine with the other
    # task's gradient equals the target.
    strategy = GradVac(beta=0.5, seed=0)
    strategy(np.array([[1.0, 0.2], [-0.3, 1.0]], "float32"))
    targets = keras.ops.convert_to_numpy(strategy.targets).copy()
    assert targets[0, 1] < 0 and targets[1, 0] < 0
    grads = np.array([[1.0, 0.1], [-1.0, 0.3]], "float32")
    assert _cos(grads[0], grads[1]) < targets[0, 1]
    _, weights = strategy(grads)
    weights = keras.ops.convert_to_numpy(weights)
    projected_1 = grads[0] + (weights[1] - 1.0) * grads[1]
    projected_2 = grads[1] + (weights[0] - 1.0) * grads[0]
    np.testing.assert_allclose(_cos(projected_1, grads[1]), targets[0, 1], atol=1e-5)
    np.testing.assert_allclose(_cos(projected_2, grads[0]), targets[1, 0], atol=1e-5)


def test_non_conflicting_gradients_pass_unchanged():
    grads = np.array([[1.0, 0.5, 0.0], [0.2, 1.0, 1.0], [0.0, 0.1, 2.0]], "float32")
    strategy = GradVac(seed=3)
    update, weights = strategy(grads)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), grads.sum(0), rtol=1e-6
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weights), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.targets), 0.0)


@pytest.mark.parametrize("beta", [0.5, 0.01])
def test_matches_reference_with_fixed_orders(beta):
    rng = np.random.default_rng(0)
    orders = [[2, 0, 1], [0, 2, 1], [1, 0, 2]]
    strategy = _FixedOrderGradVac(orders, beta=beta)
    strategy.build((3, 6))
    targets = np.zeros((3, 3))
    for _ in range(3):
        grads = rng.normal(size=(3, 6)).astype("float32")
        update, weights = strategy(grads)
        expected, targets, _ = _reference(grads, targets, orders, beta)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(update), expected, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(weights) @ grads, expected, rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(strategy.targets), targets, rtol=1e-4, atol=1e-6
        )
    assert np.any(targets < 0)


def test_orders_are_random_permutations_and_seeded():
    strategy = GradVac(seed=7)
    strategy.build((4, 2))
    draws = [np.asarray(strategy._task_orders(4)) for _ in range(20)]
    for orders in draws:
        for row in orders:
            assert sorted(row.tolist()) == [0, 1, 2, 3]
    assert len({d.tobytes() for d in draws}) > 1
    other = GradVac(seed=7)
    other.build((4, 2))
    np.testing.assert_array_equal(np.asarray(other._task_orders(4)), draws[0])


def test_deterministic_for_a_seed():
    grads = np.random.default_rng(1).normal(size=(4, 5)).astype("float32")
    results = []
    for _ in range(2):
        strategy = GradVac(seed=11)
        results.append(
            [keras.ops.convert_to_numpy(strategy(grads)[0]) for _ in range(2)]
        )
    np.testing.assert_array_equal(results[0], results[1])


def test_degenerate_inputs_are_finite():
    cases = [
        np.zeros((3, 4)),
        np.array([[1.0, 2.0, 3.0], [-2.0, -4.0, -6.0], [1.0, 2.0, 3.0]]),
        1e-10 * np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0], [0.0, 0.0, 1.0]]),
        1e10 * np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0], [0.0, 0.0, 1.0]]),
        np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]),
    ]
    for grads in cases:
        strategy = GradVac(seed=0)
        for _ in range(2):
            update, weights = strategy(grads.astype("float32"))
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(update))), grads
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(weights))), grads
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(strategy.targets)))
        assert np.all(np.abs(keras.ops.convert_to_numpy(strategy.targets)) <= 1.0)
    # Exactly opposite gradients: cos = -1, the projections cancel them.
    strategy = GradVac(seed=0)
    update = strategy.aggregate(np.array([[1.0, 2.0], [-1.0, -2.0]], "float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), [0.0, 0.0], atol=1e-5
    )


def test_one_task_passes_through():
    strategy = GradVac()
    update = strategy.aggregate(np.array([[1.0, -3.0]], "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(update), [1.0, -3.0])


def test_eager_equals_xla():
    rng = np.random.default_rng(2)
    cases = [(rng.normal(size=(3, 5)).astype("float32"), None) for _ in range(3)]
    make = functools.partial(GradVac, seed=5)
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=1e-6)


def test_training_false_leaves_targets():
    strategy = GradVac(seed=0)
    grads = np.array([[1.0, 0.0], [-1.0, 1.0]], "float32")
    strategy.build(grads.shape)
    strategy(grads, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.targets), 0.0)


def test_invalid_arguments():
    for kwargs, name in [
        ({"beta": 1.5}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"group_type": 1}, "group_type"),
        ({"rep_grad": True}, "rep_grad"),
    ]:
        with pytest.raises(ValueError, match=name):
            GradVac(**kwargs)


def test_config_and_registry():
    strategy = GradVac(beta=0.1, seed=3)
    config = strategy.get_config()
    assert (config["beta"], config["group_type"], config["seed"]) == (0.1, 0, 3)
    assert GradVac.from_config(config).get_config() == config
    for name in ("gradvac", "grad_vac", "gradient_vaccine", "GradVac"):
        assert isinstance(weighting.get(name), GradVac)
    restored = weighting.deserialize(weighting.serialize(strategy))
    assert isinstance(restored, GradVac) and restored.seed == 3


def test_state_round_trip_and_reset():
    rng = np.random.default_rng(4)
    sequence = [rng.normal(size=(3, 4)).astype("float32") for _ in range(4)]
    strategy = GradVac(seed=2)
    strategy.build((3, 4))
    for grads in sequence[:3]:
        strategy(grads)
    assert np.any(keras.ops.convert_to_numpy(strategy.targets) != 0)
    clone = GradVac.from_config(strategy.get_config())
    clone.build((3, 4))
    clone.set_weights(strategy.get_weights())
    # The RNG state is not a weight: copy it to get the same task orders.
    clone.seed_generator.state.assign(strategy.seed_generator.state)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(clone(sequence[3])[0]),
        keras.ops.convert_to_numpy(strategy(sequence[3])[0]),
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(clone.targets),
        keras.ops.convert_to_numpy(strategy.targets),
    )

    strategy.reset_state()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.targets), 0.0)


# --- Missing tasks --------------------------------------------------------


def _warmed_up(rng, num_tasks=4, dim=6, steps=1, seed=21):
    strategy = GradVac(seed=seed)
    strategy.build((num_tasks, dim))
    for _ in range(steps):
        strategy(rng.normal(size=(num_tasks, dim)).astype("float32"))
    # Make every pair's target negative (and distinct), as after long runs.
    targets = -rng.uniform(0.05, 0.4, size=(num_tasks, num_tasks))
    strategy.targets.assign(targets * (1 - np.eye(num_tasks)))
    return strategy


def test_missing_tasks_all_present_mask_equals_unmasked():
    rng = np.random.default_rng(5)
    steps = [rng.normal(size=(4, 5)).astype("float32") for _ in range(2)]
    checks.assert_all_ones_mask_is_no_mask(functools.partial(GradVac, seed=6), steps)


@pytest.mark.parametrize("absent", [(1,), (0, 3)])
def test_missing_tasks_equal_gradvac_on_present_tasks(absent):
    # A GradVac built for the present tasks, with the present pairs' targets
    # and the same seed-generator state, gives the same update, weights and
    # new targets of present pairs; pairs with an absent task keep theirs.
    rng = np.random.default_rng(6)
    full = _warmed_up(rng)
    present = [t for t in range(4) if t not in absent]
    small = GradVac(seed=0)
    small.build((len(present), 6))
    small.targets.assign(
        keras.ops.convert_to_numpy(full.targets)[np.ix_(present, present)]
    )
    small.seed_generator.state.assign(full.seed_generator.state)
    before = keras.ops.convert_to_numpy(full.targets).copy()
    for _ in range(2):
        grads = 3 * rng.normal(size=(4, 6))
        grads[present[-1]] -= 2 * grads[present[0]]  # a strong conflict
        grads, mask = checks.with_absent(grads, absent=absent)
        # The (T, T) targets are compared pair by pair below.
        checks.assert_absent_task_is_dropped(
            full, small, mask, [grads], rtol=1e-7, atol=1e-5, skip_state=("targets",)
        )
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(full.targets)[np.ix_(present, present)],
            keras.ops.convert_to_numpy(small.targets),
            atol=1e-6,
        )
    after = keras.ops.convert_to_numpy(full.targets)
    np.testing.assert_array_equal(after[:, list(absent)], before[:, list(absent)])
    assert np.any(after != before)  # the present pairs moved


def test_missing_tasks_orders_restricted_to_present_tasks():
    mask = np.array([1, 0, 1, 1, 0], "float32")
    present = np.flatnonzero(mask)
    full, small = GradVac(seed=4), GradVac(seed=4)
    full.build((5, 2))
    small.build((3, 2))
    for _ in range(3):
        orders = np.asarray(full._task_orders(5, mask))
        ref = np.asarray(small._task_orders(3))
        for rank, i in enumerate(present):
            assert sorted(orders[i].tolist()) == list(range(5))
            np.testing.assert_array_equal(orders[i][:3], present[ref[rank]])


def test_missing_tasks_restore_absent_state():
    rng = np.random.default_rng(7)
    strategy = _warmed_up(rng)
    grads, mask = checks.with_absent(3 * rng.normal(size=(4, 6)), absent=(2,))
    before, _ = checks.assert_restore_keeps_absent_state(
        strategy, mask, lambda: strategy(grads, task_mask=mask), moved="any"
    )
    # The targets of the absent task's pairs: its row above, its column here.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy.targets)[:, 2],
        before[strategy.targets.path][:, 2],
    )
    assert [axis for _, axis in strategy.per_task_state()] == [0]


def test_missing_tasks_finite():
    rng = np.random.default_rng(8)
    g = rng.normal(size=(3, 4)).astype("float32")
    cases = [
        (g * np.array([[1e10], [1.0], [1e-10]], "float32"), [1.0, 0.0, 1.0]),
        (np.zeros((3, 4), "float32"), [0.0, 0.0, 0.0]),
        (g, [0.0, 0.0, 1.0]),
        (g * 1e-10, [1.0, 1.0, 0.0]),
    ]
    strategy = _warmed_up(rng, num_tasks=3, dim=4)
    checks.assert_masked_outputs_finite(strategy, cases)
    # One present task passes unchanged.
    update, _ = strategy(g * [[0.0], [1.0], [0.0]], task_mask=[0.0, 1.0, 0.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(update), g[1], rtol=1e-6)


def test_missing_tasks_eager_equals_xla():
    rng = np.random.default_rng(9)
    cases = [
        checks.with_absent(rng.normal(size=(4, 5)), absent=absent)
        for absent in [(), (1,), (0, 2), (3,)]
    ]
    make = functools.partial(GradVac, seed=5)
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=1e-6)


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# Random task orders: no permutation check. The family runs up to T = 3
# here, plus exactly opposed rows at T = 20 (the kind that broke CAGrad).
def test_degenerate_inputs():
    cases = degenerate_inputs.degenerate_cases(
        shapes=((1, 7), (2, 7), (3, 50))
    ) + degenerate_inputs.degenerate_cases(kinds=("opposed",), shapes=((20, 11),))
    degenerate_checks.check_cases(
        on_jax(lambda: GradVac(seed=0)), cases, lambda case: {"permutation": False}
    )


def test_evaluation_call_keeps_the_random_state():
    """training=False draws what the next training call draws and leaves
    the seed generator's state (and the targets) unchanged."""
    grads = np.random.default_rng(0).normal(size=(3, 9))
    degenerate_checks.assert_evaluation_keeps_random_state(
        lambda: GradVac(seed=1), grads
    )
