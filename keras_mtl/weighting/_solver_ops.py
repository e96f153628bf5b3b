"""Running the small in-graph solvers of the gradient methods as one kernel.

MGDA, CAGrad and Nash-MTL choose their task weights with iterative solvers
on the `(T, T)` Gramian: `ops.while_loop`s of tiny ops. In a TensorFlow
graph without XLA every one of those ops is dispatched on its own (some
microseconds each), so a solver of a few hundred iterations costs
milliseconds, more than the per-task gradients of a small network.
Compiled with XLA the same loop runs as one fused kernel in a small
fraction of that time.

`solver_function(fn)` therefore returns a callable that runs `fn`

- on TensorFlow, inside a traced graph (the model's `train_step`, with or
  without `jit_compile`): as a nested `tf.function(jit_compile=True)`, i.e.
  one XLA launch in a graph without XLA, and simply inlined when the graph
  is already compiled with XLA;
- on TensorFlow, eagerly (standalone `aggregate` calls, tests): as a plain
  `tf.function`, which avoids one XLA compilation per number of tasks;
- on JAX: as `jax.jit(fn)`, the Python (str, int, float, bool) arguments
  static, in float64 whether or not `jax_enable_x64` is set (the float
  inputs are cast to float64 in an `enable_x64` scope, the float results
  back to the dtype of the first float input), so that the solvers'
  tolerances (1e-10 and below) and floors (1e-300) mean on JAX what they
  mean on TensorFlow. Inside a traced training step (itself under `jax.jit`) it is
  inlined into the step's XLA program; called eagerly it compiles once per
  shape and static arguments, where the plain function would compile its
  `ops.while_loop` (`lax.while_loop`) again at every call. Its inputs
  and results are held constant for differentiation (`stop_gradient`):
  `lax.while_loop` has no reverse-mode derivative, and the solvers'
  results are used as weights, not differentiated.

All give the same numbers up to rounding.

`eager_function(fn)` is the lighter twin for loops whose results must stay
bit for bit what they are when written out (the dual-cone solver of UPGrad
and DualProj, GradVac's visits): called eagerly (`executing_eagerly`), they
run as one cached compiled function per input signature, a `tf.function`
without XLA on TensorFlow (the kernels an eager call runs, without the
op-by-op dispatch) and `jax.jit` on JAX (an eager `lax` loop is traced and
compiled again at every call).

TensorFlow and JAX are imported here only on their own backend.
"""

import functools

import keras
from keras import ops


def solver_function(fn):
    """Wraps a solver on small tensors, see the module docstring.

    Args:
        fn: a function of tensors (and static Python values) built from
            `keras.ops` that XLA can compile, without autograph (no Python
            branch on a tensor's value).

    Returns:
        A callable with the signature of `fn`.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        return _jax_solver_function(fn)
    if backend != "tensorflow":
        return fn

    import tensorflow as tf

    plain = tf.function(fn, autograph=False)
    compiled = tf.function(fn, autograph=False, jit_compile=True)

    def call(*args):
        if tf.executing_eagerly():
            return plain(*args)
        return compiled(*args)

    call.__name__ = getattr(fn, "__name__", "solver")
    call.__doc__ = fn.__doc__
    return call


def executing_eagerly(*tensors):
    """Whether a computation on `tensors` runs eagerly: on TensorFlow,
    outside a `tf.function`; on JAX, when none of them is a tracer."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        leaves = jax.tree_util.tree_leaves(tensors)
        return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
    return True


def eager_function(fn, static_argnums=()):
    """The compiled twin of `fn` for eager calls, built at its first call:
    `tf.function(fn)` without XLA on TensorFlow (Python arguments retrace,
    pass tensors for values that change), `jax.jit(fn, static_argnums)` on
    JAX; `fn` itself elsewhere. See the module docstring."""

    @functools.cache
    def compiled():
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            return jax.jit(fn, static_argnums=static_argnums)
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.function(fn, autograph=False)
        return fn

    def call(*args):
        return compiled()(*args)

    call.__name__ = getattr(fn, "__name__", "eager_function")
    call.__doc__ = fn.__doc__
    return call


def float64_function(fn):
    """`fn` computed in float64 on every backend: on JAX as a
    `solver_function` (under `jax.jit` in an `enable_x64` scope, results
    back in the dtype of the first float input), elsewhere `fn` itself
    (TensorFlow has float64). For computations whose cut-offs are only
    meaningful in float64 (ConFIG's pseudo-inverse)."""
    if keras.backend.backend() == "jax":
        return _jax_solver_function(fn)
    return fn


