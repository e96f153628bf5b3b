"""Tests of `MoDo` (Chen et al., NeurIPS 2023): the lambda step, its batch
roles, its state, and the degenerate input family. The model-level step
(three sub-batches per batch) is in `tests/models/test_multi_batch_path.py`."""

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import numpy as np
import pytest
from backends import compiled
from fresh_compiled import on_jax

import keras_mtl
from keras_mtl.weighting.modo import MoDo

pytestmark = pytest.mark.both_backends

A1 = [[2.0, -1.0, 0.5], [0.3, 1.5, -0.2], [1.0, 0.4, 3.0]]
A2 = [[1.0, 0.2, -0.4], [0.6, 2.5, 0.1], [-0.3, 0.8, 0.7]]


def _t(value, dtype="float32"):
    return keras.ops.convert_to_tensor(np.asarray(value, dtype))


def _weights(strategy, matrices, dtype="float32"):
    return [
        keras.ops.convert_to_numpy(strategy.compute_weights(_t(m, dtype)))
        for m in matrices
    ]


def test_registry_name_resolves():
    assert isinstance(keras_mtl.weighting.get("modo"), MoDo)
    assert MoDo.batches_per_step == 3


def test_two_steps_from_uniform():
    """methods-new.md, MoDo test 1: A = [[1, 1], [2, 3]], gamma = rho = 0.1."""
    got = _weights(MoDo(gamma=0.1, rho=0.1), [[[1.0, 1.0], [2.0, 3.0]]] * 2)
    np.testing.assert_allclose(got, [[0.575, 0.425], [0.6455, 0.3545]], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torchjd_reference_sequences(dtype):
    """TorchJD 0.18.0 `MoDoWeighting`, three calls on non-symmetric 3 x 3
    matrices (float64 values, rounded to 1e-8), with TorchJD's defaults and
    with LibMTL's gamma."""
    expected = {
        0.1: [
            [0.36666667, 0.36333333, 0.27],
            [0.39507778, 0.30937778, 0.29554444],
            [0.41685511, 0.342519, 0.24062589],
        ],
        1e-3: [
            [0.33366667, 0.33363333, 0.3327],
            [0.33397751, 0.33314394, 0.33287855],
            [0.33430968, 0.33344411, 0.33224621],
        ],
    }
    for gamma, want in expected.items():
        got = np.asarray(_weights(MoDo(gamma=gamma, dtype=dtype), [A1, A2, A1], dtype))
        # JAX without x64 computes a float64 request in float32.
        np.testing.assert_allclose(
            got, want, atol=1e-8 if got.dtype == "float64" else 1e-6
        )


def test_a_constant_shift_keeps_uniform_weights():
    """methods-new.md test 2: from uniform, A = c I moves every entry alike,
    so the projection gives uniform weights back, whatever c and rho."""
    for c in (0.0, 1.0, 123.0):
        for rho in (0.0, 0.1, 5.0):
            got = _weights(MoDo(rho=rho), [np.eye(4) * c] * 3)
            np.testing.assert_allclose(got, np.full((3, 4), 0.25), atol=1e-7)


def test_repeated_steps_reach_the_regularised_min_norm_weights():
    """methods-new.md test 3: with A = G = diag(1, 4), lambda converges to
    argmin over the simplex of 1/2 lambda^T (G + rho I) lambda."""
    for rho, want in ((0.0, [0.8, 0.2]), (1.0, [5.0 / 7.0, 2.0 / 7.0])):
        strategy = MoDo(gamma=0.1, rho=rho)
        step = compiled(strategy.compute_weights, layers=[strategy])
        strategy.build((2, 2))
        gramian = _t(np.diag([1.0, 4.0]))
        for _ in range(300):
            weights = step(gramian)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(weights), want, atol=1e-5)


def test_weights_stay_on_the_simplex_and_reset_restores_uniform():
    rng = np.random.default_rng(0)
    strategy = MoDo(gamma=0.5)
    for _ in range(5):
        weights = _weights(strategy, [rng.normal(size=(5, 5)) * 3.0])[0]
        assert np.all(weights >= 0.0)
        np.testing.assert_allclose(np.sum(weights), 1.0, atol=1e-6)
    strategy.reset_state()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy.task_weights), np.full(5, 0.2, "float32")
    )


