"""Tests of `OrthogonalGradientRegularizer` (Suteu and Guo, arXiv 1912.06844)."""

import functools

import keras
import missing_task_checks as checks
import numpy as np
import pytest
import tensorflow as tf
from backend_grads import tf_only, value_and_grad
from keras import ops
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp

import keras_mtl
from keras_mtl.weighting.orthogonal_gradient_regularizer import (
    OrthogonalGradientRegularizer,
)

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _reference_penalty(grads, reduction="mean", eps=1e-8):
    """R in float64 numpy: squared cosines over the ordered pairs i != j,
    averaged over the T (T - 1) pairs for "mean" (the third-party
    `CosRegOptimizer`: (sum of the squared cosine matrix - T) / (T^2 - T))."""
    grads = np.asarray(grads, np.float64)
    norms = np.linalg.norm(grads, axis=1)
    cos = grads @ grads.T / (np.outer(norms, norms) + eps)
    num_tasks = len(grads)
    total = np.sum(cos**2) - np.sum(np.diag(cos) ** 2)
    return total / (num_tasks * (num_tasks - 1)) if reduction == "mean" else total


def test_registry_names_resolve():
    for name in ["orthogonal", "orthogonal_gradients", "suteu_guo"]:
        assert isinstance(keras_mtl.weighting.get(name), OrthogonalGradientRegularizer)


