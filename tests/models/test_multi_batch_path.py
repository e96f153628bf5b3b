"""Tests of the multi-batch gradient path (`batches_per_step > 1`: MoDo,
SDMGrad) in a `MultiTaskModel`.

The reference step is computed here in NumPy (float64), independently of
both backends: the two-task MLP's forward pass and per-task gradients by
hand on each third of the batch, the strategy's formula (LibMTL's batch
roles) and an SGD step. `fit` must give the same variables after two steps,
on TensorFlow (graph mode and XLA) and on JAX.
"""

import keras
import numpy as np
import pytest
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp
from numpy_two_task_mlp import losses_and_gradients, params_of, project_onto_simplex

import keras_mtl
from keras_mtl.weighting import MoDo, SDMGrad

pytestmark = pytest.mark.both_backends

LEARNING_RATE = 0.05


# --- The NumPy reference ----------------------------------------------------


def _modo_step(state, matrices, gamma=0.1, rho=0.1):
    first, second, third = matrices
    a = first @ second.T
    state = project_onto_simplex(state - gamma * (a @ state + rho * state))
    return state, state @ third, np.ones(2)


def _sdmgrad_step(state, matrices, lambda_=0.3, lr=10.0, momentum=0.5, n_iter=20):
    zeta, first, second = matrices
    a = first @ second.T
    scale = np.mean(np.sqrt(np.maximum(np.diag(a), 0.0)))
    a = a / (scale**2 + 1e-8)
    preference = np.full(2, 0.5)
    velocity = None
    for _ in range(n_iter):
        step = a @ (state + lambda_ * preference)
        velocity = step if velocity is None else momentum * velocity + step
        state = project_onto_simplex(state - lr * velocity)
    weights = (state + lambda_ * preference) / (1.0 + lambda_)
    return state, weights @ zeta, np.full(2, 3.0)


def _reference_run(params, x, y, batch_size, step_fn):
    """The variables after one epoch of `fit(batch_size=..., shuffle=False)`."""
    params = [p.astype(np.float64) for p in params]
    state = np.full(2, 0.5)
    for start in range(0, len(x), batch_size):
        bx = x[start : start + batch_size]
        by = {k: v[start : start + batch_size] for k, v in y.items()}
        n = len(bx)
        bounds = [i * n // 3 for i in range(4)]
        parts = [
            losses_and_gradients(
                params, bx[a:b], {"cls": by["cls"][a:b], "reg": by["reg"][a:b]}
            )[1]
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        # Rows: the trunk's gradients (kernel and bias) of each task.
        matrices = [
            np.stack([np.concatenate([g.ravel() for g in task[:2]]) for task in part])
            for part in parts
        ]
        state, update, head_scales = step_fn(state, matrices)
        size = params[0].size
        params[0] = params[0] - LEARNING_RATE * update[:size].reshape(params[0].shape)
        params[1] = params[1] - LEARNING_RATE * update[size:]
        for j in range(2, 6):
            task = (j - 2) // 2
            head = np.mean([part[task][j] for part in parts], axis=0)
            params[j] = params[j] - LEARNING_RATE * head_scales[task] * head
    return params, state


def _model(strategy, jit_compile):
    keras.utils.set_random_seed(3)
    model = two_task_mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE),
        loss=TWO_TASK_LOSSES,
        loss_weighting=strategy,
        jit_compile=jit_compile,
    )
    return model


def _jit_modes():
    return [True] if keras.backend.backend() == "jax" else [False, True]


def _reference_modes():
    """Graph mode on TensorFlow (the contract table, tests/weighting/
    test_strategy.py, holds MoDo's and SDMGrad's XLA training to graph mode's), XLA
    on JAX."""
    return [True] if keras.backend.backend() == "jax" else [False]


@pytest.mark.parametrize(
    "make, step_fn",
    [(MoDo, _modo_step), (SDMGrad, _sdmgrad_step)],
    ids=["modo", "sdmgrad"],
)
def test_fit_matches_the_numpy_reference_step(make, step_fn):
    """Two steps of batch 9 (sub-batches of 3): per-task gradients on each
    third, A from the LibMTL batches, the update from the third (MoDo) or
    the first (SDMGrad), heads with the mean (MoDo) or the sum (SDMGrad)
    of their sub-batch gradients, the strategy's state carried over."""
    x, y = two_task_data(n=18)
    for jit_compile in _reference_modes():
        model = _model(make(), jit_compile)
        expected, state = _reference_run(params_of(model), x, y, 9, step_fn)
        history = model.fit(x, y, batch_size=9, epochs=1, shuffle=False, verbose=0)
        for got, want in zip(params_of(model), expected):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(model.loss_weighting.task_weights),
            state,
            atol=2e-6,
        )
        assert np.isfinite(history.history["loss"]).all()


def test_logged_losses_are_those_of_the_whole_batch():
    """The logs hold the losses of each whole batch before its update (the
    sub-batches' predictions put back together), as for other methods."""
    x, y = two_task_data(n=9)
    model = _model(MoDo(), jit_compile=True)
    before = model.evaluate(x, y, batch_size=9, verbose=0, return_dict=True)
    history = model.fit(x, y, batch_size=9, epochs=1, shuffle=False, verbose=0)
    for key in ("cls_loss", "reg_loss", "loss"):
        np.testing.assert_allclose(history.history[key][0], before[key], rtol=1e-5)


def test_a_batch_smaller_than_the_sub_batch_count_trains_nothing():
    """The epoch's last batch (one sample) cannot be cut in three: the
    model after the epoch is the model after its first batch (in graph mode
    the batch size is only known when the step runs, under XLA while it
    is traced)."""
    x, y = two_task_data(n=10)
    for jit_compile in _jit_modes():
        full = _model(MoDo(), jit_compile)
        full.fit(x, y, batch_size=9, epochs=1, shuffle=False, verbose=0)
        first = _model(MoDo(), jit_compile)
        first.fit(
            x[:9],
            {k: v[:9] for k, v in y.items()},
            batch_size=9,
            shuffle=False,
            verbose=0,
        )
        for a, b in zip(params_of(full), params_of(first)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(
            full.loss_weighting.task_weights.numpy(),
            first.loss_weighting.task_weights.numpy(),
        )


def test_fit_refuses_a_batch_size_below_the_sub_batch_count():
    x, y = two_task_data(n=8)
    model = _model(SDMGrad(), jit_compile=False)
    with pytest.raises(ValueError, match="batch_size=2.*at least 3"):
        model.fit(x, y, batch_size=2, verbose=0)


def test_compile_refuses_what_the_path_cannot_give():
    model = two_task_mlp()
    with pytest.raises(ValueError, match="requires='gramian'"):
        model.compile(
            optimizer="sgd",
            loss=TWO_TASK_LOSSES,
            loss_weighting="modo",
            per_task_gradients="gramian",
        )
    with pytest.raises(ValueError, match="does not support missing_labels"):
        model.compile(
            optimizer="sgd",
            loss=TWO_TASK_LOSSES,
            loss_weighting="sdmgrad",
            missing_labels=-1,
        )
    with pytest.raises(ValueError, match="does not support rep_grad"):
        MoDo(rep_grad=True)
    assert keras_mtl.weighting.get("modo").batches_per_step == 3