def solver_dtype():
    """The solvers' float dtype outside `solver_function`: float64 where the
    backend has it.

    TensorFlow always has float64; JAX only with `jax_enable_x64` (without
    it, a float64 request is truncated to float32, with a warning). Inside
    a `solver_function` JAX computes in float64 either way.
    """
    if keras.backend.backend() == "jax":
        import jax

        return "float64" if jax.config.jax_enable_x64 else "float32"
    return "float64"


def _jax_solver_function(fn):
    """`fn` under `jax.jit` in float64, see the module docstring."""
    import jax

    jitted = {}

    def call(*args):
        static = tuple(
            i for i, arg in enumerate(args) if isinstance(arg, (str, int, float))
        )
        if static not in jitted:
            jitted[static] = jax.jit(fn, static_argnums=static)
        # The dtype the float inputs have outside (float32 for a float64
        # request without x64).
        outer = None
        for i, arg in enumerate(args):
            dtype = keras.backend.standardize_dtype(getattr(arg, "dtype", "int32"))
            if i not in static and "float" in dtype:
                outer = solver_dtype() if dtype == "float64" else dtype
                break
        with jax.enable_x64(True):
            inputs = []
            for i, arg in enumerate(args):
                if i not in static:
                    arg = ops.stop_gradient(ops.convert_to_tensor(arg))
                    if "float" in keras.backend.standardize_dtype(arg.dtype):
                        arg = ops.cast(arg, "float64")
                inputs.append(arg)
            outputs = jitted[static](*inputs)

            def back(x):
                x = ops.stop_gradient(x)
                if outer is not None and "float" in str(x.dtype):
                    x = ops.cast(x, outer)
                return x

            return jax.tree_util.tree_map(back, outputs)

    call.__name__ = getattr(fn, "__name__", "solver")
    call.__doc__ = fn.__doc__
    return call


def psd_solve(matrix, rhs):
    """Solves `matrix x = rhs` for a small symmetric positive definite matrix.

    A Cholesky factorisation written out column by column (the size is
    static), then two triangular solves. Unlike `ops.solve` and
    `ops.cholesky`, whose TensorFlow CPU kernels raise an error on a
    singular input, it never fails: a matrix that is not numerically
    positive definite gives non-finite entries, which the caller checks.

    Args:
        matrix: `(n, n)` symmetric tensor, n static.
        rhs: `(n, k)` tensor.

    Returns:
        The `(n, k)` solution.
    """
    matrix = ops.convert_to_tensor(matrix)
    n = matrix.shape[0]
    dtype = matrix.dtype
    rows = ops.arange(n)
    zero = ops.zeros([], dtype)
    columns = []
    for j in range(n):
        column = matrix[:, j]
        if columns:
            done = ops.stack(columns, axis=1)
            column = column - ops.matmul(done, done[j])
        pivot = ops.sqrt(column[j])
        column = ops.where(rows >= j, column / pivot, zero)
        columns.append(column)
    lower = ops.stack(columns, axis=1)
    half = ops.solve_triangular(lower, rhs, lower=True)
    return ops.solve_triangular(ops.transpose(lower), half, lower=False)


def cholesky_solve(matrix, rhs):
    """Solves `matrix x = rhs` for a symmetric positive definite matrix
    with its Cholesky factor L (L L^T x = rhs).

    `ops.cholesky` checks its result on TensorFlow (`check_numerics`) and
    raises where the factorisation breaks down (NaN), but the solvers test
    the result for finiteness themselves; so TensorFlow's own
    `tf.linalg.cholesky` / `cholesky_solve` run there, unchecked, as they
    always did. Elsewhere `ops.cholesky` (unchecked inside a traced
    function) and two triangular solves.

    Args:
        matrix: `(n, n)` symmetric positive definite tensor.
        rhs: `(n, k)` tensor.

    Returns:
        The `(n, k)` solution (non-finite where `matrix` is not
        numerically positive definite).
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.linalg.cholesky_solve(tf.linalg.cholesky(matrix), rhs)
    lower = ops.cholesky(matrix)
    half = ops.solve_triangular(lower, rhs, lower=True)
    return ops.solve_triangular(ops.transpose(lower), half, lower=False)
