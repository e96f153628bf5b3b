"""Tests of `SoftAdapt` (Heydari, Thompson, Mehmood, arXiv 1912.12355)."""

import functools
import itertools
from fractions import Fraction

import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.soft_adapt import SoftAdapt, forward_difference_coefficients

pytestmark = pytest.mark.both_backends

VARIANTS = ["plain", "normalized", "loss_weighted"]


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _reference_weights(history, beta, variant, order):
    """Float64 re-derivation of the official algorithm, times T.

    dr-aheydari/SoftAdapt: `softadapt/utilities/_finite_difference.py`
    (forward coefficients applied to the values oldest first),
    `softadapt/base/_softadapt_base_class.py::_softmax` (exp(beta (s -
    max s)), optionally times the mean loss, over the sum + 1e-8); the
    normalised slopes divide by the L1 norm (`SoftAdapt/SoftAdapt.py`).
    """
    history = np.asarray(history, np.float64)
    table = {
        1: [-1, 1],
        2: [-1.5, 2, -0.5],
        3: [-11 / 6, 3, -1.5, 1 / 3],
        4: [-25 / 12, 4, -3, 4 / 3, -0.25],
        5: [-137 / 60, 5, -5, 10 / 3, -1.25, 0.2],
    }
    slopes = np.asarray(table[order]) @ history
    if variant == "normalized":
        slopes = slopes / (np.abs(slopes).sum() + 1e-8)
    exp = np.exp(beta * (slopes - slopes.max()))
    if variant == "loss_weighted":
        exp = exp * history.mean(axis=0)
    return history.shape[1] * exp / (exp.sum() + 1e-8)


def _run(strategy, sequence, training=True):
    return np.stack(
        [np.asarray(strategy(_t(row), training=training)[1]) for row in sequence]
    )


def test_registry_and_config_round_trip():
    for name in ["softadapt", "soft_adapt", "SoftAdapt", "soft-adapt"]:
        assert isinstance(keras_mtl.weighting.get(name), SoftAdapt)
    assert SoftAdapt.registry_name == "softadapt"
    strategy = SoftAdapt(
        beta=-0.5, variant="Loss-Weighted", accuracy_order=4, update_every=5
    )
    config = strategy.get_config()
    assert config["beta"] == -0.5
    assert config["variant"] == "loss_weighted"
    assert config["accuracy_order"] == 4 and config["update_every"] == 5
    assert SoftAdapt.from_config(config).get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert restored.get_config() == config
    assert SoftAdapt(variant="normalised").variant == "normalized"
    assert SoftAdapt(accuracy_order=np.int64(2)).accuracy_order == 2


