"""Tests of `RandomGradientWeighting`, RGW (Lin et al., TMLR 2022)."""

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
import tensorflow as tf
from backend_grads import tf_only
from fresh_compiled import on_jax
from keras import ops
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp

import keras_mtl
from keras_mtl.weighting.random_gradient_weighting import RandomGradientWeighting
from keras_mtl.weighting.random_loss_weighting import RandomLossWeighting

pytestmark = pytest.mark.both_backends

GRADS = np.array(
    [[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 4.0, -1.0], [2.0, 2.0, -3.0, 0.0]], "float32"
)


def test_registry_names_resolve():
    for name in ["rgw", "random_gradient_weighting", "RandomGradientWeighting"]:
        assert isinstance(keras_mtl.weighting.get(name), RandomGradientWeighting)


def test_weights_are_a_random_point_of_the_simplex_and_the_update_their_combination():
    strategy = RandomGradientWeighting(seed=3)
    seen = []
    for _ in range(4):
        update, weights = strategy(ops.convert_to_tensor(GRADS))
        weights = np.asarray(weights)
        assert np.all(weights > 0) and abs(weights.sum() - 1.0) < 1e-6
        np.testing.assert_allclose(np.asarray(update), weights @ GRADS, rtol=1e-6)
        seen.append(weights)
    assert np.ptp(np.array(seen), axis=0).min() > 1e-3  # fresh draws each step


def test_draws_are_those_of_rlw_with_the_same_seed():
    rgw = RandomGradientWeighting(distribution="uniform", seed=11)
    rlw = RandomLossWeighting(distribution="uniform", seed=11)
    for _ in range(3):
        _, w_gradients = rgw(ops.convert_to_tensor(GRADS))
        _, w_losses = rlw(ops.ones((3,)))
        np.testing.assert_array_equal(np.asarray(w_gradients), np.asarray(w_losses))


@tf_only
def test_mean_weight_is_uniform_and_mean_update_the_row_mean():
    strategy = RandomGradientWeighting(seed=0)
    grads = ops.convert_to_tensor(GRADS)
    strategy(grads, training=False)

    @tf.function
    def draws():
        total_update = tf.zeros((4,))
        total_weights = tf.zeros((3,))
        for _ in tf.range(2000):
            update, weights = strategy(grads)
            total_update += update
            total_weights += weights
        return total_update / 2000.0, total_weights / 2000.0

    mean_update, mean_weights = draws()
    # softmax of 3 normals: each weight has a standard deviation of about 0.2.
    np.testing.assert_allclose(np.asarray(mean_weights), np.full(3, 1 / 3), atol=0.015)
    np.testing.assert_allclose(np.asarray(mean_update), GRADS.mean(axis=0), atol=0.06)


def test_evaluation_uses_the_expected_weights_without_drawing():
    strategy = RandomGradientWeighting(seed=0)
    update, weights = strategy(ops.convert_to_tensor(GRADS), training=False)
    state = np.asarray(strategy.seed_generator.state).copy()
    np.testing.assert_allclose(np.asarray(weights), np.full(3, 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(update), GRADS.mean(axis=0), rtol=1e-6)
    strategy(ops.convert_to_tensor(GRADS), training=False)
    np.testing.assert_array_equal(np.asarray(strategy.seed_generator.state), state)


def test_reset_state_rewinds_the_draws():
    strategy = RandomGradientWeighting(seed=5)
    first = [np.asarray(strategy(ops.convert_to_tensor(GRADS))[1]) for _ in range(2)]
    strategy.reset_state()
    again = [np.asarray(strategy(ops.convert_to_tensor(GRADS))[1]) for _ in range(2)]
    np.testing.assert_array_equal(first, again)


@tf_only
def test_absent_task_gets_weight_zero_and_the_present_ones_a_two_task_draw():
    full = RandomGradientWeighting(seed=2)
    small = RandomGradientWeighting(seed=2)
    grads, mask = checks.with_absent(GRADS, absent=[1])
    checks.assert_absent_task_is_dropped(full, small, mask, [grads] * 3)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distribution"):
        RandomGradientWeighting(distribution="gamma")
    with pytest.raises(ValueError, match="seed"):
        RandomGradientWeighting(seed=1.5)


@tf_only
def test_same_shared_update_as_rlw_and_heads_unscaled():
    """In a model, one SGD step: RGW and RLW (same seed, same draw) move the
    trunk identically; RLW's head steps are RGW's times w_t."""
    steps = {}
    for strategy in (RandomGradientWeighting(seed=4), RandomLossWeighting(seed=4)):
        model = two_task_mlp()
        model.compile(
            optimizer=keras.optimizers.SGD(1.0),
            loss=TWO_TASK_LOSSES,
            loss_weighting=strategy,
        )
        x, y = two_task_data(n=8)
        before = [np.asarray(v).copy() for v in model.trainable_variables]
        logs = model.train_on_batch(x, y, return_dict=True)
        deltas = {
            v.path: np.asarray(v) - b for v, b in zip(model.trainable_variables, before)
        }
        steps[type(strategy).__name__] = (deltas, logs)
    rgw, rgw_logs = steps["RandomGradientWeighting"]
    rlw, rlw_logs = steps["RandomLossWeighting"]
    weights = {t: rgw_logs[f"{t}_weight"] for t in ("cls", "reg")}
    for t in ("cls", "reg"):
        assert rgw_logs[f"{t}_weight"] == pytest.approx(rlw_logs[f"{t}_weight"])
    for path, delta in rgw.items():
        if path.startswith("trunk"):
            np.testing.assert_allclose(rlw[path], delta, rtol=1e-5, atol=1e-7)
        else:
            task = path.split("_head")[0]
            assert abs(weights[task] - 1.0) > 0.05  # scales are distinguishable
            np.testing.assert_allclose(
                rlw[path], weights[task] * delta, rtol=1e-5, atol=1e-7
            )


# --- Degenerate inputs (issue 15; tests/weighting/degenerate_inputs.py) ---
# Random weights: no permutation check; a fixed draw scales with the
# gradients (the same seed draws the same weights).


@tf_only
@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    degenerate_checks.check_cases(
        on_jax(lambda: RandomGradientWeighting(seed=0)),
        degenerate_inputs.degenerate_cases(shapes=[shape]),
        lambda case: {"permutation": False, "homogeneous": True},
    )
