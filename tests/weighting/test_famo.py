"""Tests of `FAMO` (Liu, Feng, Stone, Liu, NeurIPS 2023)."""

import functools

import keras
import missing_task_checks as checks
import numpy as np
import pytest
import tensorflow as tf
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.famo import FAMO

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _built(num_tasks=2, logits=None, **kwargs):
    strategy = FAMO(**kwargs)
    strategy.build((num_tasks,))
    if logits is not None:
        strategy.logits.assign(logits)
    return strategy


def _reference_update(xi, m, v, step, old, new, lr=0.025, wd=1e-3, eps=1e-8):
    """Independent float64 re-derivation of one FAMO logit update.

    Cranial-XIX/FAMO, methods/weight_methods.py, FAMO.update: delta =
    log(prev - min + 1e-8) - log(curr - min + 1e-8); the logits' gradient is
    the vector-Jacobian product of softmax with delta; then one step of
    torch.optim.Adam(lr=w_lr, weight_decay=gamma) (L2 term added to the
    gradient, betas (0.9, 0.999), eps 1e-8, bias-corrected moments).
    """
    delta = np.log(np.asarray(old) + eps) - np.log(np.asarray(new) + eps)
    z = np.exp(xi - xi.max())
    z /= z.sum()
    grad = z * (delta - z @ delta) + wd * xi
    step += 1
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad**2
    m_hat, v_hat = m / (1 - 0.9**step), v / (1 - 0.999**step)
    return xi - lr * m_hat / (np.sqrt(v_hat) + 1e-8), m, v, step


def test_registry_and_config_round_trip():
    for name in ["famo", "FAMO"]:
        assert isinstance(keras_mtl.weighting.get(name), FAMO)
    assert FAMO.registry_name == "famo"
    assert FAMO.uses_post_step_losses and FAMO.stateful
    strategy = FAMO(learning_rate=0.01, weight_decay=0.0, min_losses=[0.1, 0.0])
    config = strategy.get_config()
    assert config["learning_rate"] == 0.01
    assert config["weight_decay"] == 0.0
    assert config["min_losses"] == [0.1, 0.0]
    assert config["epsilon"] == 1e-8
    assert FAMO.from_config(config).get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert restored.get_config() == config


