"""Tests of `IMTLL` (IMTL-L, Liu et al., ICLR 2021)."""

import functools

import keras
import missing_task_checks as checks
import numpy as np
import pytest
import tensorflow as tf
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.imtl_l import IMTLL

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _built(num_tasks=2, **kwargs):
    strategy = IMTLL(**kwargs)
    strategy.build((num_tasks,))
    return strategy


def test_registry_and_config_round_trip():
    for name in ["imtl_l", "imtl_loss", "IMTL-L", "IMTLL"]:
        assert isinstance(keras_mtl.weighting.get(name), IMTLL)
    assert IMTLL.registry_name == "imtl_l"
    strategy = IMTLL(init=[0.5, -1.0])
    config = strategy.get_config()
    assert config["init"] == [0.5, -1.0]
    assert IMTLL.from_config(config).get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert restored.get_config() == config
    assert IMTLL().get_config()["init"] == 0.0


def test_invalid_arguments_raise():
    for init, match in [
        (float("inf"), "init=inf"),
        ("zero", "init='zero'"),
        ([], r"init=\[\]"),
        ([0.0, float("nan")], r"init=\[0.0, nan\]"),
        (True, "init=True"),
    ]:
        with pytest.raises(ValueError, match=match):
            IMTLL(init=init)
    with pytest.raises(ValueError, match="2 `init` values"):
        _built(3, init=[0.0, 1.0])


def test_closed_form_and_derivatives():
    s = np.array([0.3, -1.2, 0.0])
    losses = np.array([2.0, 0.5, 7.0])
    strategy = _built(3, init=list(s))
    (total, weights), (grad, grad_s) = value_and_grad(
        strategy, losses, variables=[strategy.loss_scales]
    )
    np.testing.assert_allclose(float(total), np.sum(np.exp(s) * losses - s), rtol=1e-6)
    np.testing.assert_allclose(weights, np.exp(s), rtol=1e-6)
    # d/dL = exp(s) (the reported weights); d/ds = exp(s) L - 1.
    np.testing.assert_allclose(grad, weights, rtol=1e-6)
    np.testing.assert_allclose(grad_s, np.exp(s) * losses - 1.0, rtol=1e-5)
    assert strategy.trainable_weights == [strategy.loss_scales]


@tf_only
def test_optimising_s_on_fixed_losses_makes_every_scaled_loss_one():
    losses = _t([0.05, 1.0, 3.0, 250.0])
    strategy = _built(4)

    @tf.function(jit_compile=True)
    def descend():
        for _ in tf.range(300):
            with tf.GradientTape() as tape:
                total, _ = strategy(losses)
            grad = tape.gradient(total, strategy.loss_scales)
            strategy.loss_scales.assign_sub(0.5 * grad)

    descend()
    scaled = np.exp(np.asarray(strategy.loss_scales)) * np.asarray(losses)
    np.testing.assert_allclose(scaled, 1.0, rtol=1e-4)
    # At the optimum the weights are 1 / L_t.
    np.testing.assert_allclose(
        np.asarray(strategy(losses)[1]), 1.0 / np.asarray(losses), rtol=1e-4
    )


@tf_only
def test_with_a_keras_optimizer_the_scales_converge_too():
    losses = _t([0.2, 8.0])
    strategy = _built(2)
    optimizer = keras.optimizers.Adam(learning_rate=0.1)
    optimizer.build(strategy.trainable_variables)

    @tf.function
    def train():
        for _ in tf.range(400):
            with tf.GradientTape() as tape:
                total, _ = strategy(losses)
            grads = tape.gradient(total, strategy.trainable_variables)
            optimizer.apply(grads, strategy.trainable_variables)

    train()
    scaled = np.exp(np.asarray(strategy.loss_scales)) * np.asarray(losses)
    np.testing.assert_allclose(scaled, 1.0, atol=2e-2)


def _tiny_problem():
    """A 2-task model: shared dense trunk, one linear head per task."""
    rng = np.random.default_rng(0)
    x = _t(rng.normal(size=(16, 3)))
    y1 = _t(rng.normal(size=(16, 1)))
    y2 = _t(rng.normal(size=(16, 1)))
    trunk = keras.layers.Dense(4, activation="tanh")
    head1, head2 = keras.layers.Dense(1), keras.layers.Dense(1)
    for layer, shape in ((trunk, (None, 3)), (head1, (None, 4)), (head2, (None, 4))):
        layer.build(shape)
    variables = [*trunk.trainable_variables, *head1.trainable_variables]
    variables += head2.trainable_variables

    def task_losses(scale):
        z = trunk(x)
        l1 = ops.mean((head1(z) - y1) ** 2)
        l2 = ops.mean((head2(z) - y2) ** 2)
        return ops.stack([l1, scale * l2])

    return task_losses, variables


