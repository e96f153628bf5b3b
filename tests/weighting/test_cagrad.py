"""Tests of CAGrad."""

import aggregator_properties as degenerate_checks
import degenerate_inputs
import numpy as np
import pytest
from backends import BACKEND, compiled, graph
from keras import ops

import keras_mtl.weighting as weighting
from keras_mtl.weighting._solver_ops import solver_function
from keras_mtl.weighting.cagrad import (
    CAGrad,
    cagrad_inner_weights,
    present_cagrad_inner_weights,
)

pytestmark = pytest.mark.both_backends

_compiled_inner = solver_function(cagrad_inner_weights)
_compiled_present_inner = solver_function(present_cagrad_inner_weights)


def _float64(fn, *args):
    """`fn(*args)` as float64 numpy values on every backend: on JAX without
    x64 the solver computes in float64 but returns the input's float dtype,
    float32; in an `enable_x64` scope it returns float64."""
    args = [np.asarray(a) for a in args]
    if BACKEND == "jax":
        import jax

        with jax.enable_x64(True):
            return np.asarray(fn(*args))
    return ops.convert_to_numpy(fn(*args))


def _inner(gramian, radius):
    """The inner solver on float64 inputs, as it runs in the strategy."""
    return _float64(_compiled_inner, gramian, np.float64(radius))


def _present_inner(gramian, radius, present):
    return _float64(_compiled_present_inner, gramian, np.float64(radius), present)


def _np(x):
    return ops.convert_to_numpy(x)


def _objective(w, gramian, radius):
    """CAGrad's inner objective as in the reference (LibMTL CAGrad.py)."""
    w = np.atleast_2d(w)
    quad = np.einsum("ni,ij,nj->n", w, gramian, w)
    return w @ gramian.mean(axis=1) + radius * np.sqrt(quad + 1e-8)


def _radius(gramian, c):
    return c * np.sqrt(gramian.mean() + 1e-8) + 1e-8


def _reference_update(grads, w, c, rescale):
    """The reference's update for given inner weights w (LibMTL CAGrad.py,
    commit e56caa7)."""
    grads = np.asarray(grads, np.float64)
    gramian = grads @ grads.T
    radius = _radius(gramian, c)
    gw = w @ grads
    d = grads.mean(0) + radius / (np.linalg.norm(gw) + 1e-8) * gw
    return d / {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]


def _simplex_grid(num, steps):
    """All points of the simplex with coordinates in multiples of 1/steps."""
    if num == 2:
        t = np.linspace(0.0, 1.0, steps + 1)
        return np.stack([t, 1 - t], axis=1)
    i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    i, j = i[keep], j[keep]
    return np.stack([i, j, steps - i - j], axis=1) / steps


def _random_grads(rng, num, dim, common=0.0):
    grads = rng.normal(size=(num, dim)) * rng.uniform(0.3, 3.0, size=(num, 1))
    return (grads + common * rng.normal(size=(1, dim))).astype("float32")


def test_registry_and_config_round_trip():
    strategy = weighting.get("cagrad")
    assert isinstance(strategy, CAGrad)
    assert (strategy.c, strategy.rescale) == (0.5, 1)
    original = CAGrad(c=0.4, rescale=2, name="ca")
    rebuilt = CAGrad.from_config(original.get_config())
    assert rebuilt.get_config() == original.get_config()
    assert CAGrad.requires == "gramian" and not CAGrad.supports_rep_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [({"c": -0.1}, "`c`"), ({"c": float("nan")}, "`c`"), ({"rescale": 3}, "rescale")],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CAGrad(**kwargs)


def test_doc_example_orthogonal_gradients():
    # Symmetric case: w* = (1/2, 1/2), g_w = g_0, d = (1 + c) g_0.
    grads = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    for c, rescale, factor in ((0.5, 1, 1.5 / 1.25), (0.5, 0, 1.5), (0.4, 2, 1.0)):
        update = CAGrad(c=c, rescale=rescale).aggregate(grads)
        np.testing.assert_allclose(_np(update), [0.5 * factor] * 2, rtol=1e-5)


