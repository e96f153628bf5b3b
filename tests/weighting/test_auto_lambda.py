"""Tests of `AutoLambda` (Liu et al., TMLR 2022): the weight update from
the look-ahead's losses, its Adam state, and the plain weighting. The
look-ahead itself (virtual step, held-out batch, finite difference) is
tested against a NumPy recomputation in `tests/models/test_lookahead_path.py`."""

import keras
import numpy as np
import pytest
from backends import compiled

import keras_mtl
from keras_mtl.weighting.auto_lambda import AutoLambda

pytestmark = pytest.mark.both_backends


def _t(value):
    return keras.ops.convert_to_tensor(np.asarray(value, "float32"))


def _numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value), np.float64)


def _adam_reference(mode, a, steps, rate):
    """NumPy: Adam (PyTorch's constants) on a with gradient -eta h, h the
    finite difference of grad_a sum_t w(a)_t L_t."""
    m, v = np.zeros_like(a), np.zeros_like(a)
    for k, (plus, minus, eps, eta) in enumerate(steps, start=1):
        if mode == "softmax":
            w = np.exp(a - a.max())
            w /= w.sum()

            def grad(losses, w=w):
                return w * (losses - np.sum(w * losses))
        else:

            def grad(losses):
                return losses

        g = -eta * (grad(np.asarray(plus)) - grad(np.asarray(minus))) / (2 * eps)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        a = a - rate * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8)
    return a


STEPS = [
    ([1.0, 2.0, 0.5], [1.2, 1.9, 0.5], 0.1, 0.5),
    ([0.8, 2.5, 0.4], [0.7, 2.6, 0.45], 0.05, 0.5),
    ([0.6, 2.2, 0.3], [0.65, 2.1, 0.3], 0.02, 0.25),
]


def test_registry_names_resolve():
    for name in ("auto_lambda", "autol"):
        assert isinstance(keras_mtl.weighting.get(name), AutoLambda)
    assert AutoLambda.lookahead and AutoLambda.batches_per_step == 2


@pytest.mark.parametrize("mode", ["softmax", "raw"])
def test_weight_updates_match_adam_on_the_finite_difference(mode):
    strategy = AutoLambda(weights=mode, learning_rate=0.01)
    strategy.build((3,))
    initial = np.full(3, 1 / 3 if mode == "softmax" else 0.1)
    np.testing.assert_allclose(_numpy(strategy.parameters), initial, atol=1e-7)
    for plus, minus, eps, eta in STEPS:
        strategy.update_from_lookahead(_t(plus), _t(minus), eps, eta)
    want = _adam_reference(mode, initial, STEPS, 0.01)
    np.testing.assert_allclose(_numpy(strategy.parameters), want, atol=1e-6)
    assert float(_numpy(strategy.adam_steps)) == 3.0


def test_a_task_aligned_with_the_held_out_gradient_gains_weight():
    """L(theta + eps d) < L(theta - eps d) for task 0, so <grad L_0, d> < 0:
    a step down task 0's gradient moves theta along +d, up the held-out
    loss, and its weight falls; task 1's (<grad L_1, d> > 0) rises."""
    for mode in ("softmax", "raw"):
        strategy = AutoLambda(weights=mode, learning_rate=0.01)
        strategy.build((2,))
        before = _numpy(strategy.task_weights())
        strategy.update_from_lookahead(_t([1.0, 2.1]), _t([1.1, 2.0]), 0.1, 0.5)
        after = _numpy(strategy.task_weights())
        assert after[0] < before[0] and after[1] > before[1], (mode, before, after)
        if mode == "softmax":
            np.testing.assert_allclose(np.sum(after), 1.0, atol=1e-6)


def test_no_update_without_a_direction_or_with_non_finite_losses():
    strategy = AutoLambda()
    strategy.build((2,))
    state = [_numpy(v) for v in strategy.variables]
    strategy.update_from_lookahead(_t([1.0, 2.0]), _t([1.0, 2.0]), 0.0, 0.5)
    strategy.update_from_lookahead(_t([np.nan, 2.0]), _t([1.0, 2.0]), 0.1, 0.5)
    strategy.update_from_lookahead(_t([1.0, 2.0]), _t([0.0, 1.0]), 0.1, 0.5, False)
    for before, variable in zip(state, strategy.variables):
        np.testing.assert_array_equal(_numpy(variable), before, err_msg=variable.path)


def test_the_objective_is_the_weighted_sum_with_constant_weights():
    strategy = AutoLambda(weights="raw", initial=0.25)
    losses = _t([2.0, 4.0])
    objective, weights = strategy(losses)
    np.testing.assert_allclose(_numpy(objective), 1.5, rtol=1e-6)
    np.testing.assert_allclose(_numpy(weights), [0.25, 0.25])
    _, softmax_weights = AutoLambda()(losses)
    np.testing.assert_allclose(_numpy(softmax_weights), [0.5, 0.5], atol=1e-7)


def test_reset_and_compiled_update():
    strategy = AutoLambda(learning_rate=0.01)
    strategy.build((3,))
    update = compiled(
        lambda p, m, e, r: strategy.update_from_lookahead(p, m, e, r) or p,
        layers=[strategy],
    )
    for plus, minus, eps, eta in STEPS:
        update(_t(plus), _t(minus), _t(eps), _t(eta))
    want = _adam_reference("softmax", np.full(3, 1 / 3), STEPS, 0.01)
    np.testing.assert_allclose(_numpy(strategy.parameters), want, atol=1e-6)
    strategy.reset_state()
    np.testing.assert_allclose(_numpy(strategy.parameters), np.full(3, 1 / 3))
    assert not np.any(_numpy(strategy.first_moment))


def test_validation():
    for kwargs, match in (
        ({"weights": "sigmoid"}, "`weights`"),
        ({"learning_rate": 0.0}, "`learning_rate`"),
        ({"initial": float("nan")}, "`initial`"),
        ({"primary_tasks": "depth"}, "`primary_tasks`"),
        ({"primary_tasks": []}, "`primary_tasks`"),
    ):
        with pytest.raises(ValueError, match=match):
            AutoLambda(**kwargs)
