"""The two-dimensional conflicting toy of the CAGrad paper.

Two objectives of theta = (x1, x2) whose gradients conflict in a flat
valley; the Pareto set is the segment x2 = -8.3552, x1 in [-7, 7], with the
average-loss optimum at its centre (0, -8.3552). With Adam at lr 1e-3, plain
gradient averaging stalls in the valley from some starts while CAGrad
crosses it and reaches the centre (Liu et al., NeurIPS 2021, Fig. 1).

Written from the equations of the paper's toy (methods.md C2). The losses
are in `keras.ops`; the steps run inside one compiled loop, so that 100k
steps take seconds: a `tf.while_loop` with a tape under `tf.function` on
TensorFlow, a `jax.lax.fori_loop` of `jax.jacrev` under `jax.jit` on JAX.
"""

import keras
import numpy as np
from keras import ops

#: The centre of the Pareto segment.
PARETO_CENTRE = (0.0, -8.3552)


def conflicting_toy_losses(theta):
    """Returns the two task losses `(2,)` at `theta` `(2,)`."""
    theta = ops.convert_to_tensor(theta)
    x1, x2 = theta[0], theta[1]
    c1 = ops.maximum(ops.tanh(x2 / 2.0), 0.0)
    c2 = ops.maximum(ops.tanh(-x2 / 2.0), 0.0)
    f1 = ops.log(ops.maximum(ops.abs(0.5 * (-x1 - 7.0) - ops.tanh(-x2)), 5e-6)) + 6.0
    f2 = ops.log(ops.maximum(ops.abs(0.5 * (-x1 + 3.0) + ops.tanh(-x2) + 2.0), 5e-6))
    f2 = f2 + 6.0
    g1 = ((-x1 + 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    g2 = ((-x1 - 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    return ops.stack([c1 * f1 + c2 * g1, c1 * f2 + c2 * g2])


def run_conflicting_toy(aggregate, start, steps, learning_rate=1e-3, jit_compile=True):
    """Runs Adam on the toy with the update `aggregate(grads, losses)`.

    Args:
        aggregate: a callable mapping the `(2, 2)` per-task gradient matrix
            and the `(2,)` losses to a `(2,)` update, in `keras.ops`
            (traced inside the loop; a strategy's call returning `(update,
            weights)` is accepted too, built beforehand and without state
            to assign on JAX).
        start: the initial `(x1, x2)`.
        steps: the number of Adam steps.
        learning_rate: Adam's learning rate (the paper's 1e-3).
        jit_compile: whether to compile the loop with XLA (on JAX, False
            runs it op by op, for debugging).

    Returns:
        `(theta, losses)` as numpy arrays after the last step.
    """

    def update_of(grads, losses):
        result = aggregate(grads, losses)
        return result[0] if isinstance(result, (tuple, list)) else result

    def adam(step, theta, m, v, grads, losses):
        update = ops.cast(update_of(grads, losses), theta.dtype)
        t = ops.cast(step + 1, theta.dtype)
        m = _BETA_1 * m + (1.0 - _BETA_1) * update
        v = _BETA_2 * v + (1.0 - _BETA_2) * update * update
        m_hat = m / (1.0 - _BETA_1**t)
        v_hat = v / (1.0 - _BETA_2**t)
        return theta - learning_rate * m_hat / (ops.sqrt(v_hat) + _EPSILON), m, v

    theta = ops.convert_to_tensor(np.asarray(start, "float32"))
    if keras.backend.backend() == "jax":
        run = _jax_loop(adam, steps, jit_compile)
    else:
        run = _tensorflow_loop(adam, steps, jit_compile)
    theta, losses = run(theta)
    return ops.convert_to_numpy(theta), ops.convert_to_numpy(losses)


_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-8


def _tensorflow_loop(adam, steps, jit_compile):
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def run(theta):
        def body(step, theta, m, v):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(theta)
                losses = conflicting_toy_losses(theta)
                first, second = losses[0], losses[1]
            grads = tf.stack(
                [tape.gradient(first, theta), tape.gradient(second, theta)]
            )
            return (step + 1, *adam(step, theta, m, v, grads, losses))

        zeros = tf.zeros_like(theta)
        _, theta, _, _ = tf.while_loop(
            lambda step, *_: step < steps, body, (tf.constant(0), theta, zeros, zeros)
        )
        return theta, conflicting_toy_losses(theta)

    return run


def _jax_loop(adam, steps, jit_compile):
    import jax

    jacobian = jax.jacrev(conflicting_toy_losses)

    def run(theta):
        def body(step, state):
            theta, m, v = state
            return adam(
                step, theta, m, v, jacobian(theta), conflicting_toy_losses(theta)
            )

        zeros = ops.zeros_like(theta)
        theta, _, _ = jax.lax.fori_loop(0, steps, body, (theta, zeros, zeros))
        return theta, conflicting_toy_losses(theta)

    # JAX compiles with XLA either way; jit_compile=False runs op by op.
    return jax.jit(run) if jit_compile else run