def test_evaluation_computes_the_step_without_storing_it():
    strategy = MoDo()
    a = _t(A1)
    evaluated = keras.ops.convert_to_numpy(strategy.compute_weights(a, training=False))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy.task_weights), np.full(3, 1 / 3, "float32")
    )
    trained = keras.ops.convert_to_numpy(strategy.compute_weights(a))
    np.testing.assert_array_equal(evaluated, trained)


def test_the_three_batches_play_their_roles():
    """lambda from A = J1 J2^T (LibMTL's orientation, not J2 J1^T), the
    update sum_t lambda_t g_t from the third batch."""
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(3, 3, 6)).astype("float32")
    strategy = MoDo(gamma=0.3)
    update, weights = strategy(_t(grads))
    reference = MoDo(gamma=0.3)
    want = keras.ops.convert_to_numpy(
        reference.compute_weights(_t(grads[0] @ grads[1].T))
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(weights), want, atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), want @ grads[2], rtol=1e-5, atol=1e-6
    )
    transposed = MoDo(gamma=0.3).compute_weights(_t(grads[1] @ grads[0].T))
    assert np.max(np.abs(keras.ops.convert_to_numpy(transposed) - want)) > 1e-3


def test_one_matrix_stands_for_the_three_batches():
    rng = np.random.default_rng(2)
    grads = rng.normal(size=(4, 7)).astype("float32")
    single = MoDo().aggregate(grads)
    stacked = MoDo().aggregate(np.stack([grads] * 3))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(single), keras.ops.convert_to_numpy(stacked)
    )


def test_compiled_step_equals_eager():
    rng = np.random.default_rng(3)
    grads = _t(rng.normal(size=(3, 4, 9)))
    eager = MoDo()
    eager_out = [eager(grads) for _ in range(3)]
    strategy = MoDo()
    strategy.build(grads.shape)
    step = compiled(lambda g: strategy(g), layers=[strategy])
    for (u1, w1), (u2, w2) in zip(eager_out, [step(grads) for _ in range(3)]):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(u2), u1, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(keras.ops.convert_to_numpy(w2), w1, atol=1e-6)


def test_validation():
    for kwargs in ({"gamma": 0.0}, {"gamma": -1.0}, {"gamma": True}, {"rho": -0.1}):
        with pytest.raises(ValueError, match="MoDo `(gamma|rho)`"):
            MoDo(**kwargs)
    with pytest.raises(ValueError, match="expects per-task gradients of shape"):
        MoDo()(_t(np.zeros((2, 3, 4))))
    with pytest.raises(ValueError, match="built for 3 tasks"):
        strategy = MoDo()
        strategy.compute_weights(_t(A1))
        strategy.compute_weights(_t(np.eye(2)))


def test_huge_products_give_a_vertex_not_zero_weights():
    """Where lambda - gamma A lambda has entries of 1e9 and more, float32
    rounding loses every entry of lambda - tau in the reference projection
    (TorchJD returns all-zero, then uniform weights); the projection here
    subtracts the largest entry first and returns the vertex."""
    a = np.array([[-6.7e9, -5.0e10], [-7.4e9, -7.6e10]])
    got = _weights(MoDo(), [a, a])
    np.testing.assert_array_equal(got, [[0.0, 1.0], [0.0, 1.0]])


# --- Degenerate inputs (issue 15; tests/weighting/degenerate_inputs.py) ---
# Deterministic from the initial (uniform) state, so permutation-equivariant;
# not positively homogeneous (gamma multiplies A).


@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    degenerate_checks.check_cases(
        on_jax(MoDo), degenerate_inputs.degenerate_cases(shapes=[shape])
    )


def test_degenerate_weights_stay_on_the_simplex():
    failures, make = [], on_jax(MoDo)
    for case in degenerate_inputs.degenerate_cases():
        _, weights = degenerate_checks.aggregate(make, case.matrix)
        if np.any(weights < 0) or abs(np.sum(weights) - 1.0) > 1e-5:
            failures.append(f"{case.id}: {weights}")
    assert not failures, "\n".join(failures)