def test_invalid_arguments_raise():
    cases = [
        ({"beta": float("inf")}, "beta=inf"),
        ({"beta": "big"}, "beta='big'"),
        ({"variant": "softmax"}, "variant='softmax'"),
        ({"accuracy_order": 0}, "accuracy_order=0"),
        ({"accuracy_order": 2.0}, "accuracy_order=2.0"),
        ({"update_every": 0}, "update_every=0"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            SoftAdapt(**kwargs)


def test_forward_difference_coefficients():
    # Official constants (softadapt/constants/_finite_difference_constants.py)
    # for orders 1, 3, 5 and findiff's forward coefficients for 2 and 4.
    expected = {
        1: [-1, 1],
        2: [Fraction(-3, 2), 2, Fraction(-1, 2)],
        3: [Fraction(-11, 6), 3, Fraction(-3, 2), Fraction(1, 3)],
        4: [Fraction(-25, 12), 4, -3, Fraction(4, 3), Fraction(-1, 4)],
        5: [
            Fraction(-137, 60),
            5,
            -5,
            Fraction(10, 3),
            Fraction(-5, 4),
            Fraction(1, 5),
        ],
    }
    for order, values in expected.items():
        np.testing.assert_allclose(
            forward_difference_coefficients(order), [float(v) for v in values]
        )
    # Order p differentiates polynomials of degree <= p exactly at x = 0.
    for order in range(1, 9):
        c = np.asarray(forward_difference_coefficients(order))
        x = np.arange(order + 1, dtype=np.float64)
        np.testing.assert_allclose(c @ (x + 1.0) ** order, order, rtol=1e-9)
        np.testing.assert_allclose(c.sum(), 0.0, atol=1e-12)


def test_weights_match_the_official_algorithm():
    rng = np.random.default_rng(3)
    for variant, (order, beta) in itertools.product(
        VARIANTS, [(1, 0.1), (4, 2.0), (3, -1.0)]
    ):
        history = rng.uniform(0.5, 3.0, size=(order + 1, 3))
        strategy = SoftAdapt(beta=beta, variant=variant, accuracy_order=order)
        strategy.build((3,))
        np.testing.assert_allclose(
            np.asarray(strategy.weights_from_history(_t(history))),
            _reference_weights(history, beta, variant, order),
            rtol=1e-5,
        )
        # Through the step interface the last call returns the same weights.
        weights = _run(strategy, history)
        np.testing.assert_allclose(
            weights[-1], _reference_weights(history, beta, variant, order), rtol=1e-5
        )


def test_slower_task_gets_the_larger_weight():
    # Task 0 drops fast, task 1 slowly, task 2 not at all.
    sequence = [[2.0, 2.0, 2.0], [1.0, 1.8, 2.0]]
    for variant in VARIANTS:
        weights = _run(SoftAdapt(beta=1.0, variant=variant), sequence)[-1]
        assert weights[0] < weights[1] < weights[2], variant
        np.testing.assert_allclose(weights.sum(), 3.0, rtol=1e-6)
        reversed_weights = _run(SoftAdapt(beta=-1.0, variant=variant), sequence)[-1]
        assert reversed_weights[0] > reversed_weights[1] > reversed_weights[2]


def test_beta_zero_gives_equal_weights():
    sequence = [[5.0, 0.1, 2.0], [1.0, 0.2, 1.9], [0.5, 0.3, 1.0]]
    for variant in ["plain", "normalized"]:
        weights = _run(SoftAdapt(beta=0.0, variant=variant), sequence)
        np.testing.assert_allclose(weights, 1.0, rtol=1e-6)
    # The loss-weighted variant then weights by the mean stored losses.
    weights = _run(SoftAdapt(beta=0.0, variant="loss_weighted"), sequence)[-1]
    means = np.mean(sequence[-2:], axis=0)
    np.testing.assert_allclose(weights, 3 * means / means.sum(), rtol=1e-5)


def test_normalized_variant_is_invariant_to_a_common_loss_scale():
    sequence = np.array([[3.0, 1.0, 2.0], [2.0, 0.9, 2.1]])
    normalized = [
        _run(SoftAdapt(beta=3.0, variant="normalized"), sequence * c)[-1]
        for c in (1.0, 1e-3, 1e3)
    ]
    np.testing.assert_allclose(normalized[1], normalized[0], rtol=1e-4)
    np.testing.assert_allclose(normalized[2], normalized[0], rtol=1e-4)
    # The plain variant is not (the check can fail).
    plain = [_run(SoftAdapt(beta=3.0), sequence * c)[-1] for c in (1.0, 1e3)]
    assert not np.allclose(plain[0], plain[1], rtol=1e-2)


def test_schedule_warm_up_and_update_every():
    rng = np.random.default_rng(0)
    sequence = rng.uniform(0.5, 2.0, size=(12, 2))
    strategy = SoftAdapt(beta=1.0, accuracy_order=2, update_every=3)
    weights = _run(strategy, sequence)
    # Steps 1 and 2 (indices 0, 1): history not full, weights 1.
    np.testing.assert_array_equal(weights[:2], 1.0)
    # Updates at steps 3, 6, 9, 12 (indices 2, 5, 8, 11) from the last 3
    # values; the weights are held in between.
    for index in (2, 5, 8, 11):
        np.testing.assert_allclose(
            weights[index],
            _reference_weights(sequence[index - 2 : index + 1], 1.0, "plain", 2),
            rtol=1e-5,
        )
        if index + 2 < len(sequence):
            np.testing.assert_array_equal(weights[index + 1], weights[index])
            np.testing.assert_array_equal(weights[index + 2], weights[index])
    assert int(np.asarray(strategy.step_count)) == 12


def test_evaluation_returns_the_current_weights_without_recording():
    strategy = SoftAdapt(beta=1.0)
    _run(strategy, [[1.0, 1.0], [0.5, 1.0]])
    state = [np.asarray(w).copy() for w in strategy.weights]
    total, weights = strategy(_t([10.0, 0.1]), training=False)
    np.testing.assert_array_equal(np.asarray(weights), state[2])
    np.testing.assert_allclose(float(total), float(np.dot(state[2], [10.0, 0.1])))
    for before, after in zip(state, strategy.weights):
        np.testing.assert_array_equal(before, np.asarray(after))


@tf_only
def test_eager_and_xla_agree():
    rng = np.random.default_rng(1)
    cases = [(x, None) for x in _t(rng.uniform(0.5, 2.0, size=(6, 3)))]
    for variant in VARIANTS:
        make = functools.partial(SoftAdapt, beta=2.0, variant=variant, accuracy_order=2)
        checks.assert_xla_matches_eager(make, cases, rtol=1e-5, state_rtol=1e-6)


@tf_only
def test_state_round_trip_and_reset():
    strategy = SoftAdapt(beta=1.0, variant="loss_weighted", accuracy_order=2)
    sequence = [[1.0, 2.0], [0.8, 2.0], [0.7, 1.5], [0.6, 1.4]]
    _run(strategy, sequence)
    checks.assert_state_round_trip(
        strategy, [_t(row) for row in ([0.5, 1.3], [0.45, 1.3])]
    )
    strategy.reset_state()
    np.testing.assert_array_equal(np.asarray(strategy.loss_history), 0.0)
    np.testing.assert_array_equal(np.asarray(strategy.task_weights), 1.0)
    assert int(np.asarray(strategy.step_count)) == 0
    # After the reset the warm-up starts again.
    np.testing.assert_array_equal(_run(strategy, sequence[:2]), 1.0)


def test_degenerate_inputs_give_finite_results():
    for variant in VARIANTS:
        strategy = SoftAdapt(beta=0.1, variant=variant)
        weights = _run(strategy, [[0.0, 0.0], [0.0, 0.0], [1e10, 1e-10], [1e-10, 1e10]])
        assert np.all(np.isfinite(weights)), variant
        assert np.all(weights >= 0)
    single = _run(SoftAdapt(beta=1.0), [[2.0], [1.0]])
    np.testing.assert_allclose(single, 1.0)


def test_objective_uses_constant_weights():
    strategy = SoftAdapt(beta=1.0)
    _run(strategy, [[1.0, 1.0]])
    (_, weights), (grad,) = value_and_grad(strategy, [0.5, 1.0], layers=[strategy])
    np.testing.assert_allclose(grad, weights)


# --- Missing tasks ------------------------------------------------------


def _run_masked(strategy, sequence, masks, training=True):
    return np.stack(
        [
            np.asarray(
                strategy(
                    _t(np.asarray(row) * mask), training=training, task_mask=_t(mask)
                )[1]
            )
            for row, mask in zip(sequence, masks)
        ]
    )


@tf_only
@pytest.mark.parametrize("update_every", [1, 2])
def test_missing_tasks_all_present_mask_changes_nothing(update_every):
    rng = np.random.default_rng(8)
    steps = [_t(x) for x in rng.uniform(0.5, 2.0, size=(7, 3))]
    ones = _t([1.0, 1.0, 1.0])
    for variant in VARIANTS:
        make = functools.partial(
            SoftAdapt,
            update_every=update_every,
            beta=2.0,
            variant=variant,
            accuracy_order=2,
        )
        plain, masked, outputs = checks.assert_all_ones_mask_is_no_mask(
            make, steps, rtol=1e-6
        )
        assert not np.allclose(outputs[-1][1], 1.0)
        np.testing.assert_allclose(
            np.asarray(masked(ones, training=False, task_mask=ones)[1]),
            np.asarray(plain(ones, training=False)[1]),
            rtol=1e-6,
        )


@tf_only
@pytest.mark.parametrize(
    "variant, update_every",
    [
        ("plain", 1),
        ("normalized", 1),
        ("loss_weighted", 1),
        ("plain", 2),
        ("loss_weighted", 3),
    ],
)
def test_absent_task_as_if_only_present_tasks_existed(variant, update_every):
    rng = np.random.default_rng(9)
    kwargs = dict(beta=1.5, variant=variant, accuracy_order=2)
    full = SoftAdapt(update_every=update_every, **kwargs)
    present_only = SoftAdapt(update_every=update_every, **kwargs)
    # A few steps with every task, then task 1 goes missing.
    for losses in rng.uniform(0.5, 2.0, size=(4, 3)):
        full(_t(losses))
        present_only(_t(losses[[0, 2]]))
    mask = np.array([1.0, 0.0, 1.0], np.float32)
    steps = [_t(x * mask) for x in rng.uniform(0.5, 2.0, size=(5, 3))]
    checks.assert_absent_task_is_dropped(full, present_only, mask, steps, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(full.loss_history)[:, [0, 2]], np.asarray(present_only.loss_history)
    )
    _, weights = full(_t(mask), training=False, task_mask=_t(mask))
    _, expected = present_only(_t([1.0, 1.0]), training=False)
    np.testing.assert_allclose(
        np.asarray(weights)[[0, 2]], np.asarray(expected), rtol=1e-5
    )


def test_a_task_history_records_only_its_labelled_steps():
    # Task 1 is labelled every other step: its slope is the difference of
    # its last two labelled losses, and on its unlabelled steps the weights
    # of tasks 0 and 2 come from their own histories over K = 2 tasks.
    sequence = np.array(
        [
            [2.0, 3.0, 1.0],
            [1.5, 9.0, 1.1],
            [1.2, 2.0, 1.0],
            [1.0, 9.0, 0.8],
            [0.9, 1.8, 0.8],
        ]
    )
    masks = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 0, 1], [1, 1, 1]], float)
    strategy = SoftAdapt(beta=1.0)
    got = _run_masked(strategy, sequence, masks)
    np.testing.assert_array_equal(got[0], 1.0)  # no slope yet
    two_tasks = _reference_weights(sequence[:2, [0, 2]], 1.0, "plain", 1)
    np.testing.assert_allclose(got[1], np.insert(two_tasks, 1, 0.0), rtol=1e-5)
    labelled = sequence[[0, 2, 4]]  # task 1's labelled losses
    history = np.stack([sequence[3], sequence[4]])
    history[:, 1] = labelled[1:, 1]
    np.testing.assert_allclose(
        got[4], _reference_weights(history, 1.0, "plain", 1), rtol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(strategy.task_steps), [2, 2, 2])


