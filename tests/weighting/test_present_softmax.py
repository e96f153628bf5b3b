"""Tests of `present_softmax`, the softmax over the present tasks that is
`ops.softmax` bit for bit when every task is present."""

import numpy as np
import pytest
from backend_grads import value_and_grad
from backends import compiled
from keras import ops

from keras_mtl.weighting._present_task_ops import present_softmax

pytestmark = pytest.mark.both_backends


def _value_and_grad(logits, present):
    present = ops.convert_to_tensor(np.asarray(present, bool))

    def weighted(logits):
        soft = present_softmax(logits, present)
        # A weighted sum, so that the gradient is not 0 by symmetry.
        return ops.sum(soft * ops.arange(1.0, soft.shape[0] + 1.0)), soft

    (_, soft), (grad,) = value_and_grad(weighted, logits)
    return soft, grad


def test_every_task_present_is_ops_softmax_bit_for_bit_eagerly_and_under_xla():
    rng = np.random.default_rng(0)
    compiled_present = compiled(present_softmax)
    compiled_softmax = compiled(ops.softmax)
    for num_tasks in (3, 8):
        all_present = ops.ones((num_tasks,), dtype="bool")
        for scale in (0.1, 1.0, 30.0):
            logits = ops.convert_to_tensor(
                rng.normal(size=num_tasks).astype(np.float32) * scale
            )
            expected = ops.convert_to_numpy(ops.softmax(logits))
            got = ops.convert_to_numpy(present_softmax(logits, all_present))
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(
                ops.convert_to_numpy(compiled_present(logits, all_present)),
                ops.convert_to_numpy(compiled_softmax(logits)),
            )


def test_absent_entries_get_zero_and_never_enter_the_result():
    logits = [0.3, np.nan, -1.2, np.inf, 2.0]
    present = [True, False, True, False, True]
    soft, grad = _value_and_grad(logits, present)
    kept = np.array([0.3, -1.2, 2.0])
    expected = np.exp(kept - kept.max()) / np.exp(kept - kept.max()).sum()
    np.testing.assert_allclose(soft[[0, 2, 4]], expected, rtol=1e-6)
    np.testing.assert_array_equal(soft[[1, 3]], 0.0)
    # d/dx_i sum_j c_j s_j = s_i (c_i - sum_j c_j s_j) on the present tasks.
    c = np.array([1.0, 3.0, 5.0])
    np.testing.assert_allclose(
        grad[[0, 2, 4]], expected * (c - np.dot(c, expected)), rtol=1e-5
    )
    np.testing.assert_array_equal(grad[[1, 3]], 0.0)


def test_no_task_present_gives_zeros_and_a_finite_gradient():
    soft, grad = _value_and_grad([1.0, -2.0, 0.5], [False, False, False])
    np.testing.assert_array_equal(soft, 0.0)
    np.testing.assert_array_equal(grad, 0.0)