def test_config_round_trip_and_flags():
    strategy = OrthogonalGradientRegularizer(
        penalty=0.5, reduction="sum", gradients_of="last_layer", epsilon=1e-6
    )
    config = strategy.get_config()
    rebuilt = OrthogonalGradientRegularizer.from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.shared_gradients == "last_layer"
    default = OrthogonalGradientRegularizer()
    assert (default.penalty, default.reduction, default.shared_gradients) == (
        10.0,
        "mean",
        "all",
    )
    assert OrthogonalGradientRegularizer.differentiable_gradients
    assert OrthogonalGradientRegularizer.shared_gradients is None
    assert not OrthogonalGradientRegularizer.stateful


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"penalty": -1.0}, "penalty"),
        ({"penalty": float("nan")}, "penalty"),
        ({"penalty": None}, "penalty"),
        ({"reduction": "max"}, "reduction"),
        ({"gradients_of": "rep"}, "gradients_of"),
        ({"epsilon": 0.0}, "epsilon"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OrthogonalGradientRegularizer(**kwargs)


def test_penalty_on_fixed_gradients():
    # g1 = (1, 0, 0), g2 = (1, 1, 0), g3 = (0, 0, 2): cos12^2 = 1/2,
    # cos13 = cos23 = 0; the ordered pairs give sum 2 * 1/2 = 1, mean 1/6.
    grads = _t([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    losses = _t([1.0, 2.0, 3.0])
    for reduction, penalty in (("mean", 1.0 / 6.0), ("sum", 1.0)):
        strategy = OrthogonalGradientRegularizer(penalty=3.0, reduction=reduction)
        total, weights = strategy(losses, shared_grads=grads)
        np.testing.assert_allclose(float(total), 6.0 + 3.0 * penalty, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(weights), [1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 9)) * [[1.0], [0.01], [100.0], [3.0]]
    for reduction in ("mean", "sum"):
        strategy = OrthogonalGradientRegularizer(reduction=reduction)
        strategy.build((4,))
        np.testing.assert_allclose(
            float(strategy.regularizer(_t(grads))),
            _reference_penalty(grads, reduction),
            rtol=1e-5,
        )


def test_penalty_extremes_and_invariances():
    strategy = OrthogonalGradientRegularizer(penalty=1.0)
    strategy.build((2,))

    def penalty(grads):
        return float(strategy.regularizer(_t(grads)))

    assert penalty([[1.0, 0.0], [0.0, 5.0]]) == 0.0  # orthogonal
    np.testing.assert_allclose(penalty([[1.0, 2.0], [-2.0, -4.0]]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(penalty([[1.0, 2.0], [3.0, 6.0]]), 1.0, rtol=1e-6)
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(2, 6))
    np.testing.assert_allclose(
        penalty(grads * [[1e-3], [1e3]]), penalty(grads), rtol=1e-5
    )  # scale invariant
    np.testing.assert_allclose(penalty(grads[::-1]), penalty(grads), rtol=1e-6)


def test_degenerate_inputs_are_finite_with_finite_second_derivatives():
    for grads in (
        np.zeros((2, 3)),
        [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
        1e-10 * np.ones((2, 3)),
        1e10 * np.array([[1.0, 2.0, 3.0], [3.0, -1.0, 0.5]]),
    ):
        strategy = OrthogonalGradientRegularizer()
        (total, _), (gradient,) = value_and_grad(
            lambda g, s=strategy: s(_t([1.0, 1.0]), shared_grads=g), grads
        )
        assert np.isfinite(float(total)), grads
        assert np.all(np.isfinite(gradient)), grads
    # Zero gradients are orthogonal to everything.
    total, _ = OrthogonalGradientRegularizer()(
        _t([1.0, 1.0]), shared_grads=ops.zeros((2, 3))
    )
    assert float(total) == 2.0
    # One task: no pair, no penalty.
    total, weights = OrthogonalGradientRegularizer()(
        _t([2.0]), shared_grads=_t([[1.0, 1.0]])
    )
    assert float(total) == 2.0 and np.asarray(weights).tolist() == [1.0]
    with pytest.raises(ValueError, match="shared_grads"):
        OrthogonalGradientRegularizer()(_t([1.0, 2.0]))


@tf_only
def test_gradient_of_the_penalty_matches_finite_differences():
    rng = np.random.default_rng(2)
    grads = rng.normal(size=(3, 4))
    strategy = OrthogonalGradientRegularizer(penalty=1.0)
    strategy.build((3,))
    variable = tf.Variable(grads, dtype=tf.float64)
    with tf.GradientTape() as tape:
        value = strategy.regularizer(variable)
    analytic = np.asarray(tape.gradient(value, variable))
    numeric = np.zeros_like(grads)
    h = 1e-6
    for index in np.ndindex(grads.shape):
        up, down = grads.copy(), grads.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (_reference_penalty(up) - _reference_penalty(down)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-6)


def test_permutation_equivariance():
    rng = np.random.default_rng(3)
    grads = rng.normal(size=(3, 5))
    perm = [2, 0, 1]
    losses = np.array([1.0, 2.0, 3.0])
    strategy = OrthogonalGradientRegularizer()
    a, _ = strategy(_t(losses), shared_grads=_t(grads))
    b, _ = strategy(_t(losses[perm]), shared_grads=_t(grads[perm]))
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def _call(strategy, losses, grads, task_mask=None):
    """The objective, the weights and the objective's gradient with respect
    to the shared gradients."""
    grads = tf.convert_to_tensor(grads, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(grads)
        total, weights = checks.default_call(
            strategy,
            tf.convert_to_tensor(losses, tf.float32),
            shared_grads=grads,
            task_mask=task_mask,
        )
    return total, weights, tape.gradient(total, grads)


@tf_only
def test_eager_equals_xla():
    grads = np.random.default_rng(4).normal(size=(3, 6)).astype(np.float32)
    cases = [((_t([1.0, 2.0, 3.0]), grads), None)]
    checks.assert_xla_matches_eager(
        OrthogonalGradientRegularizer, cases, call=_call, rtol=1e-5, atol=1e-7
    )


@tf_only
def test_state_round_trip_and_stateless():
    strategy = OrthogonalGradientRegularizer(penalty=2.0)
    strategy.build((2,))
    assert strategy.weights == []
    grads = _t([[1.0, 2.0], [0.5, 0.1]])
    checks.assert_state_round_trip(strategy, [(_t([1.0, 2.0]), grads)], call=_call)
    strategy.reset_state()


# --- In a MultiTaskModel ---------------------------------------------------


@tf_only
def test_model_update_is_the_double_backprop_update():
    """The model's step equals a nested-tape update of sum(L) + lambda R."""
    strategy = OrthogonalGradientRegularizer(penalty=3.0)
    model = two_task_mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=TWO_TASK_LOSSES,
        loss_weighting=strategy,
    )
    x, y = two_task_data(n=8)
    variables = model.trainable_variables
    shared = model.shared_variables
    before = [np.asarray(v) for v in variables]
    with tf.GradientTape() as outer:
        with tf.GradientTape(persistent=True) as inner:
            pred = model(x, training=True)
            cls = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
            reg = keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
        g1 = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(cls, shared)], 0)
        g2 = tf.concat([tf.reshape(g, [-1]) for g in inner.gradient(reg, shared)], 0)
        cos = tf.reduce_sum(g1 * g2) / (tf.norm(g1) * tf.norm(g2) + 1e-8)
        objective = cls + reg + 3.0 * cos**2  # mean over the 2 ordered pairs
    grads = outer.gradient(objective, variables)
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        plain = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
        plain += keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
    plain_grads = tape.gradient(plain, variables)
    # The regulariser really contributes to the shared update.
    assert (
        max(
            float(tf.reduce_max(tf.abs(a - b)))
            for a, b in zip(grads[:2], plain_grads[:2])
        )
        > 1e-4
    )
    model.train_on_batch(x, y)
    for b, g, v in zip(before, grads, variables):
        np.testing.assert_allclose(np.asarray(v), b - 0.1 * np.asarray(g), atol=1e-6)


def _conflicting_tasks(n=256, d_in=8, seed=0):
    """Task b's target is roughly the negative of task a's: their shared
    gradients conflict."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, d_in))
    x = rng.normal(size=(n, d_in)).astype("float32")
    y = {
        "a": np.tanh(x @ a / 2)[:, None].astype("float32"),
        "b": np.tanh(-(x @ a) / 2 + 0.25 * (x @ b))[:, None].astype("float32"),
    }
    return x, y


def _shared_cosine(model, x, y):
    with tf.GradientTape(persistent=True) as tape:
        pred = model(x)
        losses = [tf.reduce_mean(tf.square(pred[t] - y[t])) for t in ("a", "b")]
    ga, gb = (
        tf.concat(
            [tf.reshape(g, [-1]) for g in tape.gradient(loss, model.shared_variables)],
            0,
        )
        for loss in losses
    )
    return float(tf.reduce_sum(ga * gb) / (tf.norm(ga) * tf.norm(gb)))


@tf_only
@pytest.mark.slow
def test_training_with_the_penalty_makes_task_gradients_closer_to_orthogonal():
    cosines = {}
    for penalty in (0.0, 10.0):
        keras.utils.set_random_seed(0)
        x, y = _conflicting_tasks()
        init = keras.initializers.GlorotUniform(seed=0)
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(8, activation="tanh", kernel_initializer=init)(
            inputs
        )
        model = keras_mtl.MultiTaskModel(
            inputs,
            {t: keras.layers.Dense(1, kernel_initializer=init)(hidden) for t in "ab"},
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="mse",
            loss_weighting=OrthogonalGradientRegularizer(penalty=penalty),
            steps_per_execution=4,
        )
        model.fit(x, y, batch_size=64, epochs=20, shuffle=False, verbose=0)
        cosines[penalty] = np.mean(
            [
                abs(
                    _shared_cosine(
                        model, x[i : i + 64], {t: y[t][i : i + 64] for t in y}
                    )
                )
                for i in range(0, 256, 64)
            ]
        )
    assert cosines[0.0] > 0.3, cosines  # the tasks conflict without the penalty
    assert cosines[10.0] < 0.25 * cosines[0.0], cosines


# --- Missing tasks ---------------------------------------------------------


@tf_only
def test_supports_missing_tasks():
    assert OrthogonalGradientRegularizer.supports_missing_tasks
    strategy = OrthogonalGradientRegularizer()
    strategy.build((3,))
    checks.assert_no_per_task_state(strategy, [1.0, 0.0, 1.0])  # stateless


@tf_only
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ones_mask_equals_the_unmasked_call(reduction):
    grads = np.random.default_rng(10).normal(size=(3, 4))
    make = functools.partial(OrthogonalGradientRegularizer, reduction=reduction)
    checks.assert_all_ones_mask_is_no_mask(
        make, [([1.0, 2.0, 3.0], grads)], call=_call, rtol=1e-6, atol=1e-7
    )


@tf_only
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_absent_task_gets_zero_and_the_others_match_a_strategy_without_it(reduction):
    rng = np.random.default_rng(11)
    grads = rng.normal(size=(4, 5))
    grads[2] = 0.0  # an absent task's row
    losses = np.array([1.0, 2.0, 0.0, 0.5])
    present = [0, 1, 3]
    strategy = OrthogonalGradientRegularizer(penalty=3.0, reduction=reduction)
    [((total, weights, _), _)] = checks.assert_absent_task_is_dropped(
        strategy,
        OrthogonalGradientRegularizer(penalty=3.0, reduction=reduction),
        [1, 1, 0, 1],
        [(losses, grads)],
        call=_call,
        per_task=(False, True, True),
        rtol=(1e-6, 0.0, 1e-5),
    )
    np.testing.assert_allclose(
        total, losses.sum() + 3.0 * _reference_penalty(grads[present], reduction)
    )
    np.testing.assert_array_equal(weights, [1.0, 1.0, 0.0, 1.0])
    if reduction == "mean":  # unmasked, the zero row dilutes the mean
        unmasked = np.asarray(_call(strategy, losses, grads)[0])
        assert unmasked < total - 1e-3


@tf_only
def test_masked_results_are_finite():
    grads = np.array([[0.0, 0.0], [1e-10, 0.0], [1e10, 1e10]])
    masks = ([0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    results = checks.assert_masked_outputs_finite(
        OrthogonalGradientRegularizer(),
        [(([0.0, 1.0, 2.0], grads * np.array(mask)[:, None]), mask) for mask in masks],
        call=_call,
        per_task=(False, True, True),
        zero_absent=False,
    )
    for (total, weights, _), mask in zip(results, masks):
        np.testing.assert_array_equal(weights, mask)
        if sum(mask) < 2:  # no pair of present tasks
            np.testing.assert_allclose(total, np.dot(mask, [0.0, 1.0, 2.0]))


@tf_only
def test_masked_eager_equals_xla():
    grads = np.random.default_rng(12).normal(size=(3, 6)).astype(np.float32)
    mask = np.array([1.0, 0.0, 1.0], np.float32)
    cases = [((_t([1.0, 0.0, 3.0]), grads * mask[:, None]), mask)]
    checks.assert_xla_matches_eager(
        OrthogonalGradientRegularizer, cases, call=_call, rtol=1e-5, atol=1e-7
    )
