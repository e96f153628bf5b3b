"""Tests of `TrimmedMean`, the coordinate-wise trimmed mean (Yin et al., ICML
2018)."""

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import numpy as np
import pytest
from fresh_compiled import on_jax

import keras_mtl
from keras_mtl.weighting.trimmed_mean import TrimmedMean

pytestmark = pytest.mark.both_backends


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


# methods-new.md section 6 (TorchJD 0.18.0: TrimmedMean(1) -> [2, 1, 5/3]).
J = np.array([[1, -5, 3], [2, 0, 100], [-50, 1, 2], [4, 2, -1], [3, 3, 0]], "float32")


def _aggregate(trim_number, grads):
    update, weights = TrimmedMean(trim_number)(_t(grads))
    return keras.ops.convert_to_numpy(update), keras.ops.convert_to_numpy(weights)


def test_registry_names_resolve():
    for name in ["trimmed_mean", "tm", "TrimmedMean"]:
        assert isinstance(keras_mtl.weighting.get(name), TrimmedMean)


def test_reference_values():
    np.testing.assert_allclose(_aggregate(1, J)[0], [2.0, 1.0, 5.0 / 3.0], rtol=1e-6)
    np.testing.assert_allclose(_aggregate(2, J)[0], [2.0, 1.0, 2.0], rtol=1e-6)


def test_no_trimming_is_the_mean_and_full_trimming_the_median():
    grads = np.random.default_rng(0).normal(size=(7, 6)).astype("float32")
    update, weights = _aggregate(0, grads)
    np.testing.assert_allclose(update, grads.mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(weights, np.full(7, 1 / 7), rtol=1e-6)
    np.testing.assert_allclose(_aggregate(3, grads)[0], np.median(grads, axis=0))


def test_invariant_to_task_order_and_weights_count_the_kept_entries():
    grads = np.random.default_rng(1).normal(size=(6, 40)).astype("float32")
    update, weights = _aggregate(2, grads)
    order = np.random.default_rng(2).permutation(6)
    permuted, permuted_weights = _aggregate(2, grads[order])
    np.testing.assert_allclose(permuted, update, rtol=1e-6)
    np.testing.assert_allclose(permuted_weights, weights[order], rtol=1e-6)
    ranks = grads.argsort(axis=0).argsort(axis=0)
    kept = ((ranks >= 2) & (ranks < 4)).mean(axis=1) / 2
    np.testing.assert_allclose(weights, kept, rtol=1e-6)
    assert weights.sum() == pytest.approx(1.0)


def test_bounded_influence_of_b_arbitrary_rows():
    rng = np.random.default_rng(3)
    honest = rng.normal(size=(5, 8)).astype("float32")
    for b in (1, 2):
        attacked = np.concatenate([honest, rng.normal(size=(b, 8)) * 1e6])
        attacked = attacked.astype("float32")
        update, _ = _aggregate(b, attacked)
        assert np.all(update >= honest.min(axis=0) - 1e-6)
        assert np.all(update <= honest.max(axis=0) + 1e-6)
    assert np.abs(attacked.mean(axis=0)).max() > 1e4  # the mean is not


def test_validation():
    with pytest.raises(ValueError, match="trim_number"):
        TrimmedMean(-1)
    with pytest.raises(ValueError, match="trim_number"):
        TrimmedMean(1.5)
    with pytest.raises(ValueError, match="trim_number <= 1"):
        TrimmedMean(2).build((4, 3))


# --- Degenerate inputs (issue 15; tests/weighting/degenerate_inputs.py) ---
# The coordinate-wise trimmed mean is permutation-equivariant in its update;
# which of two tied values is trimmed (and so the logged weights) depends on
# the task order. It is positively homogeneous.


@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    num_tasks = shape[0]
    if num_tasks < 3:
        with pytest.raises(ValueError, match="trim_number"):
            TrimmedMean(trim_number=1).build((num_tasks, shape[1]))
        return
    degenerate_checks.check_cases(
        on_jax(TrimmedMean),
        degenerate_inputs.degenerate_cases(shapes=[shape]),
        lambda case: {"permute_weights": False, "homogeneous": True},
    )