def test_invalid_arguments_raise():
    cases = [
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
        ({"learning_rate": "fast"}, "learning_rate='fast'"),
        ({"weight_decay": -1e-3}, "weight_decay=-0.001"),
        ({"epsilon": float("nan")}, "epsilon=nan"),
        ({"min_losses": 0.5}, "min_losses=0.5"),
        ({"min_losses": []}, r"min_losses=\[\]"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            FAMO(**kwargs)
    with pytest.raises(ValueError, match="2 `min_losses`"):
        _built(3, min_losses=[0.0, 0.0])


def test_objective_and_weights_closed_form():
    xi = np.array([0.3, -0.5, 0.1])
    strategy = _built(3, logits=xi, min_losses=[0.1, 0.0, 0.2])
    losses = np.array([0.6, 2.0, 5.0])
    total, weights = strategy(_t(losses))
    z = np.exp(xi) / np.exp(xi).sum()
    gap = losses - np.array([0.1, 0.0, 0.2]) + 1e-8
    c = np.sum(z / gap)
    np.testing.assert_allclose(float(total), np.sum(z / c * np.log(gap)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(weights), z / (c * gap), rtol=1e-5)
    np.testing.assert_allclose(np.sum(np.asarray(weights)), 1.0, rtol=1e-6)
    # The weights are the derivative of the objective (c held constant).
    (_, weights), (grad,) = value_and_grad(strategy, losses, layers=[strategy])
    np.testing.assert_allclose(grad, weights, rtol=1e-5)


def test_logit_updates_match_the_hand_derivation():
    strategy = _built(2)
    old, new = [1.0, 2.0], [0.5, 1.9]
    strategy(_t(old))
    strategy.update_after_step(_t(old), _t(new))
    # Step 1 by hand: z = (1/2, 1/2), delta = (log 2, log(2/1.9)), so
    # g = (+0.1605, -0.1605); Adam's first step moves each logit by lr *
    # g / |g| = 0.025 against the sign of g. Task 1 improved more, so its
    # logit goes down.
    np.testing.assert_allclose(np.asarray(strategy.logits), [-0.025, 0.025], rtol=1e-6)
    strategy.update_after_step(_t(new), _t([0.45, 1.0]))
    # Step 2 by hand (see _reference_update): g = (-0.13406, 0.13406),
    # m = (0.0010353, -0.0010353), v = 4.3696e-5, bias-corrected step
    # 0.025 * 0.0054487 / 0.14785 = 0.000921.
    np.testing.assert_allclose(
        np.asarray(strategy.logits), [-0.0259213, 0.0259213], rtol=1e-5
    )
    assert int(np.asarray(strategy.adam_step)) == 2


def test_many_updates_match_the_reference_adam():
    rng = np.random.default_rng(1)
    num_tasks = 4
    strategy = _built(num_tasks, weight_decay=0.01, learning_rate=0.05)
    xi, m, v, step = np.zeros(num_tasks), np.zeros(num_tasks), np.zeros(num_tasks), 0
    losses = rng.uniform(1.0, 3.0, num_tasks)
    for _ in range(6):
        new = losses * rng.uniform(0.7, 1.05, num_tasks)
        strategy.update_after_step(_t(losses), _t(new))
        xi, m, v, step = _reference_update(
            xi, m, v, step, losses, new, lr=0.05, wd=0.01
        )
        losses = new
    np.testing.assert_allclose(np.asarray(strategy.logits), xi, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(strategy.adam_m), m, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(np.asarray(strategy.adam_v), v, rtol=1e-4, atol=1e-12)


def test_lagging_task_gains_weight():
    strategy = _built(3)
    losses = _t([1.0, 1.0, 1.0])
    before = np.asarray(strategy(losses)[1])
    for _ in range(5):
        # Task 0 halves, task 1 barely moves, task 2 in between.
        strategy.update_after_step(losses, _t([0.5, 0.99, 0.8]))
    after = np.asarray(strategy(losses)[1])
    assert after[1] > before[1] and after[0] < before[0]
    assert after[1] > after[2] > after[0]


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


def test_scaling_one_loss_keeps_the_update_direction_and_the_logit_step():
    task_losses, variables = _tiny_problem()
    strategy = _built(2, logits=[0.4, -0.3])

    def flat_gradient(scale):
        _, grads = value_and_grad(
            lambda: strategy(task_losses(scale))[0], variables=variables
        )
        return np.concatenate([g.ravel() for g in grads])

    base, scaled = flat_gradient(1.0), flat_gradient(100.0)
    cosine = base @ scaled / np.linalg.norm(base) / np.linalg.norm(scaled)
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)
    # The length changes through c, so this is not a trivial identity.
    assert not np.allclose(np.linalg.norm(base), np.linalg.norm(scaled), rtol=1e-2)
    # Equal weighting turns when a loss is rescaled (the check can fail).
    _, grads = value_and_grad(lambda: ops.sum(task_losses(100.0)), variables=variables)
    ew_grad = np.concatenate([g.ravel() for g in grads])
    assert base @ ew_grad / np.linalg.norm(base) / np.linalg.norm(ew_grad) < 0.999

    # The logit update only sees log-ratios: the same with L_2 scaled by 100.
    old, new = np.array([1.2, 0.8]), np.array([1.0, 0.75])
    a, b = _built(2, logits=[0.4, -0.3]), _built(2, logits=[0.4, -0.3])
    a.update_after_step(_t(old), _t(new))
    b.update_after_step(_t(old * [1, 100]), _t(new * [1, 100]))
    np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), rtol=1e-5)


def _protocol_step(strategy, variables, task_losses, lr=0.05):
    """The model's step: objective, SGD update, same-batch losses, update."""
    with tf.GradientTape() as tape:
        losses = task_losses(1.0)
        total, weights = strategy(losses, training=True)
    for variable, grad in zip(variables, tape.gradient(total, variables)):
        variable.assign_sub(lr * grad)
    strategy.update_after_step(losses, task_losses(1.0))
    return total, weights


@tf_only
def test_eager_and_xla_agree_on_a_full_step():
    task_losses, variables = _tiny_problem()
    strategy = _built(2, logits=[0.2, -0.1])
    start = [np.asarray(v) for v in variables]
    eager = _protocol_step(strategy, variables, task_losses)
    eager_state = [np.asarray(w) for w in strategy.weights]
    eager_vars = [np.asarray(v) for v in variables]

    strategy.reset_state()
    strategy.logits.assign([0.2, -0.1])
    for variable, value in zip(variables, start):
        variable.assign(value)
    compiled = tf.function(
        lambda: _protocol_step(strategy, variables, task_losses), jit_compile=True
    )()
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
    for a, b in zip(eager_state, strategy.weights):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-8)
    for a, b in zip(eager_vars, variables):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-7)