def test_c_zero_gives_the_mean_gradient():
    rng = np.random.default_rng(0)
    grads = _random_grads(rng, 4, 6)
    for rescale in (0, 1, 2):
        update, weights = CAGrad(c=0.0, rescale=rescale)(grads)
        np.testing.assert_allclose(_np(update), grads.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(weights), 0.25, rtol=1e-5)


def test_rescale_factors():
    rng = np.random.default_rng(1)
    grads = _random_grads(rng, 3, 5, common=1.0)
    raw = _np(CAGrad(c=0.6, rescale=0).aggregate(grads))
    np.testing.assert_allclose(
        _np(CAGrad(c=0.6, rescale=1).aggregate(grads)), raw / 1.36, rtol=1e-5
    )
    np.testing.assert_allclose(
        _np(CAGrad(c=0.6, rescale=2).aggregate(grads)), raw / 1.6, rtol=1e-5
    )


@pytest.mark.parametrize("num", [2, 3])
def test_inner_weights_beat_a_dense_grid(num):
    # An independent solution of the inner problem: a dense grid of the
    # simplex, refined around its best point.
    rng = np.random.default_rng(10 + num)
    for trial in range(4):
        grads = _random_grads(rng, num, 5, common=1.5 if trial % 2 else 0.0)
        gramian = grads.astype("float64") @ grads.astype("float64").T
        radius = _radius(gramian, 0.5)
        w = _inner(gramian, radius)
        assert (w >= 0).all()
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-12)
        grid = _simplex_grid(num, 2000 if num == 2 else 300)
        values = _objective(grid, gramian, radius)
        best = grid[np.argmin(values)]
        fine = np.clip(best + (_simplex_grid(num, 400) - 1.0 / num) * 0.01, 0, None)
        fine = fine / fine.sum(axis=1, keepdims=True)
        grid_best = min(values.min(), _objective(fine, gramian, radius).min())
        ours = _objective(w, gramian, radius)[0]
        assert ours <= grid_best + 1e-9 * abs(grid_best)
        np.testing.assert_allclose(w, best, atol=2e-2)


def test_update_matches_reference_formula():
    rng = np.random.default_rng(2)
    for num in (2, 3, 5):
        grads = _random_grads(rng, num, 7, common=1.0)
        gramian = grads.astype("float64") @ grads.astype("float64").T
        w = _inner(gramian, _radius(gramian, 0.5))
        update, weights = CAGrad()(grads)
        expected = _reference_update(grads, w, 0.5, 1)
        np.testing.assert_allclose(_np(update), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(weights) @ grads, expected, rtol=1e-5, atol=1e-6)


def test_ball_constraint_and_worst_case_improvement():
    rng = np.random.default_rng(3)
    for num in (2, 3, 4, 6):
        for c in (0.2, 0.5, 0.9):
            grads = _random_grads(rng, num, 8, common=1.0).astype("float64")
            d = _np(CAGrad(c=c, rescale=0).aggregate(grads.astype("float32")))
            g0 = grads.mean(0)
            # ||d - g0|| <= c ||g0|| (equality when w* is found).
            assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-4) + 1e-6
            # g0 is feasible: the worst task improvement is at least g0's.
            assert (grads @ d).min() >= (grads @ g0).min() - 1e-4 * np.abs(
                grads @ g0
            ).max()


def test_identical_rows_give_a_multiple_of_the_mean():
    row = np.array([0.5, -1.0, 2.0], "float32")
    # The inner objective is constant on the simplex: any w* is optimal and
    # g_w = g_0 = row, so d = (1 + c) row / (1 + c^2).
    update, weights = CAGrad()(np.tile(row, (3, 1)))
    np.testing.assert_allclose(_np(update), row * (1 + 0.5) / 1.25, rtol=1e-5)
    np.testing.assert_allclose(_np(weights).sum(), 1.5 / 1.25, rtol=1e-5)


def test_scale_equivariance_for_moderate_scales():
    rng = np.random.default_rng(4)
    grads = _random_grads(rng, 3, 6, common=1.0)
    base = _np(CAGrad().aggregate(grads))
    for scale in (10.0, 1e3):
        scaled = _np(CAGrad().aggregate(grads * np.float32(scale)))
        np.testing.assert_allclose(scaled / scale, base, rtol=1e-4, atol=1e-6)


