"""Tests of `present_softmax`, the softmax over the present tasks that is
`ops.softmax` bit for bit when every task is present."""

import numpy as np
import tensorflow as tf
from keras import ops

from keras_mtl.weighting._present_task_ops import present_softmax


def _value_and_grad(logits, present):
    logits = tf.constant(np.asarray(logits, np.float32))
    present = tf.constant(np.asarray(present, bool))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        soft = present_softmax(logits, present)
        # A weighted sum, so that the gradient is not 0 by symmetry.
        total = tf.reduce_sum(soft * tf.range(1.0, soft.shape[0] + 1.0))
    return soft.numpy(), tape.gradient(total, logits).numpy()


def test_every_task_present_is_ops_softmax_bit_for_bit_eagerly_and_under_xla():
    rng = np.random.default_rng(0)
    compiled = tf.function(present_softmax, jit_compile=True)
    compiled_softmax = tf.function(tf.nn.softmax, jit_compile=True)
    for num_tasks in (3, 8):
        all_present = tf.ones((num_tasks,), dtype=tf.bool)
        for scale in (0.1, 1.0, 30.0):
            logits = tf.constant(rng.normal(size=num_tasks).astype(np.float32) * scale)
            expected = ops.convert_to_numpy(ops.softmax(logits))
            got = ops.convert_to_numpy(present_softmax(logits, all_present))
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(
                compiled(logits, all_present).numpy(), compiled_softmax(logits).numpy()
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
