"""Tests of Nash-MTL."""

import aggregator_properties as degenerate_checks
import degenerate_inputs
import numpy as np
import pytest
from backends import BACKEND, compiled
from backends import graph as graph_step
from keras import ops

import keras_mtl.weighting as weighting
from keras_mtl.weighting import nash_mtl
from keras_mtl.weighting._solver_ops import solver_function
from keras_mtl.weighting.nash_mtl import NashMTL

pytestmark = pytest.mark.both_backends


def _np(x):
    return ops.convert_to_numpy(x)


def _float64(fn, *args):
    """`fn(*args)` (a solver_function) as float64 numpy values on every
    backend: on JAX without x64 the solver computes in float64 but returns
    the input's float dtype, float32; in an `enable_x64` scope, float64."""
    args = [a if isinstance(a, (str, int)) else np.asarray(a) for a in args]

    def run():
        out = fn(*args)
        if isinstance(out, (tuple, list)):
            return tuple(_np(o) for o in out)
        return _np(out)

    if BACKEND == "jax":
        import jax

        with jax.enable_x64(True):
            return run()
    return run()


# Golden values computed once with the authors' solver (AvivNavon/nash-mtl
# `methods/weight_methods.py`, NashMTL, commit 8d60c75: cvxpy 1.9 + ECOS,
# optim_niter=20, max_norm=1.0), started from alpha = 1.
_NBS_GRADS = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -0.5], [0.5, 0.0, 2.0]], "float32")
_NBS_ALPHA = [0.6332721943915367, 1.0025814613239952, 0.5724377154429264]
_NBS_UPDATE = [0.5308681130409241, 0.7616502046585083, 0.3715735971927643]
# The second step, warm-started from the first.
_NBS_GRADS_2 = np.array([[1.2, 0.4, 0.1], [0.1, 0.9, -0.6], [0.4, 0.2, 1.8]], "float32")
_NBS_ALPHA_2 = [0.5570073876374422, 1.054339182319748, 0.6158161620616492]
_NBS_UPDATE_2 = [0.5889946818351746, 0.7475939989089966, 0.306899756193161]
# The procedure stops at a point that is not the bargaining solution
# (alpha_1 (K alpha)_1 = 11.4, alpha_2 (K alpha)_2 = 1).
_CCP_GRADS = np.array(
    [
        [0.2, 0.9, -0.9, -1.7, -1.6, -0.2, 0.3, 0.7],
        [-2.6, -11.0, -0.4, 13.9, 32.5, 1.8, 18.1, -1.5],
    ],
    "float32",
)
_CCP_ALPHA = [1.7921963392473017, 0.09193122501123953]
_CCP_UPDATE = [
    0.03394988924264908,
    0.17106930911540985,
    -0.4690142571926117,
    -0.5028852820396423,
    0.03418650105595589,
    -0.05485830456018448,
    0.6259062886238098,
    0.3174545168876648,
]
# The first subproblem is unbounded (ECOS: "unbounded"): alpha stays 1.
_UNBOUNDED_GRADS = np.array(
    [[-1.7, -3.5, 0.3], [1.1, -1.5, 2.8], [1.6, 1.3, 0.8]], "float32"
)


def _random_grads(rng, num, dim, common=0.0):
    grads = rng.normal(size=(num, dim)) * rng.uniform(0.3, 3.0, size=(num, 1))
    return (grads + common * rng.normal(size=(1, dim))).astype("float32")


def _products(grads, alpha):
    grads = np.asarray(grads, np.float64)
    gramian = grads @ grads.T
    return np.asarray(alpha, np.float64) * (gramian @ np.asarray(alpha, np.float64))


def test_registry_and_config_round_trip():
    strategy = weighting.get("nash_mtl")
    assert isinstance(strategy, NashMTL)
    config = strategy.get_config()
    assert (
        config["update_weights_every"],
        config["optim_niter"],
        config["max_norm"],
    ) == (
        1,
        20,
        1.0,
    )
    original = NashMTL(
        update_weights_every=3, optim_niter=5, max_norm=0.0, solver="newton"
    )
    rebuilt = NashMTL.from_config(original.get_config())
    assert rebuilt.get_config() == original.get_config()
    assert NashMTL.stateful and not NashMTL.supports_rep_grad


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"update_weights_every": 0}, "update_weights_every"),
        ({"optim_niter": 2.5}, "optim_niter"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"solver": "cvxpy"}, "solver"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NashMTL(**kwargs)


