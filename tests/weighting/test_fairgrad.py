"""Tests of FairGrad."""

import contextlib
import functools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
from backends import compiled

import keras_mtl
from keras_mtl.weighting.fairgrad import FairGrad

# Strategy-level tests run on both backends; those through the shared
# checks of `aggregator_properties` / `missing_task_checks` (which use
# TensorFlow) are TensorFlow-only until those modules are backend-neutral.
both_backends = pytest.mark.both_backends

J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)
J_CONFLICT = np.array(
    [[1.0, 0.0, 0.5, 0.2], [-0.8, 1.0, 0.0, 0.3], [0.2, -0.9, 0.3, -0.4]],
    np.float32,
)


def _run(strategy, grads):
    update, weights = strategy(np.asarray(grads, np.float32))
    return np.asarray(update, np.float64), np.asarray(weights, np.float64)


def _residual(grads, weights, alpha):
    """max_t |(A w)_t - w_t^(-1/alpha)| / w_t^(-1/alpha), A = G G^T."""
    grads = np.asarray(grads, np.float64)
    target = weights ** (-1.0 / alpha)
    return np.max(np.abs(grads @ (grads.T @ weights) - target) / target)


@both_backends
def test_registry_and_config_round_trip():
    for name in ("fairgrad", "FairGrad", "fair_grad"):
        assert isinstance(keras_mtl.weighting.get(name), FairGrad)
    assert FairGrad.requires == "gramian" and not FairGrad.stateful
    assert FairGrad().alpha == 1.0
    strategy = FairGrad(alpha=2.5)
    config = strategy.get_config()
    assert config["alpha"] == 2.5
    clone = FairGrad.from_config(config)
    assert clone.get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert isinstance(restored, FairGrad) and restored.alpha == 2.5


@both_backends
def test_invalid_arguments():
    for alpha in (-0.5, float("nan"), float("inf"), "fair", None):
        with pytest.raises(ValueError, match="alpha"):
            FairGrad(alpha=alpha)
    with pytest.raises(ValueError, match="rep_grad"):
        FairGrad(rep_grad=True)


@both_backends
def test_reference_values():
    # Weights of LibMTL's FairGrad.py (scipy least_squares on G G^T, start
    # 1/T, bounds [0, inf)), computed on these inputs; its residuals were
    # below 1e-9, so both solve the same equation.
    expected = {
        (0, 0.5): [0.74282825, 0.52539261],
        (0, 1.0): [0.59146115, 0.40707148],
        (0, 2.0): [0.47136292, 0.31945423],
        (1, 1.0): [1.5563539847, 2.9777594819, 3.1050843695],
        (1, 2.0): [1.9934939187, 4.1053777081, 4.3504893908],
    }
    inputs = (J_BASE, J_CONFLICT)
    for (which, alpha), weights_ref in expected.items():
        update, weights = _run(FairGrad(alpha=alpha), inputs[which])
        np.testing.assert_allclose(weights, weights_ref, rtol=2e-6)
        np.testing.assert_allclose(
            update, np.asarray(weights_ref) @ inputs[which], rtol=1e-5, atol=1e-6
        )


@both_backends
def test_fixed_point_condition_holds():
    rng = np.random.default_rng(0)
    for alpha in (0.25, 1.0, 5.0):
        for num, width in [(1, 3), (2, 5), (3, 3), (5, 8)]:
            grads = rng.standard_normal((num, width)).astype(np.float32)
            grads *= (10.0 ** rng.uniform(-1, 1, (num, 1))).astype(np.float32)
            _, weights = _run(FairGrad(alpha=alpha), grads)
            assert np.all(weights > 0)
            # float32 weights: w^(-1/alpha) amplifies their rounding.
            assert _residual(grads, weights, alpha) < 1e-4, (alpha, num)