def test_at_the_optimal_scales_a_loss_rescaling_changes_nothing():
    task_losses, variables = _tiny_problem()

    def gradient_at_optimum(scale):
        strategy = _built(2, init=list(-np.log(np.asarray(task_losses(scale)))))
        _, grads = value_and_grad(
            lambda: strategy(task_losses(scale))[0], variables=variables
        )
        return np.concatenate([g.ravel() for g in grads])

    np.testing.assert_allclose(
        gradient_at_optimum(100.0), gradient_at_optimum(1.0), rtol=1e-4, atol=1e-7
    )


@tf_only
def test_eager_and_xla_agree():
    make = functools.partial(_built, 3, init=[0.1, -0.4, 1.0])
    checks.assert_xla_matches_eager(make, [(_t([0.3, 2.0, 5.0]), None)])


@tf_only
def test_state_round_trip_and_reset():
    strategy = _built(2, init=0.25)
    strategy.loss_scales.assign([0.7, -2.0])
    losses = _t([1.5, 3.0])
    checks.assert_state_round_trip(strategy, [losses])
    strategy.reset_state()
    np.testing.assert_array_equal(np.asarray(strategy.loss_scales), [0.25, 0.25])
    # Calling the strategy never changes s by itself (only the optimizer).
    strategy(losses, training=True)
    np.testing.assert_array_equal(np.asarray(strategy.loss_scales), [0.25, 0.25])


def test_degenerate_inputs_give_finite_results():
    strategy = _built(3)
    for losses in ([0.0, 1.0, 2.0], [1e-10, 1e10, 1.0]):
        total, weights = strategy(_t(losses))
        assert np.isfinite(float(total)) and np.all(np.isfinite(np.asarray(weights)))
    total, weights = _built(1)(_t([4.0]))
    np.testing.assert_allclose([float(total)], [4.0])
    np.testing.assert_allclose(np.asarray(weights), [1.0])


def test_permutation_equivariance():
    s = np.array([0.2, -0.5, 1.0])
    losses = np.array([3.0, 0.5, 1.5], np.float32)
    perm = np.array([1, 2, 0])
    total_a, weights_a = _built(3, init=list(s))(_t(losses))
    total_b, weights_b = _built(3, init=list(s[perm]))(_t(losses[perm]))
    np.testing.assert_allclose(float(total_a), float(total_b), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(weights_a)[perm], np.asarray(weights_b), rtol=1e-6
    )


# --- Missing tasks ------------------------------------------------------

_INIT = [0.3, -1.2, 0.5]
_call = functools.partial(checks.loss_call, wrt=("loss_scales",))


@tf_only
def test_missing_tasks_all_present_mask_changes_nothing():
    make = functools.partial(_built, 3, init=_INIT)
    checks.assert_all_ones_mask_is_no_mask(make, [[0.5, 2.0, 3.0]], call=_call)


@tf_only
def test_absent_task_is_left_out_as_if_only_present_tasks_existed():
    strategy = _built(3, init=_INIT)
    present_only = _built(2, init=[_INIT[0], _INIT[2]])
    checks.assert_absent_task_is_dropped(
        strategy,
        present_only,
        [1.0, 0.0, 1.0],
        [[0.5, 0.0, 3.0]],
        call=_call,
        per_task=(False, True, True, True),
    )
    # Unmasked, the zero loss would push s_1 up by -(exp(s) * 0 - 1) = +1.
    assert _call(strategy, [0.5, 0.0, 3.0])[3][1] == -1.0
    # No task present: a zero objective, finite and zero gradients.
    for value in _call(strategy, [0.0, 0.0, 0.0], _t([0.0, 0.0, 0.0])):
        np.testing.assert_array_equal(value, 0.0)


@tf_only
def test_absent_task_scale_is_restored_after_an_optimizer_step():
    strategy = _built(3, init=_INIT)
    # Adam gathers momentum in a step with every task, then task 1 is absent.
    checks.assert_restore_undoes_optimizer_steps(
        strategy,
        "loss_scales",
        [([1.0, 2.0, 3.0], [1.0] * 3), ([1.0, 0.0, 3.0], [1.0, 0.0, 1.0])],
    )
    assert [axis for _, axis in strategy.per_task_state()] == [0]


@tf_only
def test_masked_eager_equals_xla():
    cases = [
        ([1.0, 0.0, 3.0], [1.0, 0.0, 1.0]),
        ([0.0, 2.0, 0.0], [0.0, 1.0, 0.0]),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ]
    make = functools.partial(_built, 3, init=_INIT)
    checks.assert_xla_matches_eager(make, cases, call=_call)
