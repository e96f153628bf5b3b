"""Tests of the look-ahead gradient path (`lookahead = True`: Auto-Lambda)
in a `MultiTaskModel`.

The reference step is recomputed in NumPy (float64, `numpy_two_task_mlp`):
the virtual SGD step on the first half of the batch, the held-out gradient
on the second half, the finite difference, Adam on the weights' parameters
and the model update on the whole batch with the new weights. `fit` must
give the same parameters and strategy state after two steps, on TensorFlow
(graph mode and XLA) and on JAX.
"""

import keras
import numpy as np
import pytest
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp
from numpy_two_task_mlp import losses_and_gradients, params_of

from keras_mtl.weighting import AutoLambda

pytestmark = pytest.mark.both_backends

LEARNING_RATE = 0.1


def _softmax(a):
    e = np.exp(a - a.max())
    return e / e.sum()


class _Reference:
    """Auto-Lambda's step in NumPy."""

    def __init__(self, mode, outer_rate, initial, outer):
        self.mode, self.outer_rate, self.outer = mode, outer_rate, np.asarray(outer)
        self.a = np.full(2, initial)
        self.m, self.v, self.steps = np.zeros(2), np.zeros(2), 0

    def weights(self, a=None):
        a = self.a if a is None else a
        return _softmax(a) if self.mode == "softmax" else a

    def weight_gradient(self, losses):
        w = self.weights()
        return losses if self.mode == "raw" else w * (losses - np.sum(w * losses))

    def step(self, params, batch):
        x, y = batch
        half = len(x) // 2
        inner = (x[:half], {k: v[:half] for k, v in y.items()})
        outer = (x[half:], {k: v[half:] for k, v in y.items()})
        w = self.weights()
        _, grads = losses_and_gradients(params, *inner)
        virtual = [
            p - LEARNING_RATE * (w[0] * g0 + w[1] * g1)
            for p, g0, g1 in zip(params, *grads)
        ]
        _, outer_grads = losses_and_gradients(virtual, *outer)
        d = [self.outer[0] * g0 + self.outer[1] * g1 for g0, g1 in zip(*outer_grads)]
        eps = 0.01 / np.sqrt(sum(np.sum(di**2) for di in d))
        plus, _ = losses_and_gradients(
            [p + eps * di for p, di in zip(params, d)], *inner
        )
        minus, _ = losses_and_gradients(
            [p - eps * di for p, di in zip(params, d)], *inner
        )
        h = (self.weight_gradient(plus) - self.weight_gradient(minus)) / (2 * eps)
        g = -LEARNING_RATE * h
        self.steps += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.999 * self.v + 0.001 * g**2
        m_hat = self.m / (1 - 0.9**self.steps)
        v_hat = self.v / (1 - 0.999**self.steps)
        self.a = self.a - self.outer_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
        w = self.weights()
        _, grads = losses_and_gradients(params, x, y)
        return [
            p - LEARNING_RATE * (w[0] * g0 + w[1] * g1)
            for p, g0, g1 in zip(params, *grads)
        ]


def _model(strategy, jit_compile):
    keras.utils.set_random_seed(5)
    model = two_task_mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=TWO_TASK_LOSSES,
        loss_weighting=strategy,
        jit_compile=jit_compile,
    )
    return model


def _reference_modes():
    """Graph mode on TensorFlow (the contract table, tests/weighting/
    test_strategy.py, holds Auto-Lambda's XLA training to graph mode's), XLA
    on JAX."""
    return [True] if keras.backend.backend() == "jax" else [False]


@pytest.mark.parametrize(
    "kwargs, initial, outer",
    [
        ({}, 0.5, [1.0, 1.0]),
        ({"weights": "raw", "learning_rate": 0.05}, 0.1, [1.0, 1.0]),
        ({"learning_rate": 0.05, "primary_tasks": ["reg"]}, 0.5, [0.0, 1.0]),
    ],
    ids=["softmax", "raw", "primary"],
)
def test_fit_matches_the_numpy_reference_step(kwargs, initial, outer):
    x, y = two_task_data(n=16)
    for jit_compile in _reference_modes():
        model = _model(AutoLambda(**kwargs), jit_compile)
        reference = _Reference(
            kwargs.get("weights", "softmax"),
            kwargs.get("learning_rate", 1e-3),
            initial,
            outer,
        )
        params = params_of(model)
        for start in (0, 8):
            batch = (
                x[start : start + 8],
                {k: v[start : start + 8] for k, v in y.items()},
            )
            params = reference.step(params, batch)
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        strategy = model.loss_weighting
        # The float32 difference L(theta + eps d) - L(theta - eps d) keeps
        # about 1e-7 L / (eps |<grad L, d>|) of relative error in h.
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(strategy.parameters), reference.a, atol=1e-5
        )
        for got, want in zip(params_of(model), params):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.isfinite(history.history["loss"]).all()


def test_the_look_ahead_leaves_batch_norm_statistics_to_the_update():
    """The look-ahead passes run at other parameters without writing any
    variable: the moving statistics after a step are those of the update's
    forward pass alone (equal weighting moves them the same way)."""
    x, y = two_task_data(n=8)
    runs = []
    for strategy in (AutoLambda(), "ew"):
        keras.utils.set_random_seed(5)
        model = two_task_mlp(batch_norm=True)
        model.compile(
            optimizer=keras.optimizers.SGD(LEARNING_RATE),
            loss=TWO_TASK_LOSSES,
            loss_weighting=strategy,
        )
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        runs.append(
            [
                keras.ops.convert_to_numpy(v)
                for v in model.get_layer("bn").non_trainable_weights
            ]
        )
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_fit_refuses_a_batch_size_of_one():
    x, y = two_task_data(n=4)
    model = _model(AutoLambda(), jit_compile=False)
    with pytest.raises(ValueError, match="batch_size=1.*at least 2"):
        model.fit(x, y, batch_size=1, verbose=0)


def test_compile_refuses_missing_labels_and_task_sampling():
    model = two_task_mlp()
    with pytest.raises(ValueError, match="does not support missing_labels"):
        model.compile(
            optimizer="sgd",
            loss=TWO_TASK_LOSSES,
            loss_weighting="auto_lambda",
            missing_labels=-1,
        )
    with pytest.raises(ValueError, match="task_sampling"):
        model.compile(
            optimizer="sgd",
            loss=TWO_TASK_LOSSES,
            loss_weighting="auto_lambda",
            task_sampling="uniform",
        )
    with pytest.raises(ValueError, match="not tasks of the model"):
        model.compile(
            optimizer="sgd",
            loss=TWO_TASK_LOSSES,
            loss_weighting=AutoLambda(primary_tasks=["depth"]),
        )