@both_backends
def test_closed_forms():
    for alpha in (0.5, 1.0, 3.0):
        power = alpha / (1.0 + alpha)
        # Orthogonal rows: w_t = ||g_t||^(-2 alpha / (1 + alpha)).
        grads = np.array(
            [[2.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 7.0]], np.float32
        )
        _, weights = _run(FairGrad(alpha=alpha), grads)
        np.testing.assert_allclose(
            weights, [4.0, 0.25, 49.0] ** np.float64(-power), rtol=1e-6
        )
        # Identical rows: w = (T ||g||^2)^(-alpha / (1 + alpha)), a multiple of
        # the mean.
        row = np.array([1.0, -2.0, 2.0], np.float32)
        update, weights = _run(FairGrad(alpha=alpha), np.stack([row] * 4))
        np.testing.assert_allclose(weights, np.full(4, 36.0**-power), rtol=1e-6)
        np.testing.assert_allclose(update, 4 * 36.0**-power * row, rtol=1e-5)
    # alpha = 0 is linear scalarisation (TorchJD's FairGrad: weights 1/T).
    update, weights = _run(FairGrad(alpha=0.0), J_CONFLICT)
    np.testing.assert_allclose(weights, np.full(3, 1 / 3), rtol=1e-7)
    np.testing.assert_allclose(update, J_CONFLICT.mean(0), rtol=1e-6)


@both_backends
def test_alpha_one_is_nash_bargaining_and_scale_invariant():
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((3, 6)).astype(np.float32)
    update, weights = _run(FairGrad(alpha=1.0), grads)
    # Nash-MTL's condition: w_t (g_t . d) = 1.
    np.testing.assert_allclose(weights * (grads @ update), np.ones(3), rtol=1e-5)
    # Scaling one task's gradient divides its weight, the update is unchanged.
    factors = np.array([[100.0], [1.0], [0.01]], np.float32)
    update_s, weights_s = _run(FairGrad(alpha=1.0), grads * factors)
    np.testing.assert_allclose(update_s, update, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights_s, weights / factors[:, 0], rtol=1e-4)


@both_backends
def test_global_scaling_law():
    # G -> c G scales w by c^(-2a/(1+a)) and the update by c^((1-a)/(1+a)).
    for alpha in (0.5, 2.0):
        update, weights = _run(FairGrad(alpha=alpha), J_CONFLICT)
        for factor in (1e-3, 1e4):
            update_s, weights_s = _run(
                FairGrad(alpha=alpha), J_CONFLICT * np.float32(factor)
            )
            w_scale = factor ** (-2 * alpha / (1 + alpha))
            u_scale = factor ** ((1 - alpha) / (1 + alpha))
            np.testing.assert_allclose(weights_s, w_scale * weights, rtol=1e-5)
            np.testing.assert_allclose(
                update_s, u_scale * update, rtol=1e-5, atol=1e-6 * u_scale
            )


@both_backends
def test_large_alpha_tends_to_max_min_fairness():
    # For J_BASE the MGDA weights (0.6, 0.4) are interior and its direction
    # is (0, 1, 1): equal products g_t . d. FairGrad approaches it as alpha
    # grows.
    target = np.array([0.0, 1.0, 1.0]) / np.sqrt(2.0)
    errors = []
    for alpha in (1.0, 10.0, 1000.0):
        update, _ = _run(FairGrad(alpha=alpha), J_BASE)
        errors.append(np.linalg.norm(update / np.linalg.norm(update) - target))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3
    # (FairGrad is stateless: the last update is that of alpha = 1000.)
    products = J_BASE @ update
    np.testing.assert_allclose(products[0], products[1], rtol=2e-3)


@both_backends
def test_permutation_equivariance():
    rng = np.random.default_rng(5)
    grads = rng.standard_normal((4, 5)).astype(np.float32)
    perm = np.array([2, 3, 1, 0])
    update, weights = _run(FairGrad(), grads)
    update_p, weights_p = _run(FairGrad(), grads[perm])
    np.testing.assert_allclose(update_p, update, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights_p, weights[perm], rtol=1e-5)