def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(5)
    g = _random_grads(rng, 4, 6)
    cases = [
        np.zeros((3, 5), "float32"),
        np.stack([g[0], g[1], g[0] + g[1]]),
        np.stack([g[0], -g[0]]),
        g * 1e-10,
        g * 1e10,
        g * np.array([[1e-10], [1.0], [1e10], [1.0]], "float32"),
        g[:1],
    ]
    for grads in cases:
        update, weights = CAGrad()(grads)
        assert np.isfinite(_np(update)).all() and np.isfinite(_np(weights)).all()
    # Zero gradients give a zero update; one task gives its gradient.
    np.testing.assert_array_equal(_np(CAGrad().aggregate(np.zeros((2, 3)))), 0.0)
    np.testing.assert_allclose(
        _np(CAGrad(rescale=0).aggregate(g[:1])), g[0] * 1.5, rtol=1e-5
    )


def test_eager_equals_xla():
    rng = np.random.default_rng(6)
    eager, xla = CAGrad(c=0.4), CAGrad(c=0.4)
    xla.build((4, 7))
    step = compiled(lambda g: xla(g), layers=[xla])
    for _ in range(2):
        grads = _random_grads(rng, 4, 7, common=1.0)
        u1, w1 = eager(grads)
        u2, w2 = step(grads)
        np.testing.assert_allclose(_np(u2), _np(u1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(w2), _np(w1), rtol=1e-5, atol=1e-6)


def _exact_inner(gramian, radius):
    """An independent exact minimiser of the inner problem: enumerate the
    supports S, solve the stationarity conditions on each in closed form
    (m_S + radius A_SS w_S / s = nu 1, sum w = 1, s = sqrt(w.A.w + 1e-8),
    a quadratic equation in nu), keep the feasible points, take the best.
    Exact whenever the optimum's support has an invertible A_SS."""
    num = len(gramian)
    mean = gramian.mean(axis=1)
    candidates = list(np.eye(num))
    for mask in range(1, 2**num):
        support = [t for t in range(num) if mask >> t & 1]
        if len(support) < 2:
            continue
        sub = gramian[np.ix_(support, support)]
        if np.linalg.cond(sub) > 1e12:
            continue
        u = np.linalg.solve(sub, np.ones(len(support)))
        v = np.linalg.solve(sub, mean[support])
        a, b, e = u.sum(), v.sum(), mean[support] @ v
        # radius^2 - (a nu^2 - 2 b nu + e) = 1e-8 (a nu - b)^2.
        coefs = [-a - 1e-8 * a * a, 2 * b + 2e-8 * a * b, radius**2 - e - 1e-8 * b * b]
        for nu in np.roots(coefs):
            if abs(nu.imag) > 0 or a * nu.real - b <= 0:
                continue
            w = np.zeros(num)
            w[support] = (nu.real * u - v) / (a * nu.real - b)
            if (w >= -1e-12).all():
                candidates.append(np.maximum(w, 0) / np.maximum(w, 0).sum())
    candidates = np.array(candidates)
    return candidates[np.argmin(_objective(candidates, gramian, radius))]


def _gradient_scale(gramian, radius):
    return np.abs(gramian.mean(1)).max() + radius * np.sqrt(np.diag(gramian).max())


def _hard_gramians(rng, num):
    """Random Gramians, with ill-conditioned and badly scaled ones."""
    cases = []
    for trial in range(6):
        grads = rng.normal(size=(num, 9)) + (trial % 2) * rng.normal(size=(1, 9))
        if trial == 2:  # Nearly dependent rows: condition number ~1e10.
            grads[1] = -0.7 * grads[0] + 1e-5 * rng.normal(size=9)
        if trial == 3:  # Row scales from 1e-3 to 1e3.
            grads = grads * np.logspace(-3, 3, num)[:, None]
        if trial == 4:  # Fewer parameters than tasks: rank-deficient.
            grads = grads[:, : num - 1]
        if trial == 5:  # Tiny gradients: the constants 1e-8 matter.
            grads = grads * 1e-5
        grads = grads.astype("float32").astype("float64")
        cases.append(grads @ grads.T)
    return cases


def test_two_task_closed_form_matches_a_one_dimensional_search():
    rng = np.random.default_rng(20)
    for gramian in _hard_gramians(rng, 2) + _hard_gramians(rng, 2):
        for c in (0.1, 0.5, 0.9):
            radius = _radius(gramian, c)
            w = _inner(gramian, radius)
            # Golden-section search of the convex F(t, 1 - t) on [0, 1].
            lo, hi = 0.0, 1.0
            ratio = (np.sqrt(5.0) - 1) / 2
            for _ in range(200):
                t1, t2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
                f1, f2 = _objective(
                    np.array([[t1, 1 - t1], [t2, 1 - t2]]), gramian, radius
                )
                lo, hi = (lo, t2) if f1 <= f2 else (t1, hi)
            t = np.clip(0.5 * (lo + hi), 0, 1)
            best = min(
                _objective(np.array([[t, 1 - t], [0, 1], [1, 0]]), gramian, radius)
            )
            scale = _gradient_scale(gramian, radius)
            assert _objective(w, gramian, radius)[0] <= best + 1e-12 * scale
            np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-12)
            assert (w >= 0).all()


