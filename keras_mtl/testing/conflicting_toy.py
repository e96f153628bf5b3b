"""The two-dimensional conflicting toy of the CAGrad paper.

Two objectives of theta = (x1, x2) whose gradients conflict in a flat
valley; the Pareto set is the segment x2 = -8.3552, x1 in [-7, 7], with the
average-loss optimum at its centre (0, -8.3552). With Adam at lr 1e-3, plain
gradient averaging stalls in the valley from some starts while CAGrad
crosses it and reaches the centre (Liu et al., NeurIPS 2021, Fig. 1).

Written from the equations of the paper's toy (methods.md C2); the steps
run inside one `tf.while_loop`, compiled with XLA, so that 100k steps take
seconds.
"""

from keras_mtl.utils.backend import require_tensorflow

# The toy's steps run in a tf.while_loop under tf.function.
tf = require_tensorflow("keras_mtl.testing")

#: The centre of the Pareto segment.
PARETO_CENTRE = (0.0, -8.3552)


def conflicting_toy_losses(theta):
    """Returns the two task losses `(2,)` at `theta` `(2,)`."""
    x1, x2 = theta[0], theta[1]
    c1 = tf.maximum(tf.tanh(x2 / 2.0), 0.0)
    c2 = tf.maximum(tf.tanh(-x2 / 2.0), 0.0)
    f1 = tf.math.log(tf.maximum(tf.abs(0.5 * (-x1 - 7.0) - tf.tanh(-x2)), 5e-6)) + 6.0
    f2 = tf.math.log(tf.maximum(tf.abs(0.5 * (-x1 + 3.0) + tf.tanh(-x2) + 2.0), 5e-6))
    f2 = f2 + 6.0
    g1 = ((-x1 + 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    g2 = ((-x1 - 7.0) ** 2 + 0.1 * (-x2 - 8.0) ** 2) / 10.0 - 20.0
    return tf.stack([c1 * f1 + c2 * g1, c1 * f2 + c2 * g2])


def run_conflicting_toy(aggregate, start, steps, learning_rate=1e-3, jit_compile=True):
    """Runs Adam on the toy with the update `aggregate(grads, losses)`.

    Args:
        aggregate: a callable mapping the `(2, 2)` per-task gradient matrix
            and the `(2,)` losses to a `(2,)` update, traceable by
            `tf.function` (a strategy's `call` returning `(update, weights)`
            is accepted too).
        start: the initial `(x1, x2)`.
        steps: the number of Adam steps.
        learning_rate: Adam's learning rate (the paper's 1e-3).
        jit_compile: whether to compile the loop with XLA.

    Returns:
        `(theta, losses)` as numpy arrays after the last step.
    """

    def update_of(grads, losses):
        result = aggregate(grads, losses)
        return result[0] if isinstance(result, (tuple, list)) else result

    @tf.function(jit_compile=jit_compile)
    def run(theta):
        beta1, beta2, eps = 0.9, 0.999, 1e-8

        def body(step, theta, m, v):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(theta)
                losses = conflicting_toy_losses(theta)
                first, second = losses[0], losses[1]
            grads = tf.stack(
                [tape.gradient(first, theta), tape.gradient(second, theta)]
            )
            update = tf.cast(update_of(grads, losses), theta.dtype)
            t = tf.cast(step + 1, theta.dtype)
            m = beta1 * m + (1.0 - beta1) * update
            v = beta2 * v + (1.0 - beta2) * update * update
            m_hat = m / (1.0 - beta1**t)
            v_hat = v / (1.0 - beta2**t)
            theta = theta - learning_rate * m_hat / (tf.sqrt(v_hat) + eps)
            return step + 1, theta, m, v

        zeros = tf.zeros_like(theta)
        _, theta, _, _ = tf.while_loop(
            lambda step, *_: step < steps, body, (tf.constant(0), theta, zeros, zeros)
        )
        return theta, conflicting_toy_losses(theta)

    theta, losses = run(tf.constant(start, tf.float32))
    return theta.numpy(), losses.numpy()