@both_backends
def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(3)
    grads = rng.standard_normal((3, 4)).astype(np.float32)
    cases = {
        "zero": np.zeros((3, 4), np.float32),
        "zero_row": np.concatenate([grads[:2], np.zeros((1, 4), np.float32)]),
        "opposite": np.stack([grads[0], -grads[0], grads[1]]),
        "rank_deficient": (
            rng.standard_normal((4, 2)) @ rng.standard_normal((2, 5))
        ).astype(np.float32),
        "tiny": grads * np.float32(1e-10),
        "huge": grads * np.float32(1e10),
        "mixed": grads * np.array([[1e-10], [1.0], [1e10]], np.float32),
        "one_task": grads[:1],
    }
    # FairGrad is stateless: the alpha = 1 results are reused below.
    results = {}
    for alpha, names in (
        (1.0, tuple(cases)),
        (0.5, ("zero", "zero_row", "opposite", "mixed")),
        (2.0, ("zero", "zero_row", "opposite", "mixed")),
    ):
        for name in names:
            matrix = cases[name]
            update, weights = results[alpha, name] = _run(FairGrad(alpha=alpha), matrix)
            assert np.all(np.isfinite(update)), (alpha, name)
            assert np.all(np.isfinite(weights)) and np.all(weights > 0), (alpha, name)
    assert np.all(results[1.0, "zero"][0] == 0)
    # Scale-free at alpha = 1: tiny and huge gradients give the same update.
    base, _ = _run(FairGrad(), grads)
    for name in ("tiny", "huge"):
        np.testing.assert_allclose(results[1.0, name][0], base, rtol=1e-5)
    # A zero gradient does not disturb the other tasks' solution.
    update, weights = results[1.0, "zero_row"]
    np.testing.assert_allclose(update, _run(FairGrad(), grads[:2])[0], rtol=1e-5)
    # Gradient norms spanning 20 orders of magnitude are still solved.
    update, weights = results[1.0, "mixed"]
    assert _residual(cases["mixed"], weights, 1.0) < 1e-4
    # One task: w = 1 / ||g|| and the update is the unit gradient.
    update, weights = results[1.0, "one_task"]
    np.testing.assert_allclose(update, grads[0] / np.linalg.norm(grads[0]), rtol=1e-5)


def test_eager_matches_xla():
    rng = np.random.default_rng(7)
    cases = [
        rng.standard_normal((3, 5)),
        rng.standard_normal((3, 5)) * 1e-6,
        np.zeros((3, 5)),
        rng.standard_normal((3, 1)) @ rng.standard_normal((1, 5)),
    ]
    checks.assert_xla_matches_eager(
        functools.partial(FairGrad, alpha=2.0),
        [(np.asarray(grads, np.float32), None) for grads in cases],
        rtol=1e-5,
        atol=(checks.scaled_atol(1e-6), 0.0),
    )


def test_state_round_trip_reset_and_aggregate():
    strategy = FairGrad(alpha=0.5)
    strategy.build(J_CONFLICT.shape)
    checks.assert_state_round_trip(strategy, [J_CONFLICT])
    first = _run(strategy, J_CONFLICT)
    strategy.reset_state()
    np.testing.assert_array_equal(_run(strategy, J_CONFLICT)[0], first[0])
    update = FairGrad().aggregate(J_BASE)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update),
        np.array([0.59146115, 0.40707148]) @ J_BASE,
        rtol=1e-5,
    )


# --- Missing tasks --------------------------------------------------------


def _conflicting(rng, num=5, dim=6):
    return (rng.standard_normal((num, dim)) * rng.uniform(0.2, 4.0, (num, 1))).astype(
        "float32"
    )


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_missing_tasks_all_present_mask_equals_unmasked(alpha):
    grads = _conflicting(np.random.default_rng(30))
    make = functools.partial(FairGrad, alpha=alpha)
    checks.assert_all_ones_mask_is_no_mask(make, [grads])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 3.0])