@pytest.mark.parametrize("num", [3, 4, 5])
def test_inner_solver_matches_exact_support_enumeration(num):
    rng = np.random.default_rng(30 + num)
    for index, gramian in enumerate(_hard_gramians(rng, num)):
        for c in (0.2, 0.5, 0.9):
            radius = _radius(gramian, c)
            w = _inner(gramian, radius)
            exact = _exact_inner(gramian, radius)
            scale = _gradient_scale(gramian, radius)
            ours = _objective(w, gramian, radius)[0]
            assert ours <= _objective(exact, gramian, radius)[0] + 1e-10 * scale
            assert (w >= 0).all()
            np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-12)
            if index in (0, 1, 3):  # Unique, well-determined minimisers.
                np.testing.assert_allclose(w, exact, atol=1e-7)


def test_inner_solver_when_zero_is_in_the_convex_hull():
    # Singular faces (g_3 = -(g_1 + g_2) / 2): no certified closed-form
    # support solution, the interior-point iterations run to the end.
    rng = np.random.default_rng(40)
    for _ in range(3):
        grads = rng.normal(size=(3, 6))
        grads[2] = -0.5 * (grads[0] + grads[1])
        gramian = grads @ grads.T
        radius = _radius(gramian, 0.5)
        w = _inner(gramian, radius)
        grid = _simplex_grid(3, 400)
        assert _objective(w, gramian, radius)[0] <= _objective(
            grid, gramian, radius
        ).min() + 1e-9 * _gradient_scale(gramian, radius)


