"""Backend-neutral gradients for strategy tests.

`value_and_grad(fn, *args)` differentiates the first output of `fn` (a
scalar, or a tensor whose entries are summed, as `tf.GradientTape` does)
with respect to the numpy arrays `args` and to `variables`, on TensorFlow
with a tape and on JAX with `jax.value_and_grad`. The variables of
`layers` (and `variables`) are threaded through the call on JAX, the way
`backends.compiled` does, so that a strategy's assignments take effect on
both backends.
"""

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

#: For the tests of a `both_backends` module that still need TensorFlow
#: (a `tf.GradientTape` through a model, or `missing_task_checks`, which is
#: TensorFlow-only until its port).
tf_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow only (not yet ported to JAX)"
)


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def _numpy(structure):
    return keras.tree.map_structure(
        lambda x: None if x is None else keras.ops.convert_to_numpy(x), structure
    )


def value_and_grad(fn, *args, variables=(), layers=()):
    """Returns `(outputs, grads)`: the outputs of `fn(*args)` and the
    gradients of its first output with respect to `args` then `variables`
    (numpy arrays; zeros where the output does not depend on one)."""
    args = [np.asarray(a, dtype="float32") for a in args]
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            outputs = fn(*xs)
        grads = tape.gradient(
            _first(outputs),
            [*xs, *[v.value for v in variables]],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return _numpy(outputs), _numpy(grads)
    if BACKEND != "jax":
        raise NotImplementedError(f"no gradients for backend {BACKEND!r}")
    import jax

    seen = {id(v) for v in variables}
    others = []
    for layer in layers:
        for v in layer.variables:
            if id(v) not in seen:
                seen.add(id(v))
                others.append(v)
    state = variables + others

    def objective(xs, values, other_values):
        mapping = list(zip(variables, values)) + list(zip(others, other_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            outputs = fn(*xs)
        new_state = [scope.get_current_value(v) for v in state]
        return keras.ops.sum(_first(outputs)), (outputs, new_state)

    (_, (outputs, new_state)), (g_args, g_vars) = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True
    )(args, [v.value for v in variables], [v.value for v in others])
    for variable, value in zip(state, new_state):
        variable.assign(value)
    return _numpy(outputs), _numpy([*g_args, *g_vars])