def test_missing_tasks_equal_fairgrad_on_present_rows(alpha):
    rng = np.random.default_rng(31)
    strategy = FairGrad(alpha=alpha)
    for absent in [(1,), (0, 3), (0, 1, 2, 4)]:
        present = [t for t in range(5) if t not in absent]
        grads, mask = checks.with_absent(_conflicting(rng), absent=absent)
        [((_, weights), _)] = checks.assert_absent_task_is_dropped(
            strategy, FairGrad(alpha=alpha), mask, [grads], atol=(1e-7, 0.0)
        )
        if alpha > 0:
            # The fairness equation holds on the present rows.
            w = weights.astype(np.float64)[present]
            assert _residual(grads[present], w, alpha) < 1e-5


@both_backends
def test_missing_tasks_compute_weights_drops_nonzero_rows():
    grads = _conflicting(np.random.default_rng(32), 4, 6).astype("float64")
    mask = np.array([1.0, 0.0, 1.0, 1.0], "float32")
    weights = np.asarray(FairGrad().compute_weights(grads @ grads.T, task_mask=mask))
    present = [0, 2, 3]
    ref = FairGrad().compute_weights(grads[present] @ grads[present].T)
    # (JAX without x64 returns the float64 solution in float32.)
    rtol = 1e-9 if weights.dtype == np.float64 else 1e-6
    np.testing.assert_allclose(weights[present], np.asarray(ref), rtol=rtol)
    assert weights[1] == 0.0
    # Left unmasked, the zero row has no solution and hits the weight cap.
    grads[1] = 0.0
    capped = np.asarray(FairGrad().compute_weights(grads @ grads.T))
    assert capped[1] > 1e3 * capped[present].max()


def test_missing_tasks_finite_and_stateless():
    rng = np.random.default_rng(33)
    g = _conflicting(rng, 3, 4)
    strategy = FairGrad()
    checks.assert_masked_outputs_finite(
        strategy,
        [
            (g * np.array([[1e10], [1.0], [1e-10]], "float32"), [1.0, 0.0, 1.0]),
            (np.zeros((3, 4), "float32"), [0.0, 0.0, 0.0]),
            (np.stack([g[0], -g[0], g[1]]), [1.0, 1.0, 0.0]),
        ],
    )
    # One present task, alpha = 1: w = 1 / ||g||, the update is g / ||g||.
    update, weights = strategy(g * [[0.0], [1.0], [0.0]], task_mask=[0.0, 1.0, 0.0])
    norm = np.linalg.norm(g[1].astype(np.float64))
    np.testing.assert_allclose(weights.numpy(), [0.0, 1.0 / norm, 0.0], rtol=1e-6)
    np.testing.assert_allclose(update.numpy(), g[1] / norm, rtol=1e-5)
    assert strategy.per_task_state() == []


def test_missing_tasks_eager_matches_xla():
    rng = np.random.default_rng(34)
    cases = [
        checks.with_absent(_conflicting(rng, 4, 6), absent=absent)
        for absent in [(0,), (2,), (1, 3)]
    ]
    checks.assert_xla_matches_eager(
        functools.partial(FairGrad, alpha=2.0), cases, rtol=1e-5, atol=(1e-6, 1e-7)
    )


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


class _FairGradOpForOp:
    """FairGrad's eager computation, op for op, in a TensorFlow graph.

    Eager, the Newton solver dispatches every op of every iteration from
    Python (its Cholesky is unrolled column by column: at T = 40 a call
    takes seconds); the degenerate family makes about 100 such calls. Here
    each input shape traces one `tf.function` (of a FairGrad built for it:
    FairGrad is stateless, so a fresh one per call computes the same) and
    runs it inside `_no_graph_rewrites`, where Grappler, which rewrites the
    graph (it changed the bits of 36 of the family's 110 results), is off:
    the graph then runs the kernels eager runs, in the same order, and
    gives the same bits (checked on every case of the family when this was
    written, and on a few in `test_degenerate_inputs`).
    """

    def __init__(self):
        self._functions = {}

    def __call__(self, grads, losses=None, training=True):
        import tensorflow as tf

        key = (tuple(grads.shape), losses is None, training)
        if key not in self._functions:
            strategy = FairGrad()

            def call(*args):
                return strategy(*args, training=training)

            self._functions[key] = tf.function(call, autograph=False)
        args = (grads,) if losses is None else (grads, losses)
        return self._functions[key](*args)


