"""Calls of a freshly built strategy, served by one compiled function per shape.

`aggregator_properties.check_cases` (and `aggregate`) call `make()` for every
call they make: a fresh strategy each time, from its initial state, run
eagerly. Eagerly, JAX compiles every primitive again for each new input
shape (about fifty compilations per shape for a small method) and
TensorFlow dispatches the solvers' loops op by op: over the degenerate
family (a few shapes, eleven kinds, up to four calls per case) that is most
of the time of the check.

`FreshCompiled(make)` stands in for `make`. What it returns is called like
a strategy, `(grads, losses, training=...) -> (update, weights)`, and gives
what a freshly built `make()` gives on that input: for each input shape
(and `training`) one strategy is built, the values of its variables right
after `build` are kept, and one function is compiled (`backends.compiled`:
on TensorFlow a graph, without XLA by default, so the same kernels as
eagerly; on JAX `jax.jit`); before every call those initial values are
assigned back, so stateful and random methods start from their initial
state (their first step) as a fresh strategy does. Every input of a shape
then goes through the same compiled function.

`make()` must build the same strategy every time (a fixed seed for random
methods), as the checks that call it already require.
"""

from __future__ import annotations

import keras
import numpy as np
from backends import compiled


class FreshCompiled:
    """A `make` for `aggregator_properties` whose strategies run compiled.

    Args:
        make: a callable returning a fresh strategy (always the same one).
        jit_compile: on TensorFlow, compile with XLA (True) or run a plain
            graph (False, default: the eager kernels). JAX always uses XLA.
    """

    def __init__(self, make, jit_compile=False):
        self._make = make
        self._jit_compile = jit_compile
        self._entries = {}
        self.traces = 0

    def __call__(self):
        return self._call

    def _entry(self, shape, training):
        key = (shape, bool(training))
        if key not in self._entries:
            strategy = self._make()
            strategy.build(shape)
            initial = [
                np.array(keras.ops.convert_to_numpy(v)) for v in strategy.variables
            ]

            def step(grads, losses):
                self.traces += 1
                return strategy(grads, losses, training=training)

            function = compiled(step, jit_compile=self._jit_compile, layers=[strategy])
            self._entries[key] = (strategy, initial, function)
        return self._entries[key]

    def _call(self, grads, losses=None, training=True):
        grads = keras.ops.convert_to_tensor(grads)
        shape = tuple(grads.shape)
        if losses is None:
            losses = keras.ops.ones([shape[0]])
        strategy, initial, function = self._entry(shape, training)
        for variable, value in zip(strategy.variables, initial):
            variable.assign(value)
        return function(grads, keras.ops.convert_to_tensor(losses))


def on_jax(make):
    """`FreshCompiled(make)` on JAX, where an eager call compiles every
    primitive again for each new shape; `make` itself elsewhere (on
    TensorFlow an eager call of a small method costs less than tracing a
    graph for each shape)."""
    if keras.backend.backend() == "jax":
        return FreshCompiled(make)
    return make
