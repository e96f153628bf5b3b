"""Tests of the helpers that run the gradient methods' small solvers."""

import numpy as np
import tensorflow as tf

from keras_mtl.weighting._solver_ops import psd_solve, solver_function


def test_psd_solve_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 8):
        factor = rng.normal(size=(n, n + 2))
        matrix = factor @ factor.T + 1e-3 * np.eye(n)
        rhs = rng.normal(size=(n, 2))
        solution = psd_solve(tf.constant(matrix), tf.constant(rhs)).numpy()
        np.testing.assert_allclose(solution, np.linalg.solve(matrix, rhs), rtol=1e-8)


def test_psd_solve_singular_gives_non_finite_without_raising():
    # tf.linalg.solve raises here on CPU; psd_solve must not, in a graph
    # without XLA as well as with it.
    singular = tf.constant(
        [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], "float64"
    )
    rhs = tf.ones([3, 1], "float64")
    for jit in (False, True):
        solve = tf.function(psd_solve, jit_compile=jit)
        assert not np.isfinite(solve(singular, rhs).numpy()).all()
    indefinite = tf.constant([[1.0, 2.0], [2.0, 1.0]], "float64")
    assert not np.isfinite(psd_solve(indefinite, tf.ones([2, 1], "float64"))).all()


def test_solver_function_same_result_eagerly_in_a_graph_and_under_xla():
    def iterate(x, steps):
        # A fixed-point loop of tiny ops, like the solvers.
        return tf.while_loop(
            lambda k, y: k < steps, lambda k, y: (k + 1, tf.cos(y)), (0, x)
        )[1]

    wrapped = solver_function(iterate)
    x = tf.constant([0.1, 0.5, 2.0], "float64")
    eager = wrapped(x, 50).numpy()
    in_graph = tf.function(lambda x: wrapped(x, 50))(x).numpy()
    in_xla = tf.function(lambda x: wrapped(x, 50), jit_compile=True)(x).numpy()
    np.testing.assert_allclose(in_graph, eager, rtol=1e-14)
    np.testing.assert_allclose(in_xla, eager, rtol=1e-14)
    assert wrapped.__name__ == "iterate"


def _solvers():
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
    for name, fn, make_args in _solvers():
        # (CAGrad has a separate closed form for two tasks.)
        for num in (2, 3) if name == "cagrad" else (3,):
            args = make_args(num)
            compiled = tf.function(fn, autograph=False, jit_compile=True)
            hlo = compiled.experimental_get_compiler_ir(*args)(stage="hlo")
            entry = hlo[hlo.index("ENTRY") :]
            entry = entry[: entry.index("\n}")]
            tensors = sum(isinstance(a, tf.Tensor) for a in args)
            assert entry.count("parameter(") == tensors, (name, num)


def _present_solvers():
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
    for name, fn, make_args in _present_solvers():
        for num in (2, 4) if name == "cagrad" else (4,):
            present = tf.constant([True, False] + [True] * (num - 2))
            args = make_args(num, present)
            compiled = tf.function(fn, autograph=False, jit_compile=True)
            hlo = compiled.experimental_get_compiler_ir(*args)(stage="hlo")
            entry = hlo[hlo.index("ENTRY") :]
            entry = entry[: entry.index("\n}")]
            tensors = sum(isinstance(a, tf.Tensor) for a in args)
            assert entry.count("parameter(") == tensors, (name, num)


def test_present_block_and_first_present():
    from keras_mtl.weighting._present_task_ops import first_present, present_block

    matrix = tf.constant(np.arange(16.0).reshape(4, 4) + 1.0)
    present = tf.constant([True, False, True, False])
    block = present_block(matrix, present).numpy()
    expected = np.zeros((4, 4))
    expected[np.ix_([0, 2], [0, 2])] = matrix.numpy()[np.ix_([0, 2], [0, 2])]
    np.testing.assert_array_equal(block, expected)
    np.testing.assert_array_equal(
        present_block(matrix, present, diagonal=1.0).numpy(),
        expected + np.diag([0.0, 1.0, 0.0, 1.0]),
    )
    np.testing.assert_array_equal(first_present(present).numpy(), [1, 0, 0, 0])
    np.testing.assert_array_equal(
        first_present(tf.constant([False, False, True, True])).numpy(), [0, 0, 1, 0]
    )
    np.testing.assert_array_equal(first_present(tf.zeros([3], tf.bool)).numpy(), 0)