def test_golden_values_of_the_reference_procedure():
    strategy = NashMTL()
    update = strategy.aggregate(_NBS_GRADS)
    np.testing.assert_allclose(_np(strategy.alpha), _NBS_ALPHA, rtol=1e-5)
    np.testing.assert_allclose(_np(update), _NBS_UPDATE, rtol=1e-5, atol=1e-6)
    update = strategy.aggregate(_NBS_GRADS_2)
    np.testing.assert_allclose(_np(strategy.alpha), _NBS_ALPHA_2, rtol=1e-5)
    np.testing.assert_allclose(_np(update), _NBS_UPDATE_2, rtol=1e-5, atol=1e-6)

    strategy = NashMTL()
    update = strategy.aggregate(_CCP_GRADS)
    np.testing.assert_allclose(_np(strategy.alpha), _CCP_ALPHA, rtol=1e-4)
    np.testing.assert_allclose(_np(update), _CCP_UPDATE, rtol=1e-4, atol=1e-5)
    products = _products(_CCP_GRADS, _np(strategy.alpha))
    assert products[0] > 10 and abs(products[1] - 1) < 1e-4

    strategy = NashMTL()
    strategy.aggregate(_UNBOUNDED_GRADS)
    np.testing.assert_allclose(_np(strategy.alpha), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("num", [2, 3, 5])
def test_newton_solver_satisfies_the_bargaining_equations(num):
    rng = np.random.default_rng(num)
    for trial in range(3):
        grads = _random_grads(rng, num, num + 4, common=1.0 if trial else 0.0)
        strategy = NashMTL(solver="newton", max_norm=0.0)
        update, weights = strategy(grads)
        alpha = _np(strategy.alpha)
        assert (alpha > 0).all()
        np.testing.assert_allclose(_products(grads, alpha), 1.0, rtol=1e-5)
        np.testing.assert_allclose(_np(weights), alpha, rtol=1e-6)
        # ||d||^2 = sum_t alpha_t g_t . d = T.
        d = _np(update).astype("float64")
        np.testing.assert_allclose(d @ d, num, rtol=1e-4)


def test_procedure_reaches_the_bargaining_solution_on_near_orthogonal_tasks():
    rng = np.random.default_rng(11)
    grads = _random_grads(rng, 4, 60)
    ccp, newton = NashMTL(), NashMTL(solver="newton")
    ccp(grads)
    newton(grads)
    np.testing.assert_allclose(_products(grads, _np(ccp.alpha)), 1.0, rtol=1e-3)
    np.testing.assert_allclose(_np(ccp.alpha), _np(newton.alpha), rtol=1e-4)


@pytest.mark.parametrize("solver", ["ccp", "newton"])
def test_invariance_to_rescaling_one_task(solver):
    grads = _NBS_GRADS.copy()
    scaled = grads.copy()
    scaled[1] *= 7.0
    base, other = NashMTL(solver=solver), NashMTL(solver=solver)
    update = base.aggregate(grads)
    update_s = other.aggregate(scaled)
    expected = _np(base.alpha) * np.array([1.0, 1 / 7.0, 1.0])
    np.testing.assert_allclose(_np(other.alpha), expected, rtol=1e-5)
    np.testing.assert_allclose(_np(update_s), _np(update), rtol=1e-5, atol=1e-6)


def test_clipping_to_max_norm():
    rng = np.random.default_rng(2)
    grads = _random_grads(rng, 3, 9)
    for max_norm in (1.0, 0.3, 5.0):
        strategy = NashMTL(max_norm=max_norm, solver="newton")
        update, weights = strategy(grads)
        alpha = _np(strategy.alpha).astype("float64")
        raw = alpha @ grads.astype("float64")
        norm = np.linalg.norm(raw)  # sqrt(3) > 1.
        coef = min(1.0, max_norm / (norm + 1e-6))
        np.testing.assert_allclose(_np(update), coef * raw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(weights), coef * alpha, rtol=1e-5)
        assert np.linalg.norm(_np(update)) <= max_norm * (1 + 1e-5)


def test_update_weights_every_k_steps_reuses_alpha():
    rng = np.random.default_rng(3)
    # Nearly orthogonal tasks: every solve reaches the bargaining solution.
    sequence = [_random_grads(rng, 3, 40) for _ in range(7)]
    strategy = NashMTL(update_weights_every=3, max_norm=0.0)
    alphas = []
    for grads in sequence:
        update, weights = strategy(grads)
        alpha = _np(strategy.alpha).copy()
        alphas.append(alpha)
        # The (stored) alpha is applied to the current gradients.
        np.testing.assert_allclose(_np(update), alpha @ grads, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(weights), alpha, rtol=1e-6)
    assert int(_np(strategy.step_count)) == 7
    for k in (1, 2, 4, 5):
        np.testing.assert_array_equal(alphas[k], alphas[k - 1])
    for k in (3, 6):
        assert not np.allclose(alphas[k], alphas[k - 1])
    # Steps 0, 3, 6 solve for their own gradients.
    for k in (0, 3, 6):
        np.testing.assert_allclose(_products(sequence[k], alphas[k]), 1.0, rtol=1e-3)


def test_infeasible_and_degenerate_inputs_keep_the_previous_alpha():
    rng = np.random.default_rng(4)
    g = _random_grads(rng, 4, 6)
    # 0 in the convex hull, a zero gradient: no solution, alpha stays 1.
    cases = [
        (np.stack([g[0], -g[0]]), "ccp"),
        (np.stack([g[0], -g[0]]), "newton"),
        (np.stack([g[0], np.zeros_like(g[0]), g[1]]), "ccp"),
    ]
    for grads, solver in cases:
        strategy = NashMTL(solver=solver)
        update, weights = strategy(grads)
        np.testing.assert_array_equal(_np(strategy.alpha), 1.0)
        assert np.isfinite(_np(update)).all()
    cases = [
        np.zeros((3, 5), "float32"),
        np.stack([g[0], g[1], g[0] + g[1]]),
        g * 1e-10,
        g * 1e10,
        g * np.array([[1e-10], [1.0], [1e10], [1.0]], "float32"),
        _random_grads(rng, 5, 2),
    ]
    for grads in cases:
        update, weights = NashMTL()(grads)
        assert np.isfinite(_np(update)).all() and np.isfinite(_np(weights)).all()
        assert np.linalg.norm(_np(update)) <= 1.0 + 1e-5


def test_scale_free_update_norm():
    rng = np.random.default_rng(5)
    grads = _random_grads(rng, 3, 8)
    for scale in (1e-10, 1e10):
        update = NashMTL(max_norm=0.0).aggregate(grads * np.float32(scale))
        np.testing.assert_allclose(np.linalg.norm(_np(update)), np.sqrt(3.0), rtol=1e-3)


def test_one_task():
    # The reference stops at once (its residual test passes at alpha = 1):
    # the update is the clipped gradient.
    grads = np.array([[3.0, 4.0]], "float32")
    np.testing.assert_allclose(_np(NashMTL().aggregate(grads)), [0.6, 0.8], rtol=1e-5)
    np.testing.assert_allclose(
        _np(NashMTL(max_norm=0.0).aggregate(grads)), [3.0, 4.0], rtol=1e-6
    )


def test_state_round_trip_reset_and_training_false():
    rng = np.random.default_rng(6)
    sequence = [_random_grads(rng, 3, 6) for _ in range(3)]
    strategy = NashMTL(update_weights_every=2)
    strategy(sequence[0])
    clone = NashMTL.from_config(strategy.get_config())
    clone.build(sequence[0].shape)
    clone.set_weights(strategy.get_weights())
    for grads in sequence[1:]:
        np.testing.assert_array_equal(_np(clone(grads)[0]), _np(strategy(grads)[0]))
    # training=False leaves the state.
    alpha, count = _np(strategy.alpha).copy(), int(_np(strategy.step_count))
    strategy(sequence[0], training=False)
    np.testing.assert_array_equal(_np(strategy.alpha), alpha)
    assert int(_np(strategy.step_count)) == count
    strategy.reset_state()
    np.testing.assert_array_equal(_np(strategy.alpha), 1.0)
    assert int(_np(strategy.step_count)) == 0


def test_eager_equals_xla():
    rng = np.random.default_rng(7)
    sequence = [_random_grads(rng, 3, 7, common=1.0) for _ in range(3)]
    eager, xla = NashMTL(update_weights_every=2), NashMTL(update_weights_every=2)
    eager.build((3, 7))
    xla.build((3, 7))
    step = compiled(lambda g: xla(g), layers=[xla])
    for grads in sequence:
        u1, w1 = eager(grads)
        u2, w2 = step(grads)
        np.testing.assert_allclose(_np(u2), _np(u1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(w2), _np(w1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(xla.alpha), _np(eager.alpha), rtol=1e-6)


_bargaining = solver_function(nash_mtl.bargaining_solution)
_barrier_subproblem = solver_function(nash_mtl.ccp_subproblem)
_certificate = solver_function(nash_mtl.solves_subproblem)


def test_subproblem_certificate_agrees_with_the_barrier_solver():
    # The bargaining solution b* is taken as a subproblem's solution only
    # when its KKT multipliers are non-negative; check both ways against
    # the interior-point solution of the same subproblem.
    rng = np.random.default_rng(20)
    outcomes = []
    for trial in range(16):
        num = (2, 3, 4)[trial % 3]
        grads = _random_grads(rng, num, 8, common=(0.0, 1.0, 2.5)[trial % 3])
        gramian = grads.astype("float64") @ grads.astype("float64").T
        norms = np.sqrt(np.diag(gramian))
        corr = gramian / np.outer(norms, norms)
        b_star, ok = _float64(_bargaining, corr, np.ones([num]))
        assert bool(ok)
        # The subproblem's cost at a previous alpha (in the cosine scale),
        # as in the procedure: C d + 1/b + C (1 / (C b)).
        previous = rng.uniform(0.05, 3.0, size=num) * norms
        c = corr
        cost = c @ norms + 1 / previous + c @ (1 / (c @ previous))
        certified = bool(_float64(_certificate, corr, cost, b_star))
        b, solved = _float64(_barrier_subproblem, corr, cost, b_star * np.exp(0.25))
        if certified:
            assert bool(solved)
            np.testing.assert_allclose(b, b_star, rtol=1e-6)
        elif bool(solved):
            # A constraint b_t (C b)_t >= 1 is slack at the optimum, which
            # is strictly better than b*.
            assert (b * (c @ b)).max() > 1 + 1e-3
            assert cost @ b < cost @ b_star - 1e-6 * abs(cost @ b_star)
        # (Otherwise the subproblem is unbounded: no certificate either.)
        outcomes.append((certified, bool(solved)))
    # Both outcomes of the certificate occur, and bounded uncertified ones.
    assert (True, True) in outcomes and (False, True) in outcomes


def test_graph_without_xla_equals_eager():
    # In a graph the solver runs as a nested XLA function.
    rng = np.random.default_rng(8)
    sequence = [_random_grads(rng, 4, 7, common=1.0) for _ in range(2)]
    eager, in_graph = NashMTL(), NashMTL()
    in_graph.build((4, 7))
    step = graph_step(lambda g: in_graph(g), layers=[in_graph])
    for grads in sequence:
        u1, w1 = eager(grads)
        u2, w2 = step(grads)
        np.testing.assert_allclose(_np(u2), _np(u1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(w2), _np(w1), rtol=1e-5, atol=1e-6)


# --- Missing tasks ---------------------------------------------------------


def _embed(grads, num, present):
    """A (num, P) matrix with `grads` on the present rows, zero elsewhere."""
    full = np.zeros((num, grads.shape[1]), "float32")
    full[present] = grads
    mask = np.zeros(num, "float32")
    mask[present] = 1.0
    return full, mask


def _copy_present_state(strategy, present):
    """NashMTL for the present tasks with the same stored alpha / counter."""
    small = NashMTL.from_config(strategy.get_config())
    small.build((len(present), 1))
    small.alpha.assign(_np(strategy.alpha)[present])
    small.step_count.assign(_np(strategy.step_count))
    return small


@pytest.mark.parametrize("solver", ["ccp", "newton"])
def test_missing_tasks_all_present_mask_equals_unmasked(solver):
    assert NashMTL.supports_missing_tasks
    rng = np.random.default_rng(70)
    sequence = [_random_grads(rng, 4, 7, common=1.0) for _ in range(3)]
    plain, masked = NashMTL(solver=solver), NashMTL(solver=solver)
    for grads in sequence:
        u1, w1 = plain(grads)
        u2, w2 = masked(grads, task_mask=np.ones(4, "float32"))
        np.testing.assert_array_equal(_np(u2), _np(u1))
        np.testing.assert_array_equal(_np(w2), _np(w1))
        np.testing.assert_array_equal(_np(masked.alpha), _np(plain.alpha))


@pytest.mark.parametrize("solver", ["ccp", "newton"])
@pytest.mark.parametrize("absent", [(1,), (0, 3), (0, 1, 3)])
def test_missing_tasks_equal_nash_mtl_on_present_rows_with_the_same_state(
    solver, absent
):
    # A few steps on all tasks, then a step without some: the present
    # tasks' weights and new alpha are those of Nash-MTL built for them
    # with the same stored alpha (the warm start) and counter.
    rng = np.random.default_rng(71 + len(absent))
    present = [t for t in range(4) if t not in absent]
    strategy = NashMTL(solver=solver)
    for _ in range(3):
        strategy(_random_grads(rng, 4, 9, common=1.0))
    for _ in range(2):
        small = _copy_present_state(strategy, present)
        before = _np(strategy.alpha).copy()
        grads, mask = _embed(_random_grads(rng, len(present), 9, 1.0), 4, present)
        update, weights = strategy(grads, task_mask=mask)
        ref_update, ref_weights = small(grads[present])
        np.testing.assert_array_equal(_np(weights)[list(absent)], 0.0)
        np.testing.assert_allclose(_np(weights)[present], _np(ref_weights), rtol=1e-5)
        np.testing.assert_allclose(_np(update), _np(ref_update), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            _np(strategy.alpha)[present], _np(small.alpha), rtol=1e-5
        )
        # The absent entries of alpha are not touched (even before the
        # model restores them).
        np.testing.assert_array_equal(
            _np(strategy.alpha)[list(absent)], before[list(absent)]
        )
        if solver == "newton" and len(present) > 1:
            # The bargaining equations of the present tasks alone.
            np.testing.assert_allclose(
                _products(grads[present], _np(strategy.alpha)[present]),
                1.0,
                rtol=1e-5,
            )


def test_missing_tasks_solver_reproduces_the_golden_values_on_present_tasks():
    # The authors' values (see the top of the file) with absent tasks
    # interleaved: the same alphas for the present tasks.
    solve = solver_function(nash_mtl.present_nash_mtl_alpha)
    for grads, expected, num, present in (
        (_NBS_GRADS, _NBS_ALPHA, 5, [0, 2, 3]),
        (_CCP_GRADS, _CCP_ALPHA, 3, [0, 2]),
        (_UNBOUNDED_GRADS, [1.0, 1.0, 1.0], 4, [1, 2, 3]),
    ):
        full, mask = _embed(grads, num, present)
        previous = np.linspace(0.5, 2.0, num)
        previous[present] = 1.0
        gramian = full.astype("float64") @ full.astype("float64").T
        gramian[mask == 0] = 3.0  # dropped, whatever it holds
        gramian[:, mask == 0] = 3.0
        alpha = _float64(solve, gramian, previous, mask > 0, "ccp", 20)
        np.testing.assert_allclose(alpha[present], expected, rtol=1e-4)
        np.testing.assert_array_equal(alpha[mask == 0], previous[mask == 0])


@pytest.mark.parametrize("solver", ["ccp", "newton"])
def test_missing_tasks_solver_equals_solver_on_present_block(solver):
    # Random, badly scaled, nearly dependent and infeasible Gramians.
    solve = solver_function(nash_mtl.present_nash_mtl_alpha)
    solve_all = solver_function(nash_mtl.nash_mtl_alpha)
    rng = np.random.default_rng(73)
    num, present = 6, [0, 2, 3, 5]
    mask = np.isin(np.arange(num), present)
    for trial in range(8):
        grads = _random_grads(rng, 4, 8, common=(0.0, 1.0, 2.5)[trial % 3])
        if trial == 3:
            grads = grads * np.logspace(-3, 3, 4)[:, None].astype("float32")
        if trial == 4:
            grads[3] = 0.5 * grads[0] + 0.5 * grads[1] + 1e-3
        if trial == 5:
            grads[2] = -grads[0]  # infeasible: previous alpha kept
        block = grads.astype("float64") @ grads.astype("float64").T
        gramian = np.zeros((num, num))
        gramian[np.ix_(present, present)] = block
        previous = rng.uniform(0.2, 2.0, num)
        alpha = _float64(solve, gramian, previous, mask, solver, 20)
        ref = _float64(solve_all, block, previous[present], solver, 20)
        np.testing.assert_allclose(alpha[present], ref, rtol=1e-5)
        np.testing.assert_array_equal(alpha[~mask], previous[~mask])


def test_missing_tasks_update_weights_every_keeps_absent_alpha():
    # update_weights_every=2: steps 0, 2, 4 solve. An absent task's stored
    # alpha survives a solving step without it and is used again once the
    # task is back; a reusing step without it gives it weight 0.
    rng = np.random.default_rng(74)
    strategy = NashMTL(update_weights_every=2, max_norm=0.0)
    first = _random_grads(rng, 3, 40)
    strategy(first)  # step 0: solve with all tasks
    alpha0 = _np(strategy.alpha).copy()
    # Step 1 (reuses alpha) without task 1.
    grads, mask = _embed(_random_grads(rng, 2, 40), 3, [0, 2])
    small = _copy_present_state(strategy, [0, 2])
    update, weights = strategy(grads, task_mask=mask)
    ref_update, _ = small(grads[[0, 2]])
    np.testing.assert_allclose(_np(weights), alpha0 * mask, rtol=1e-6)
    np.testing.assert_allclose(_np(update), _np(ref_update), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(_np(strategy.alpha), alpha0)
    # Step 2 (solves) without task 1: its alpha stays.
    grads, mask = _embed(_random_grads(rng, 2, 40), 3, [0, 2])
    small = _copy_present_state(strategy, [0, 2])
    update, weights = strategy(grads, task_mask=mask)
    small(grads[[0, 2]])
    alpha2 = _np(strategy.alpha).copy()
    assert alpha2[1] == alpha0[1] and _np(weights)[1] == 0.0
    np.testing.assert_allclose(alpha2[[0, 2]], _np(small.alpha), rtol=1e-5)
    assert not np.allclose(alpha2[[0, 2]], alpha0[[0, 2]])
    np.testing.assert_allclose(_products(grads[[0, 2]], alpha2[[0, 2]]), 1.0, rtol=1e-3)
    # Step 3 (reuses alpha) with every task: task 1's old alpha is back.
    grads = _random_grads(rng, 3, 40)
    update, weights = strategy(grads, task_mask=np.ones(3, "float32"))
    np.testing.assert_allclose(_np(weights), alpha2, rtol=1e-6)
    np.testing.assert_allclose(_np(update), alpha2 @ grads, rtol=1e-5, atol=1e-6)
    assert int(_np(strategy.step_count)) == 4


def test_missing_tasks_state_restored_by_the_model_hook():
    rng = np.random.default_rng(75)
    strategy = NashMTL()
    strategy(_random_grads(rng, 3, 8, common=1.0))
    assert [(v.path, axis) for v, axis in strategy.per_task_state()] == [
        (strategy.alpha.path, 0)
    ]
    mask = np.array([1.0, 0.0, 1.0], "float32")
    grads = _random_grads(rng, 3, 8, common=1.0) * mask[:, None]
    snapshot = strategy.task_state_snapshot()
    before = _np(strategy.alpha).copy()
    strategy(grads, task_mask=mask)
    strategy.restore_absent_tasks(mask, snapshot)
    after = _np(strategy.alpha)
    assert after[1] == before[1]
    assert not np.allclose(after[[0, 2]], before[[0, 2]])
    assert int(_np(strategy.step_count)) == 2


def test_missing_tasks_degenerate_inputs_finite():
    rng = np.random.default_rng(76)
    g = _random_grads(rng, 4, 6)
    cases = [
        (g * np.array([[1e10], [1.0], [1e-10], [1.0]], "float32"), [1, 0, 1, 1]),
        (np.zeros((4, 6), "float32"), [0, 0, 0, 0]),
        (np.zeros((4, 6), "float32"), [1, 0, 1, 1]),
        (g * 1e-10, [1, 1, 0, 1]),
        (np.stack([g[0], -g[0], g[1], g[2]]), [1, 1, 0, 0]),
    ]
    for solver in ("ccp", "newton"):
        for grads, mask in cases:
            strategy = NashMTL(solver=solver)
            mask = np.asarray(mask, "float32")
            update, weights = strategy(grads * mask[:, None], task_mask=mask)
            assert np.isfinite(_np(update)).all()
            assert np.isfinite(_np(weights)).all()
            assert np.isfinite(_np(strategy.alpha)).all()
            np.testing.assert_array_equal(_np(weights)[mask == 0], 0.0)
            assert np.linalg.norm(_np(update)) <= 1.0 + 1e-5
    # No present task: zero weights, alpha untouched.
    strategy = NashMTL()
    _, weights = strategy(np.zeros((3, 4), "float32"), task_mask=np.zeros(3, "float32"))
    np.testing.assert_array_equal(_np(weights), 0.0)
    np.testing.assert_array_equal(_np(strategy.alpha), 1.0)
    # One present task: as Nash-MTL for one task.
    mask = np.array([0.0, 1.0, 0.0, 0.0], "float32")
    for max_norm in (0.0, 1.0):
        update, weights = NashMTL(max_norm=max_norm)(g * mask[:, None], task_mask=mask)
        ref_update, ref_weights = NashMTL(max_norm=max_norm)(g[1:2])
        np.testing.assert_allclose(_np(weights)[1], _np(ref_weights)[0], rtol=1e-6)
        np.testing.assert_allclose(_np(update), _np(ref_update), rtol=1e-6)


def test_missing_tasks_compute_weights_drops_nonzero_rows():
    rng = np.random.default_rng(77)
    grads = _random_grads(rng, 4, 9, common=1.0).astype("float64")
    mask = np.array([1.0, 0.0, 1.0, 1.0], "float32")
    present = [0, 2, 3]
    strategy, small = NashMTL(), NashMTL()
    strategy.build((4, 9))
    small.build((3, 9))
    weights = _np(
        strategy.compute_weights((grads @ grads.T).astype("float32"), task_mask=mask)
    )
    ref = small.compute_weights((grads[present] @ grads[present].T).astype("float32"))
    np.testing.assert_allclose(weights[present], _np(ref), rtol=1e-5)
    assert weights[1] == 0.0
    assert _np(strategy.alpha)[1] == 1.0


def test_missing_tasks_eager_matches_xla():
    rng = np.random.default_rng(78)
    eager, xla = NashMTL(update_weights_every=2), NashMTL(update_weights_every=2)
    eager.build((4, 7))
    xla.build((4, 7))
    step = compiled(lambda g, m: xla(g, task_mask=m), layers=[xla])
    for absent in [(), (1,), (0, 3), (1,), (0, 1, 2)]:
        grads = _random_grads(rng, 4, 7, common=1.0)
        mask = np.ones(4, "float32")
        mask[list(absent)] = 0.0
        grads = grads * mask[:, None]
        u1, w1 = eager(grads, task_mask=mask)
        u2, w2 = step(grads, mask)
        np.testing.assert_allclose(_np(u2), _np(u1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(w2), _np(w1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_np(xla.alpha), _np(eager.alpha), rtol=1e-5)


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# Stateful (warm start): every call is on a fresh strategy. Every shape in
# one test (every failing case reported).
def test_degenerate_inputs():
    degenerate_checks.check_cases(
        NashMTL, degenerate_inputs.degenerate_cases(), lambda case: {"rtol": 1e-4}
    )


@pytest.mark.skipif(BACKEND != "jax", reason="JAX's float64 scope")
def test_solver_program_is_float64_on_jax():
    # Some keras.ops compute in float32 on JAX whatever the input (ops.mean
    # along an axis, ops.norm, ops.cos); none may appear in the solver.
    import jax

    gramian = np.eye(4) + 0.1
    present = np.array([True, False, True, True])
    with jax.enable_x64(True):
        for solver in ("ccp", "newton"):
            for fn, args in (
                (nash_mtl.nash_mtl_alpha, (gramian, np.ones(4), solver, 20)),
                (
                    nash_mtl.present_nash_mtl_alpha,
                    (gramian, np.ones(4), present, solver, 20),
                ),
            ):
                program = str(jax.make_jaxpr(fn, static_argnums=(-2, -1))(*args))
                assert "f32" not in program and "f64" in program
