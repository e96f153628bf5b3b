"""Tests of the helpers that run the gradient methods' small solvers.

The checks of the compiled programs' inputs (`experimental_get_compiler_ir`)
are TensorFlow's; on JAX tensors are `jax.jit` inputs by construction (see
the trace-count test).
"""

import numpy as np
import pytest
from backends import BACKEND, compiled
from keras import ops

from keras_mtl.weighting._solver_ops import psd_solve, solver_function


@pytest.mark.both_backends
def test_psd_solve_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 8):
        factor = rng.normal(size=(n, n + 2))
        matrix = factor @ factor.T + 1e-3 * np.eye(n)
        rhs = rng.normal(size=(n, 2))
        # (Through solver_function: in float64 on JAX without x64 too.)
        # The result has the input's dtype: float32 on JAX without x64.
        solution = ops.convert_to_numpy(solver_function(psd_solve)(matrix, rhs))
        rtol = 1e-8 if solution.dtype == np.float64 else 1e-6
        np.testing.assert_allclose(solution, np.linalg.solve(matrix, rhs), rtol=rtol)


@pytest.mark.both_backends
def test_psd_solve_singular_gives_non_finite_without_raising():
    # tf.linalg.solve raises here on CPU; psd_solve must not, in a graph
    # without XLA as well as with it.
    singular = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    rhs = np.ones([3, 1])
    for jit in (False, True):
        solve = compiled(solver_function(psd_solve), jit_compile=jit)
        assert not np.isfinite(ops.convert_to_numpy(solve(singular, rhs))).all()
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])
    solve = solver_function(psd_solve)
    solution = ops.convert_to_numpy(solve(indefinite, np.ones([2, 1])))
    assert not np.isfinite(solution).all()


def _fixed_point(x, steps):
    # A fixed-point loop of tiny ops, like the solvers.
    return ops.while_loop(
        lambda k, y: k < steps, lambda k, y: (k + 1, ops.sqrt(y + 1.0)), (0, x)
    )[1]


@pytest.mark.both_backends
def test_solver_function_same_result_eagerly_in_a_graph_and_under_xla():
    wrapped = solver_function(_fixed_point)
    x = np.array([0.1, 0.5, 2.0])
    eager = ops.convert_to_numpy(wrapped(x, 50))
    rtol = 1e-12 if eager.dtype == np.float64 else 1e-7
    np.testing.assert_allclose(eager, [(1 + 5**0.5) / 2] * 3, rtol=rtol)
    for jit in (False, True):
        in_step = compiled(lambda x: wrapped(x, 50), jit_compile=jit)
        np.testing.assert_allclose(ops.convert_to_numpy(in_step(x)), eager, rtol=1e-14)
    assert wrapped.__name__ == "_fixed_point"


@pytest.mark.both_backends
def test_solver_function_traces_once_per_shape_and_static_arguments():
    # Tensors are runtime inputs (a new value does not trace again), Python
    # values static (a new one does).
    traces = []

    def solver(x, steps):
        traces.append(steps)
        return _fixed_point(x, steps)

    wrapped = solver_function(solver)
    for value in (0.1, 0.7, 1.3):
        wrapped(np.full([3], value), 5)
    assert traces == [5]
    wrapped(np.ones([3]), 6)
    assert traces == [5, 6]


@pytest.mark.both_backends
def test_solver_function_computes_in_float64_and_returns_the_input_dtype():
    # JAX without jax_enable_x64 would truncate the float64 cast to float32
    # (where 1 + 1e-12 == 1) outside a solver_function.
    def solver(x):
        wide = ops.cast(x, "float64")
        return (wide + 1e-12) - wide, ops.cast(wide, "float64")

    for jit in (None, False, True):
        wrapped = solver_function(solver)
        if jit is not None:
            wrapped = compiled(wrapped, jit_compile=jit)
        gap, same = wrapped(np.ones([2], "float32"))
        np.testing.assert_allclose(ops.convert_to_numpy(gap), 1e-12, rtol=1e-3)
        assert ops.convert_to_numpy(gap).dtype == np.float32 or BACKEND == "tensorflow"
        np.testing.assert_array_equal(ops.convert_to_numpy(same), 1.0)


@pytest.mark.both_backends
@pytest.mark.skipif(BACKEND != "jax", reason="JAX's reverse mode")
def test_solver_function_is_constant_for_differentiation_on_jax():
    # lax.while_loop has no reverse-mode derivative: the wrapped solver's
    # inputs and outputs are held constant, so a loss that uses its result
    # can be differentiated (the solver contributes nothing).
    import jax

    wrapped = solver_function(_fixed_point)

    def loss(x):
        return ops.sum(wrapped(x, 20) * x)

    grad = jax.grad(loss)(np.array([0.1, 0.5, 2.0]))
    np.testing.assert_allclose(
        np.asarray(grad), ops.convert_to_numpy(wrapped(np.array([0.1, 0.5, 2.0]), 20))
    )