def test_state_round_trip():
    strategy = _built(3)
    losses = _t([1.0, 2.0, 3.0])
    strategy.update_after_step(losses, _t([0.9, 1.5, 2.9]))
    strategy.update_after_step(losses, _t([0.5, 1.9, 2.0]))
    clone = FAMO.from_config(strategy.get_config())
    clone.build((3,))
    clone.set_weights(strategy.get_weights())
    for a, b in zip(strategy(losses), clone(losses)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    new = _t([0.8, 1.0, 2.5])
    strategy.update_after_step(losses, new)
    clone.update_after_step(losses, new)
    for a, b in zip(strategy.weights, clone.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(strategy.weights) == 4
    assert strategy.trainable_weights == []


def test_reset_state():
    strategy = _built(2)
    losses = _t([1.0, 2.0])
    fresh = [np.asarray(w) for w in strategy.weights]
    strategy.update_after_step(losses, _t([0.5, 1.9]))
    strategy.update_after_step(losses, _t([0.7, 1.0]))
    assert not np.allclose(np.asarray(strategy.logits), 0.0)
    strategy.reset_state()
    for a, b in zip(fresh, strategy.weights):
        np.testing.assert_array_equal(a, np.asarray(b))
    # After a reset the next update is again a first Adam step (+-lr).
    strategy.update_after_step(losses, _t([0.5, 1.9]))
    np.testing.assert_allclose(np.asarray(strategy.logits), [-0.025, 0.025], rtol=1e-6)


def test_degenerate_inputs_give_finite_results():
    strategy = _built(3)
    for losses, new in [
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ([1e-10, 1.0, 1e10], [1e-12, 0.5, 1e9]),
        ([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]),  # every loss went up
    ]:
        total, weights = strategy(_t(losses))
        assert np.isfinite(float(total)) and np.all(np.isfinite(np.asarray(weights)))
        np.testing.assert_allclose(np.sum(np.asarray(weights)), 1.0, rtol=1e-5)
        strategy.update_after_step(_t(losses), _t(new))
        assert np.all(np.isfinite(np.asarray(strategy.logits)))
    # A loss below its declared minimum is clipped, not NaN.
    below = _built(2, min_losses=[1.0, 0.0])
    total, weights = below(_t([0.5, 2.0]))
    assert np.isfinite(float(total)) and np.all(np.isfinite(np.asarray(weights)))
    # One task: its weight is 1.
    single = _built(1)
    np.testing.assert_allclose(np.asarray(single(_t([3.0]))[1]), [1.0], rtol=1e-6)


def test_permutation_equivariance():
    xi = np.array([0.3, -0.2, 0.0])
    losses = np.array([0.5, 2.0, 1.0], np.float32)
    perm = np.array([2, 0, 1])
    a, b = _built(3, logits=xi), _built(3, logits=xi[perm])
    total_a, weights_a = a(_t(losses))
    total_b, weights_b = b(_t(losses[perm]))
    np.testing.assert_allclose(float(total_a), float(total_b), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(weights_a)[perm], np.asarray(weights_b), rtol=1e-6
    )


def test_update_before_build_raises():
    with pytest.raises(ValueError, match="before the strategy was built"):
        FAMO().update_after_step(_t([1.0, 2.0]), _t([0.5, 1.0]))


# --- Missing tasks ---------------------------------------------------------


def _run_steps(strategy, rng, steps, num_tasks=3):
    for _ in range(steps):
        losses = _t(rng.uniform(0.5, 3.0, num_tasks))
        strategy(losses)
        strategy.update_after_step(losses, losses * _t(rng.uniform(0.6, 1.0, 3)))


def _full_step(strategy, old, new, task_mask=None):
    """The objective, the weights, the objective's gradient with respect to
    the losses, then the post-step update from `old` to `new` losses."""
    old = tf.convert_to_tensor(old)
    with tf.GradientTape() as tape:
        tape.watch(old)
        total, weights = checks.default_call(strategy, old, task_mask=task_mask)
    gradient = tape.gradient(total, old)
    strategy.update_after_step(old, new, task_mask=task_mask)
    return total, weights, gradient


@tf_only
def test_supports_missing_tasks_and_marks_per_task_state():
    checks.assert_all_state_is_per_task(_built(3), 4)


@tf_only
def test_all_ones_mask_equals_the_unmasked_call():
    rng = np.random.default_rng(10)
    steps = []
    for _ in range(4):
        old = _t(rng.uniform(0.5, 3.0, 3))
        steps.append((old, old * _t(rng.uniform(0.6, 1.0, 3))))
    checks.assert_all_ones_mask_is_no_mask(
        functools.partial(_built, 3), steps, call=_full_step
    )


@tf_only
def test_absent_task_gets_zero_and_the_others_match_a_strategy_without_it():
    rng = np.random.default_rng(11)
    full = _built(3, weight_decay=0.01, min_losses=[0.1, 0.2, 0.0])
    _run_steps(full, rng, 3)
    present = [0, 2]
    alone = _built(2, weight_decay=0.01, min_losses=[0.1, 0.0])
    alone.set_weights([w[present] for w in full.get_weights()])
    steps = []
    for _ in range(3):
        old = rng.uniform(0.5, 3.0, 3) * [1.0, 0.0, 1.0]
        steps.append((_t(old), _t(old * rng.uniform(0.6, 1.0, 3))))
    pairs = checks.assert_absent_task_is_dropped(
        full,
        alone,
        [1.0, 0.0, 1.0],
        steps,
        call=_full_step,
        per_task=(False, True, True),
        rtol=(1e-6, 1e-6, 1e-5),
        state_rtol=1e-5,
        state_atol=1e-9,
    )
    for (_, weights, gradient), _ in pairs:
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
        # The weights are the gradient of the objective.
        np.testing.assert_allclose(gradient, weights, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(full.adam_steps), [6, 3, 6])
    assert int(np.asarray(full.adam_step)) == 6


def test_a_returning_task_resumes_its_own_adam_bias_correction():
    # Task 1 is absent for the first two updates: its first update is a
    # first Adam step (moves its logit by lr against the sign of g).
    strategy = _built(2)
    mask = _t([1.0, 0.0])
    for _ in range(2):
        strategy.update_after_step(_t([1.0, 0.0]), _t([0.5, 0.0]), task_mask=mask)
    np.testing.assert_array_equal(np.asarray(strategy.logits)[1], 0.0)
    np.testing.assert_array_equal(np.asarray(strategy.adam_steps), [2, 0])
    xi0 = np.asarray(strategy.logits)[0]
    strategy.update_after_step(_t([1.0, 1.0]), _t([0.9, 0.5]))
    # z = softmax(xi0, 0); task 1 improved more: g_1 > 0, its logit -lr.
    np.testing.assert_allclose(np.asarray(strategy.logits)[1], -0.025, rtol=1e-5)
    assert np.asarray(strategy.logits)[0] != xi0


@tf_only
def test_restore_absent_tasks_keeps_the_absent_state():
    rng = np.random.default_rng(12)
    strategy = _built(3)
    _run_steps(strategy, rng, 2)
    mask = _t([1.0, 1.0, 0.0])
    checks.assert_restore_keeps_absent_state(
        strategy,
        mask,
        lambda: _full_step(strategy, _t([1.0, 2.0, 0.0]), _t([0.5, 1.9, 0.0]), mask),
    )


@tf_only
def test_masked_results_are_finite():
    step = (_t([0.0, 1e-10, 1e10]), _t([0.0, 1e-12, 1e9]))
    for mask in ([0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]):
        strategy = _built(3, min_losses=[0.5, 0.0, 0.0])
        checks.assert_masked_outputs_finite(
            strategy, [(step, mask)], call=_full_step, per_task=(False, True, True)
        )
        assert np.all(np.asarray(strategy.logits)[np.array(mask) == 0.0] == 0.0)


@tf_only
def test_masked_eager_and_xla_agree_on_a_full_step():
    rng = np.random.default_rng(13)
    cases = []
    for k in range(4):
        mask = _t([1.0, float(k % 2 == 0), float(k != 1)])
        old = _t(rng.uniform(0.5, 3.0, 3)) * mask
        cases.append(((old, old * _t(rng.uniform(0.6, 1.0, 3))), mask))
    checks.assert_xla_matches_eager(
        functools.partial(_built, 3, logits=[0.2, -0.1, 0.3]),
        cases,
        call=_full_step,
        rtol=1e-5,
        state_atol=1e-8,
    )
