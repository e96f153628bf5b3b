"""Tests of IMTL-G."""

import numpy as np
import pytest
import tensorflow as tf

import keras_mtl.weighting as weighting
from keras_mtl.weighting.imtl_g import IMTLG


def _reference(grads):
    """Float64 re-derivation of LibMTL `LibMTL/weighting/IMTL.py` (commit
    daa780e) at loss scale s = 0: alpha_{2:T} = g_1 U^T (D U^T)^{-1}."""
    grads = np.asarray(grads, np.float64)
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    d_mat = grads[:1] - grads[1:]
    u_mat = unit[:1] - unit[1:]
    rest = grads[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
    return np.concatenate([[1.0 - rest.sum()], rest])


def _random_grads(rng, num, dim, common=0.0):
    grads = rng.normal(size=(num, dim)) * rng.uniform(0.3, 3.0, size=(num, 1))
    return (grads + common * rng.normal(size=(1, dim))).astype("float32")


def _projections(grads, update):
    grads = np.asarray(grads, np.float64)
    unit = grads / np.linalg.norm(grads, axis=1, keepdims=True)
    return unit @ np.asarray(update, np.float64)


def test_registry_and_config_round_trip():
    assert isinstance(weighting.get("imtl"), IMTLG)
    assert isinstance(weighting.get("imtl_g"), IMTLG)
    original = IMTLG(rep_grad=True, name="imtl")
    rebuilt = IMTLG.from_config(original.get_config())
    assert rebuilt.get_config() == original.get_config() and rebuilt.rep_grad
    assert IMTLG.requires == "gramian" and IMTLG.supports_rep_grad


def test_two_task_hand_computed():
    # u = e1, e2; d = (a1, 2 a2) with d.u1 = d.u2 and a1 + a2 = 1.
    update, weights = IMTLG()(np.array([[1.0, 0.0], [0.0, 2.0]], "float32"))
    np.testing.assert_allclose(weights.numpy(), [2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(update.numpy(), [2 / 3, 2 / 3], rtol=1e-6)
    # A conflicting pair: g1 = (1, 0), g2 = (-1, 1) (u2 = (-1, 1)/sqrt 2).
    # d = (a1 - a2, a2), d.u1 = d.u2 gives a1 - a2 = (a2 - a1 + a2)/sqrt 2.
    update, weights = IMTLG()(np.array([[1.0, 0.0], [-1.0, 1.0]], "float32"))
    r = np.sqrt(2.0)
    a2 = (1 + 1 / r) / (2 + 3 / r)
    np.testing.assert_allclose(weights.numpy(), [1 - a2, a2], rtol=1e-5)


@pytest.mark.parametrize("num", [2, 3, 4, 5])
def test_equal_projections_and_reference(num):
    rng = np.random.default_rng(num)
    for trial in range(4):
        grads = _random_grads(rng, num, num + 3, common=1.0 if trial % 2 else 0.0)
        update, weights = IMTLG()(grads)
        w = weights.numpy().astype("float64")
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
        proj = _projections(grads, update.numpy())
        np.testing.assert_allclose(proj, proj[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(w, _reference(grads), rtol=1e-3, atol=1e-4)


def test_direction_invariant_to_rescaling_a_task():
    rng = np.random.default_rng(7)
    grads = _random_grads(rng, 4, 6, common=1.0)
    update, weights = IMTLG()(grads)
    scaled = grads.copy()
    scaled[2] *= 1e3
    update_s, weights_s = IMTLG()(scaled)
    u, us = update.numpy().astype("float64"), update_s.numpy().astype("float64")
    # Same line; the sign can flip, since sum_t alpha_t = 1 fixes the scale
    # through the norms (the reference does the same).
    cosine = us @ u / (np.linalg.norm(us) * np.linalg.norm(u))
    np.testing.assert_allclose(abs(cosine), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        weights_s.numpy(), _reference(scaled), rtol=1e-3, atol=1e-5
    )
    # alpha_k (relative to the others) is divided by the scale.
    ratio = weights_s.numpy() / weights.numpy()
    np.testing.assert_allclose(ratio[2] * 1e3 / ratio[0], 1.0, rtol=1e-3)


def test_permutation_equivariance():
    rng = np.random.default_rng(8)
    grads = _random_grads(rng, 4, 6, common=1.0)
    perm = np.array([2, 0, 3, 1])
    update, weights = IMTLG()(grads)
    update_p, weights_p = IMTLG()(grads[perm])
    np.testing.assert_allclose(update_p.numpy(), update.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        weights_p.numpy(), weights.numpy()[perm], rtol=1e-4, atol=1e-5
    )


def test_identical_rows_give_the_mean():
    row = np.array([0.5, -1.0, 2.0], "float32")
    update, weights = IMTLG()(np.tile(row, (3, 1)))
    np.testing.assert_allclose(weights.numpy(), [1 / 3] * 3, rtol=1e-5)
    np.testing.assert_allclose(update.numpy(), row, rtol=1e-5)


def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(9)
    g = _random_grads(rng, 4, 6)
    cases = [
        np.zeros((3, 5), "float32"),
        np.stack([g[0], g[1], g[0] + g[1]]),
        np.stack([g[0], 2.0 * g[0]]),
        np.stack([g[0], np.zeros_like(g[0]), g[1]]),
        g * 1e-10,
        g * 1e10,
        g * np.array([[1e-10], [1.0], [1e10], [1.0]], "float32"),
        _random_grads(rng, 5, 2),
    ]
    for grads in cases:
        update, weights = IMTLG()(grads)
        assert np.isfinite(update.numpy()).all() and np.isfinite(weights.numpy()).all()
    # A global scale leaves alpha unchanged.
    np.testing.assert_allclose(
        IMTLG()(g * 1e-10)[1].numpy(), IMTLG()(g)[1].numpy(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        IMTLG()(g * 1e10)[1].numpy(), IMTLG()(g)[1].numpy(), rtol=1e-4, atol=1e-6
    )
    # One task: its own gradient.
    np.testing.assert_allclose(IMTLG().aggregate(g[:1]).numpy(), g[0], rtol=1e-6)


def test_eager_equals_xla():
    # The float32 Gramians of the two modes differ by rounding; IMTL-G's
    # linear system amplifies that a little.
    rng = np.random.default_rng(10)
    eager, xla = IMTLG(), IMTLG()
    step = tf.function(lambda g: xla(g), jit_compile=True)
    for _ in range(2):
        grads = _random_grads(rng, 4, 7, common=1.0)
        u1, w1 = eager(grads)
        u2, w2 = step(tf.constant(grads))
        np.testing.assert_allclose(u2.numpy(), u1.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(w2.numpy(), w1.numpy(), rtol=1e-4, atol=1e-5)