@pytest.mark.both_backends
def test_armijo_step_and_max_step_to_boundary():
    from keras_mtl.weighting._newton_ops import armijo_step, max_step_to_boundary

    def value(x):
        return float(ops.convert_to_numpy(x))

    x = ops.convert_to_tensor(np.array([1.0, 2.0]))
    # x_0 - 2 s > 0 for s < 0.5; the fraction 0.99 of it.
    np.testing.assert_allclose(
        value(max_step_to_boundary(x, np.array([-2.0, 1.0]))), 0.495, rtol=1e-7
    )
    assert value(max_step_to_boundary(x, np.array([2.0, 1.0]))) == 1.0

    def squares(points):
        return ops.sum(points * points, axis=1)

    one = ops.convert_to_tensor(np.array([1.0]))
    down = ops.convert_to_tensor(np.array([-1.0]))
    # f(1 - s) = (1 - s)^2 from f = 1, slope -2: s = 4 and 2 decrease too
    # little, s = 1 is the largest step with sufficient decrease.
    args = (squares, one, down, 1.0, -2.0, 4.0)
    assert value(armijo_step(*args)) == 1.0
    assert value(armijo_step(*args, full_step_ok=False)) == 1.0
    # A small Newton decrement: the largest step, the objective being finite.
    assert value(armijo_step(*args, full_step_ok=True)) == 4.0
    # At the minimum: no step decreases f.
    zero = ops.convert_to_tensor(np.array([0.0]))
    assert value(armijo_step(squares, zero, -down, 0.0, 0.0, 4.0)) == 0.0


def _solvers():
    import tensorflow as tf

    from keras_mtl.weighting import cagrad, imtl_g, mgda, nash_mtl

    def gramian(num):
        return tf.constant(np.eye(num) + 0.1, "float64")

    radius = tf.constant(0.3, "float64")
    return [
        ("mgda", mgda.min_norm_weights, lambda n: (gramian(n),)),
        ("cagrad", cagrad.cagrad_inner_weights, lambda n: (gramian(n), radius)),
        (
            "nash_mtl",
            nash_mtl.nash_mtl_alpha,
            lambda n: (gramian(n), tf.ones([n], "float64"), "ccp", 20),
        ),
        ("imtl", imtl_g.imtl_g_weights, lambda n: (gramian(n),)),
    ]


def test_compiled_solvers_take_their_tensors_as_runtime_inputs():
    # If an input fed an op that XLA needs as a compile-time constant (a
    # slice start, say), XLA would bake its value into the program and
    # compile again for every new Gramian (seconds per training step).
    import tensorflow as tf

    for name, fn, make_args in _solvers():
        # (CAGrad has a separate closed form for two tasks.)
        for num in (2, 3) if name == "cagrad" else (3,):
            args = make_args(num)
            xla = tf.function(fn, autograph=False, jit_compile=True)
            hlo = xla.experimental_get_compiler_ir(*args)(stage="hlo")
            entry = hlo[hlo.index("ENTRY") :]
            entry = entry[: entry.index("\n}")]
            tensors = sum(isinstance(a, tf.Tensor) for a in args)
            assert entry.count("parameter(") == tensors, (name, num)


def _present_solvers():
    import tensorflow as tf

    from keras_mtl.weighting import cagrad, imtl_g, mgda, nash_mtl

    def gramian(num):
        return tf.constant(np.eye(num) + 0.1, "float64")

    radius = tf.constant(0.3, "float64")
    return [
        ("mgda", mgda.present_min_norm_weights, lambda n, p: (gramian(n), p)),
        (
            "cagrad",
            cagrad.present_cagrad_inner_weights,
            lambda n, p: (gramian(n), radius, p),
        ),
        (
            "nash_mtl",
            nash_mtl.present_nash_mtl_alpha,
            lambda n, p: (gramian(n), tf.ones([n], "float64"), p, "ccp", 20),
        ),
        ("imtl", imtl_g.present_imtl_g_weights, lambda n, p: (gramian(n), p)),
    ]


def test_compiled_solvers_take_the_task_mask_as_a_runtime_input():
    # With missing tasks the mask changes from step to step: it must be a
    # runtime input too, not a constant compiled into the program.
    import tensorflow as tf

    for name, fn, make_args in _present_solvers():
        for num in (2, 4) if name == "cagrad" else (4,):
            present = tf.constant([True, False] + [True] * (num - 2))
            args = make_args(num, present)
            xla = tf.function(fn, autograph=False, jit_compile=True)
            hlo = xla.experimental_get_compiler_ir(*args)(stage="hlo")
            entry = hlo[hlo.index("ENTRY") :]
            entry = entry[: entry.index("\n}")]
            tensors = sum(isinstance(a, tf.Tensor) for a in args)
            assert entry.count("parameter(") == tensors, (name, num)


@pytest.mark.both_backends
def test_present_block_and_first_present():
    from keras_mtl.weighting._present_task_ops import first_present, present_block

    matrix = np.arange(16.0).reshape(4, 4) + 1.0
    present = np.array([True, False, True, False])
    block = ops.convert_to_numpy(present_block(matrix, present))
    expected = np.zeros((4, 4))
    expected[np.ix_([0, 2], [0, 2])] = matrix[np.ix_([0, 2], [0, 2])]
    np.testing.assert_array_equal(block, expected)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(present_block(matrix, present, diagonal=1.0)),
        expected + np.diag([0.0, 1.0, 0.0, 1.0]),
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(first_present(present)), [1, 0, 0, 0]
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(first_present(np.array([False, False, True, True]))),
        [0, 0, 1, 0],
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(first_present(np.zeros([3], bool))), 0
    )
