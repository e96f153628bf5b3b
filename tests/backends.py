"""Backend-neutral ways for tests to run code as a compiled step would.

The suite runs on TensorFlow and (for modules marked `both_backends`, see
`conftest.py`) on JAX. A test that checks a strategy inside a compiled
step uses `compiled` instead of `tf.function`: on TensorFlow it is
`tf.function` (with XLA when `jit_compile`), on JAX it is `jax.jit` (JAX
always compiles with XLA), with the state of `layers` threaded through the
call as values, the way Keras' JAX trainer threads a model's state.
"""

import keras

BACKEND = keras.backend.backend()


def compiled(fn, jit_compile=True, layers=()):
    """`fn` compiled as a training step compiles it.

    Args:
        fn: a function of tensors returning tensors (nested structures
            allowed).
        jit_compile: on TensorFlow, XLA (True) or a plain graph (False).
            JAX has only XLA.
        layers: the layers (strategies) whose variables `fn` reads or
            assigns. On JAX their values go in and out of the compiled
            function and are assigned back after each call; they must be
            built before the first call.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit_compile)
    if BACKEND != "jax":
        raise NotImplementedError(f"no compiled mode for backend {BACKEND!r}")
    import jax

    def variables():
        seen, out = set(), []
        for layer in layers:
            for variable in layer.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    out.append(variable)
        return out

    @jax.jit
    def stateless(values, args, kwargs):
        state = variables()
        with keras.StatelessScope(state_mapping=list(zip(state, values))) as scope:
            outputs = fn(*args, **kwargs)
        return outputs, [scope.get_current_value(v) for v in state]

    def call(*args, **kwargs):
        state = variables()
        outputs, values = stateless([v.value for v in state], args, kwargs)
        for variable, value in zip(state, values):
            variable.assign(value)
        return outputs

    return call


def graph(fn, layers=()):
    """`fn` in a graph without XLA where the backend has one (TensorFlow);
    on JAX, the same as `compiled`."""
    return compiled(fn, jit_compile=False, layers=layers)