@pytest.mark.parametrize("num", [2, 4])
def test_graph_without_xla_equals_eager(num):
    # In a graph the solver runs as a nested XLA function.
    rng = np.random.default_rng(7)
    grads = _random_grads(rng, num, 7, common=1.0)
    strategy = CAGrad()
    u1, w1 = strategy(grads)
    u2, w2 = graph(lambda g: strategy(g), layers=[strategy])(grads)
    np.testing.assert_allclose(_np(u2), _np(u1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(w2), _np(w1), rtol=1e-5, atol=1e-6)


def test_nearly_cancelling_gradients_are_finite():
    # A step of the conflicting toy near the Pareto segment: the float32
    # Gramian's mean, ||g_0||^2, rounds to -3e-8 (the reference's square
    # root would be NaN).
    grads = np.array(
        [[-1.3994535e00, 2.2173906e-04], [1.3992187e00, 2.2251904e-04]], "float32"
    )
    gramian = grads @ grads.T
    assert gramian.astype("float64").mean() + 1e-8 < 0
    update, weights = CAGrad()(grads)
    assert np.isfinite(_np(update)).all() and np.isfinite(_np(weights)).all()


# --- Missing tasks ---------------------------------------------------------


def _with_absent(grads, absent):
    grads = grads.copy()
    mask = np.ones(len(grads), "float32")
    mask[list(absent)] = 0.0
    grads[list(absent)] = 0.0
    return grads, mask


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_missing_tasks_all_present_mask_equals_unmasked(rescale):
    assert CAGrad.supports_missing_tasks
    rng = np.random.default_rng(60)
    for num in (2, 3, 5):
        strategy = CAGrad(c=0.4, rescale=rescale)
        grads = _random_grads(rng, num, 7, common=1.0)
        u1, w1 = strategy(grads)
        u2, w2 = strategy(grads, task_mask=np.ones(num, "float32"))
        np.testing.assert_array_equal(_np(u2), _np(u1))
        np.testing.assert_array_equal(_np(w2), _np(w1))


@pytest.mark.parametrize("absent", [(1,), (0, 3), (0, 2, 4), (0, 1, 3, 4)])
@pytest.mark.parametrize("c,rescale", [(0.5, 1), (0.4, 0), (0.9, 2)])
def test_missing_tasks_equal_cagrad_on_present_rows(absent, c, rescale):
    # K = 4, 3, 2 (closed form) and 1 present tasks of 5; g_0 is the mean
    # of the present rows, as CAGrad built for them computes it.
    rng = np.random.default_rng(61 + len(absent))
    present = [t for t in range(5) if t not in absent]
    for _ in range(3):
        grads, mask = _with_absent(_random_grads(rng, 5, 7, common=1.0), absent)
        update, weights = CAGrad(c=c, rescale=rescale)(grads, task_mask=mask)
        ref_update, ref_weights = CAGrad(c=c, rescale=rescale)(grads[present])
        np.testing.assert_array_equal(_np(weights)[list(absent)], 0.0)
        np.testing.assert_allclose(
            _np(weights)[present], _np(ref_weights), rtol=1e-5, atol=1e-8
        )
        np.testing.assert_allclose(_np(update), _np(ref_update), rtol=1e-5, atol=1e-6)
        # And the reference's update formula on the present rows.
        g = grads[present].astype("float64")
        radius = _radius(g @ g.T, c)
        w = _inner(g @ g.T, radius)
        np.testing.assert_allclose(
            _np(update), _reference_update(g, w, c, rescale), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("num,absent", [(5, (1, 3)), (6, (0, 5)), (6, (2, 3, 4))])
def test_missing_tasks_inner_solver_equals_solver_on_present_block(num, absent):
    # Hard Gramians (ill-conditioned, badly scaled, rank-deficient, tiny):
    # the masked solver gives the K-task solver's minimiser.
    rng = np.random.default_rng(63)
    present = [t for t in range(num) if t not in absent]
    mask = np.isin(np.arange(num), present)
    for index, block in enumerate(_hard_gramians(rng, len(present))):
        gramian = np.full((num, num), 5.0)  # absent entries: anything
        gramian[np.ix_(present, present)] = block
        for c in (0.2, 0.5, 0.9):
            radius = _radius(block, c)
            w = _present_inner(gramian, radius, mask)
            ref = _inner(block, radius)
            np.testing.assert_array_equal(w[~mask], 0.0)
            scale = _gradient_scale(block, radius)
            ours = _objective(w[present], block, radius)[0]
            theirs = _objective(ref, block, radius)[0]
            assert ours <= theirs + 1e-10 * scale
            np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-12)
            if index in (0, 1, 3):  # Unique, well-determined minimisers.
                np.testing.assert_allclose(w[present], ref, atol=1e-7)
                np.testing.assert_allclose(
                    w[present], _exact_inner(block, radius), atol=1e-7
                )


def test_missing_tasks_compute_weights_drops_nonzero_rows():
    rng = np.random.default_rng(64)
    grads = _random_grads(rng, 4, 5, common=1.0).astype("float64")
    mask = np.array([1.0, 1.0, 0.0, 1.0], "float32")
    present = [0, 1, 3]
    weights = _np(
        CAGrad().compute_weights((grads @ grads.T).astype("float32"), task_mask=mask)
    )
    ref = CAGrad().compute_weights(
        (grads[present] @ grads[present].T).astype("float32")
    )
    np.testing.assert_allclose(weights[present], _np(ref), rtol=1e-5)
    assert weights[2] == 0.0


def test_missing_tasks_degenerate_inputs_finite_and_stateless():
    rng = np.random.default_rng(65)
    g = _random_grads(rng, 4, 5)
    strategy = CAGrad()
    cases = [
        (g * np.array([[1e10], [1.0], [1e-10], [1.0]], "float32"), [1, 0, 1, 1]),
        (np.zeros((4, 5), "float32"), [0, 0, 0, 0]),
        (np.zeros((4, 5), "float32"), [1, 0, 1, 1]),
        (g * 1e-10, [1, 1, 0, 1]),
        (np.stack([g[0], -g[0], g[1], g[2]]), [1, 1, 1, 0]),
    ]
    for grads, mask in cases:
        mask = np.asarray(mask, "float32")
        update, weights = strategy(grads * mask[:, None], task_mask=mask)
        assert np.isfinite(_np(update)).all() and np.isfinite(_np(weights)).all()
        np.testing.assert_array_equal(_np(weights)[mask == 0], 0.0)
    # No present task: zero weights. One present task: CAGrad for one task.
    _, weights = strategy(np.zeros((4, 5), "float32"), task_mask=np.zeros(4, "float32"))
    np.testing.assert_array_equal(_np(weights), 0.0)
    mask = np.array([0.0, 0.0, 1.0, 0.0], "float32")
    update, weights = strategy(g * mask[:, None], task_mask=mask)
    ref_update, ref_weights = CAGrad()(g[2:3])
    np.testing.assert_allclose(_np(weights)[2], _np(ref_weights)[0], rtol=1e-6)
    np.testing.assert_allclose(_np(update), _np(ref_update), rtol=1e-6)
    assert strategy.per_task_state() == []


def test_missing_tasks_eager_matches_xla():
    strategy = CAGrad(c=0.4)
    strategy.build((5, 7))
    in_xla = compiled(lambda g, m: strategy(g, task_mask=m), layers=[strategy])
    in_graph = graph(lambda g, m: strategy(g, task_mask=m), layers=[strategy])
    rng = np.random.default_rng(66)
    for absent in [(0,), (2, 3), (0, 1, 4), (0, 1, 2, 3)]:
        grads, mask = _with_absent(_random_grads(rng, 5, 7, common=1.0), absent)
        eager_update, eager_weights = strategy(grads, task_mask=mask)
        for step in (in_xla, in_graph):
            update, weights = step(grads, mask)
            np.testing.assert_allclose(
                _np(update), _np(eager_update), rtol=1e-5, atol=1e-6
            )
            np.testing.assert_allclose(
                _np(weights), _np(eager_weights), rtol=1e-5, atol=1e-7
            )


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# The inner solver once raised "Input matrix is not invertible" on
# exactly opposed rows at T = 20 and 40. Permutation equivariant up to the
# solver's accuracy on duplicated rows (non-unique w*).
# Every shape in one test (every failing case reported).
def test_degenerate_inputs():
    degenerate_checks.check_cases(
        CAGrad, degenerate_inputs.degenerate_cases(), _degenerate_options
    )


def _degenerate_options(case):
    # Exactly opposed pairs make w* non-unique (any w with g_w = 0): on
    # TensorFlow the float32 Gramian's rows cancel exactly and the uniform
    # start is returned, on JAX (XLA's dot rounds differently) the solver
    # stops at another minimiser. The update is compared either way.
    unique = BACKEND == "tensorflow" or case.kind != "opposed"
    return {"rtol": 1e-4, "permute_weights": unique}


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's float64 scope")
def test_inner_solver_program_is_float64_on_jax():
    # Some keras.ops compute in float32 on JAX whatever the input (ops.mean
    # along an axis, ops.norm, ops.cos); none may appear in the solver.
    import jax

    gramian = np.eye(5) + 0.1
    present = np.array([True, False, True, True, True])
    with jax.enable_x64(True):
        for fn, args in (
            (cagrad_inner_weights, (gramian, np.float64(0.3))),
            (present_cagrad_inner_weights, (gramian, np.float64(0.3), present)),
        ):
            program = str(jax.make_jaxpr(fn)(*args))
            assert "f32" not in program and "f64" in program