def test_present_task_without_full_history_holds_the_weights():
    # Documented choice: the weights are recomputed only once every present
    # task has n + 1 records; until then the held weights (rescaled to K).
    strategy = SoftAdapt(beta=1.0)
    got = _run_masked(
        strategy,
        [[2.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.5, 4.0, 1.0], [0.4, 3.0, 1.0]],
        np.array([[1, 0, 1], [1, 0, 1], [1, 1, 1], [1, 1, 1]], float),
    )
    fresh = _reference_weights([[2.0, 1.0], [1.0, 1.0]], 1.0, "plain", 1)
    np.testing.assert_allclose(got[1], [fresh[0], 0.0, fresh[1]], rtol=1e-5)
    # Step 3: task 1 has one record; the held weights of tasks 0, 2 and the
    # initial 1 of task 1, rescaled to sum to 3.
    held = np.array([fresh[0], 1.0, fresh[1]])
    np.testing.assert_allclose(got[2], 3 * held / held.sum(), rtol=1e-5)
    np.testing.assert_allclose(
        got[3],
        _reference_weights([[0.5, 4.0, 1.0], [0.4, 3.0, 1.0]], 1.0, "plain", 1),
        rtol=1e-5,
    )


@tf_only
def test_absent_task_state_is_unchanged_and_restorable():
    strategy = SoftAdapt(beta=1.0, accuracy_order=2)
    _run(strategy, [[1.0, 2.0, 3.0], [0.9, 1.9, 2.5], [0.8, 1.7, 2.4]])
    axes = {v.name: axis for v, axis in strategy.per_task_state()}
    assert axes == {"loss_history": 1, "task_weights": 0, "task_steps": 0}
    mask = _t([1.0, 0.0, 1.0])

    def step():
        _, weights = strategy(_t([0.5, 0.0, 2.0]), task_mask=mask)
        assert np.all(np.isfinite(np.asarray(weights)))

    checks.assert_restore_keeps_absent_state(strategy, mask, step, moved="any")
    history = np.asarray(strategy.loss_history)
    np.testing.assert_allclose(history[-1], [0.5, 1.7, 2.0], rtol=1e-6)
    assert int(np.asarray(strategy.step_count)) == 4  # the shared counter advances


