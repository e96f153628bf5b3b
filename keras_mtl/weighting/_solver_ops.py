"""Running the small in-graph solvers of the gradient methods as one kernel.

MGDA, CAGrad and Nash-MTL choose their task weights with iterative solvers
on the `(T, T)` Gramian: `tf.while_loop`s of tiny ops. In a graph without
XLA every one of those ops is dispatched on its own (some microseconds
each), so a solver of a few hundred iterations costs milliseconds, more
than the per-task gradients of a small network. Compiled with XLA the same
loop runs as one fused kernel in a small fraction of that time.

`solver_function(fn)` therefore returns a callable that runs `fn`

- inside a traced graph (the model's `train_step`, with or without
  `jit_compile`): as a nested `tf.function(jit_compile=True)`, i.e. one XLA
  launch in a graph without XLA, and simply inlined when the graph is
  already compiled with XLA;
- eagerly (standalone `aggregate` calls, tests): as a plain
  `tf.function`, which avoids one XLA compilation per number of tasks.

Both give the same numbers up to rounding.
"""

import tensorflow as tf


def solver_function(fn):
    """Wraps a solver on small tensors, see the module docstring.

    Args:
        fn: a function of tensors (and static Python values) built from
            plain TensorFlow ops that XLA can compile, without autograph.

    Returns:
        A callable with the signature of `fn`.
    """
    plain = tf.function(fn, autograph=False)
    compiled = tf.function(fn, autograph=False, jit_compile=True)

    def call(*args):
        if tf.executing_eagerly():
            return plain(*args)
        return compiled(*args)

    call.__name__ = getattr(fn, "__name__", "solver")
    call.__doc__ = fn.__doc__
    return call


def psd_solve(matrix, rhs):
    """Solves `matrix x = rhs` for a small symmetric positive definite matrix.

    A Cholesky factorisation written out column by column (the size is
    static), then two triangular solves. Unlike `tf.linalg.solve` and
    `tf.linalg.cholesky`, whose CPU kernels raise an error on a singular
    input, it never fails: a matrix that is not numerically positive
    definite gives non-finite entries, which the caller checks.

    Args:
        matrix: `(n, n)` symmetric tensor, n static.
        rhs: `(n, k)` tensor.

    Returns:
        The `(n, k)` solution.
    """
    n = matrix.shape[0]
    dtype = matrix.dtype
    rows = tf.range(n)
    columns = []
    for j in range(n):
        column = matrix[:, j]
        if columns:
            done = tf.stack(columns, axis=1)
            column = column - tf.linalg.matvec(done, done[j])
        pivot = tf.sqrt(column[j])
        column = tf.where(rows >= j, column / pivot, tf.zeros([], dtype))
        columns.append(column)
    lower = tf.stack(columns, axis=1)
    half = tf.linalg.triangular_solve(lower, rhs, lower=True)
    return tf.linalg.triangular_solve(lower, half, lower=True, adjoint=True)
