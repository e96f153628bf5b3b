"""Tests of the representation path (`rep_grad=True`) on both backends.

The step is recomputed in NumPy (float64, `numpy_two_task_mlp`): the
per-task gradients of the shared representation (the trunk's tanh layer,
one row per task over the batch), a strategy's update of it, that update
pulled back through the trunk, and each head's own gradient. Two test
strategies cover the path's two branches: a matrix method (rows scaled to
unit norm) and a Gramian method (weights from the batch-summed rows'
Gramian, applied to the per-example rows, as LibMTL's representation mode).
"""

import keras
import numpy as np
import pytest
from keras import ops
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp
from numpy_two_task_mlp import params_of

import keras_mtl
from keras_mtl.weighting.gradient_aggregation import GradientAggregation

pytestmark = pytest.mark.both_backends

LEARNING_RATE = 0.1


class UnitRows(GradientAggregation):
    """update = sum_t g_t / ||g_t||."""

    supports_rep_grad = True

    def call(self, grads, losses=None, training=True):
        weights = 1.0 / ops.sqrt(ops.sum(ops.square(grads), axis=1))
        return ops.matmul(weights[None, :], grads)[0], weights


class InverseDiagonal(GradientAggregation):
    """w_t = 1 / sqrt(G_tt): the Gramian branch."""

    requires = "gramian"
    supports_rep_grad = True

    def compute_weights(self, gramian, losses=None, training=True):
        return 1.0 / ops.sqrt(ops.diagonal(gramian))


def _reference_step(params, x, y, gramian):
    kernel, bias, cls_kernel, cls_bias, reg_kernel, reg_bias = params
    n = x.shape[0]
    hidden = np.tanh(x @ kernel + bias)
    logits = hidden @ cls_kernel + cls_bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    d_logits = (probs - np.eye(3)[y["cls"].astype(int)]) / n
    d_reg = 2.0 * (hidden @ reg_kernel + reg_bias - y["reg"]) / n
    rep_grads = [d_logits @ cls_kernel.T, d_reg @ reg_kernel.T]  # (B, D) each
    rows = np.stack([g.ravel() for g in rep_grads])
    if gramian:
        summed = np.stack([g.sum(axis=0) for g in rep_grads])
        weights = 1.0 / np.sqrt(np.diag(summed @ summed.T))
    else:
        weights = 1.0 / np.linalg.norm(rows, axis=1)
    cotangent = (weights @ rows).reshape(hidden.shape)
    d_pre = cotangent * (1.0 - hidden**2)
    grads = [
        x.T @ d_pre,
        d_pre.sum(axis=0),
        hidden.T @ d_logits,
        d_logits.sum(axis=0),
        hidden.T @ d_reg,
        d_reg.sum(axis=0),
    ]
    return [p - LEARNING_RATE * g for p, g in zip(params, grads)]


def _reference_modes():
    """Graph mode on TensorFlow (tests/models/test_multi_task_model.py
    holds the rep_grad step under XLA to graph mode's), XLA on JAX."""
    return [True] if keras.backend.backend() == "jax" else [False]


@pytest.mark.parametrize("make", [UnitRows, InverseDiagonal], ids=["matrix", "gramian"])
def test_fit_matches_the_numpy_reference_step(make):
    x, y = two_task_data(n=16)
    for jit_compile in _reference_modes():
        keras.utils.set_random_seed(4)
        model = two_task_mlp()
        model.compile(
            optimizer=keras.optimizers.SGD(LEARNING_RATE),
            loss=TWO_TASK_LOSSES,
            loss_weighting=make(rep_grad=True),
            jit_compile=jit_compile,
        )
        params = params_of(model)
        for start in (0, 8):
            batch_y = {k: v[start : start + 8].astype(np.float64) for k, v in y.items()}
            params = _reference_step(
                params, x[start : start + 8], batch_y, make is InverseDiagonal
            )
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        for got, want in zip(params_of(model), params):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rep_grad", [True, False])
def test_auxiliary_losses_reach_the_trunk_with_a_gradient_method(rep_grad):
    """With an auxiliary head on the representation, a gradient method
    summing the rows trains like equal weighting: the auxiliary loss's
    gradient reaches the trunk (through the representation with
    rep_grad) and the auxiliary head gets its own (on JAX, the matrix
    path once failed on the auxiliary variables)."""

    class Sum(GradientAggregation):
        supports_rep_grad = True

        def call(self, grads, losses=None, training=True):
            return ops.sum(grads, axis=0), ops.ones((grads.shape[0],))

    x, y = two_task_data(n=16)
    results = []
    for strategy in (Sum(rep_grad=rep_grad), "ew"):
        keras.utils.set_random_seed(4)
        inputs = keras.Input((8,))
        shared = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
        outputs = {
            "cls": keras.layers.Dense(3, name="cls_head")(shared),
            "reg": keras.layers.Dense(1, name="reg_head")(shared),
        }
        model = keras_mtl.MultiTaskModel(
            inputs,
            outputs,
            auxiliary_outputs={"reg": keras.layers.Dense(1, name="aux")(shared)},
        )
        model.compile(
            optimizer=keras.optimizers.SGD(LEARNING_RATE),
            loss=TWO_TASK_LOSSES,
            loss_weighting=strategy,
        )
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        results.append(
            [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        )
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