@tf_only
def test_masked_degenerate_inputs_are_finite():
    sequence = [[0.0, 0.0], [0.0, 0.0], [1e10, 1e-10], [1e-10, 1e10], [1.0, 1.0]]
    masks = [[1, 1], [0, 0], [1, 1], [1, 0], [0, 0]]
    for variant in VARIANTS:
        checks.assert_masked_outputs_finite(
            SoftAdapt(beta=0.1, variant=variant), list(zip(sequence, masks))
        )


@tf_only
def test_masked_eager_equals_xla():
    rng = np.random.default_rng(10)
    sequence = rng.uniform(0.5, 2.0, size=(8, 3)).astype(np.float32)
    masks = np.array(
        [
            [1, 1, 1],
            [1, 0, 1],
            [1, 1, 1],
            [0, 1, 1],
            [0, 0, 0],
            [1, 1, 0],
            [1, 0, 1],
            [1, 1, 1],
        ],
        np.float32,
    )
    cases = list(zip(sequence * masks, masks))
    for variant in VARIANTS:
        kwargs = dict(beta=2.0, variant=variant, accuracy_order=2, update_every=2)
        make = functools.partial(SoftAdapt, **kwargs)
        checks.assert_xla_matches_eager(make, cases, rtol=1e-5, state_rtol=1e-6)