@contextlib.contextmanager
def _no_graph_rewrites():
    import tensorflow as tf

    option = "disable_meta_optimizer"
    previous = tf.config.optimizer.get_experimental_options().get(option, False)
    tf.config.optimizer.set_experimental_options({option: True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({option: previous})


# Every shape in one test (every failing case reported), through the same
# ops as eager FairGrad (see `_FairGradOpForOp`).
def test_degenerate_inputs():
    cases = degenerate_inputs.degenerate_cases()
    op_for_op = _FairGradOpForOp()
    with _no_graph_rewrites():
        # The premise: the graph's results are eager FairGrad's, bit for bit.
        for kind, shape in (
            ("mixed_scales", (2, 7)),
            ("opposed", (3, 50)),
            ("rank_deficient", (20, 11)),
        ):
            matrix = degenerate_inputs.make_case(kind, *shape).matrix
            eager = degenerate_checks.aggregate(FairGrad, matrix)
            in_graph = degenerate_checks.aggregate(lambda: op_for_op, matrix)
            for a, b in zip(eager, in_graph):
                assert a.tobytes() == b.tobytes(), (kind, shape, a, b)
        degenerate_checks.check_cases(
            lambda: op_for_op, cases, lambda case: {"rtol": 1e-4}
        )


def _assert_compiled_matches_eager(make, cases, rtol, atol):
    """Each `(grads, mask)` case (mask None: no mask): `make()` inside a
    compiled step (XLA) gives its eager `(update, weights)`, finite."""
    strategy = make()

    def plain(grads):
        return strategy(grads)

    def masked(grads, mask):
        return strategy(grads, task_mask=mask)

    plain = compiled(plain, layers=[strategy])
    masked = compiled(masked, layers=[strategy])
    for grads, mask in cases:
        grads = np.asarray(grads, np.float32)
        if mask is None:
            expected, got = strategy(grads), plain(grads)
        else:
            expected, got = strategy(grads, task_mask=mask), masked(grads, mask)
        for e, g in zip(expected, got):
            assert np.isfinite(np.asarray(g)).all()
            np.testing.assert_allclose(
                np.asarray(g), np.asarray(e), rtol=rtol, atol=atol
            )


@both_backends
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_compiled_step_equals_eager(alpha):
    rng = np.random.default_rng(7)
    cases = [
        (rng.standard_normal((3, 5)), None),
        (rng.standard_normal((3, 5)) * 1e-6, None),
        (np.zeros((3, 5)), None),
        (rng.standard_normal((3, 1)) @ rng.standard_normal((1, 5)), None),
    ]
    cases += [
        checks.with_absent(_conflicting(rng, 3, 5), absent=absent)
        for absent in [(0,), (2,), (0, 1)]
    ]
    make = functools.partial(FairGrad, alpha=alpha)
    _assert_compiled_matches_eager(make, cases, rtol=1e-5, atol=1e-6)


# The same degenerate inputs on both backends, inside a compiled step, with
# and without absent tasks: finite positive weights (0 for absent tasks).
# Each shape compiles once; every failing case is reported.
@both_backends
def test_degenerate_inputs_finite_when_compiled():
    def check(case, mask, plain, masked):
        (_, weights), (_, masked_weights) = plain, masked
        assert (weights > 0).all(), case.id
        assert (masked_weights[mask > 0] > 0).all(), case.id
        assert (masked_weights[mask == 0] == 0).all(), case.id

    degenerate_checks.check_compiled_cases(FairGrad, check)
