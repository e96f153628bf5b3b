"""Tests of UPGrad and of the shared dual-cone QP solver."""

import functools
import itertools

import degenerate_inputs
import dual_cone_checks
import keras
import missing_task_checks as checks
import numpy as np
import pytest

import keras_mtl
from keras_mtl.weighting._dual_cone_ops import (
    normalize_and_regularize,
    project_weights,
)
from keras_mtl.weighting._solver_ops import solver_dtype
from keras_mtl.weighting.upgrad import UPGrad

pytestmark = pytest.mark.both_backends


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


# TorchJD's golden input (tests/unit/aggregation/test_values.py, docs).
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)
# Three conflicting tasks (g_1.g_2 < 0, g_2.g_3 < 0).
J_CONFLICT = np.array(
    [[1.0, 0.0, 0.5, 0.2], [-0.8, 1.0, 0.0, 0.3], [0.2, -0.9, 0.3, -0.4]],
    np.float32,
)


def _run(strategy, grads):
    update, weights = strategy(_t(grads, "float32"))
    return keras.ops.convert_to_numpy(update).astype(
        np.float64
    ), keras.ops.convert_to_numpy(weights).astype(np.float64)


def _qp_exhaustive(matrix, u):
    """min_v v^T M v s.t. v >= u, by enumerating active sets (float64).

    For each set S of constraints held at their bound, the free part solves
    M[F, F] v_F = -M[F, S] u_S; the KKT point (v >= u, M v >= 0 on S) is the
    unique minimiser for a positive definite M.
    """
    num = len(u)
    best = None
    for size in range(num + 1):
        for active in itertools.combinations(range(num), size):
            active = list(active)
            free = [i for i in range(num) if i not in active]
            v = u.astype(np.float64).copy()
            if free:
                rhs = -matrix[np.ix_(free, active)] @ u[active]
                v[free] = np.linalg.solve(matrix[np.ix_(free, free)], rhs)
            mult = matrix @ v
            if np.all(v >= u - 1e-12) and np.all(mult[active] >= -1e-12):
                best = v
    assert best is not None
    return best


def _reference_upgrad_weights(grads, pref=None, norm_eps=1e-4, reg_eps=1e-4):
    """UPGrad weights following TorchJD's `_upgrad.py` with an exact QP."""
    grads = np.asarray(grads, np.float32)
    num = grads.shape[0]
    gramian = (grads.astype(np.float64) @ grads.T.astype(np.float64)).astype(np.float32)
    trace = np.trace(gramian.astype(np.float64))
    normalized = np.zeros_like(gramian) if trace < norm_eps else gramian / trace
    matrix = normalized.astype(np.float64) + reg_eps * np.eye(num)
    pref = np.full(num, 1.0 / num) if pref is None else np.asarray(pref, float)
    return sum(_qp_exhaustive(matrix, pref[i] * np.eye(num)[i]) for i in range(num))


def test_registry_and_aliases():
    for name in ("upgrad", "UPGrad", "up_grad"):
        assert isinstance(keras_mtl.weighting.get(name), UPGrad)
    assert UPGrad.registry_name == "upgrad"
    assert UPGrad.requires == "gramian"
    assert not UPGrad.stateful
    strategy = UPGrad(pref_vector=[1.0, 2.0], norm_eps=1e-3, reg_eps=1e-5, name="up")
    config = strategy.get_config()
    assert config["pref_vector"] == [1.0, 2.0]
    assert config["norm_eps"] == 1e-3 and config["reg_eps"] == 1e-5
    clone = UPGrad.from_config(config)
    assert clone.get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert isinstance(restored, UPGrad)
    assert restored.get_config() == config
    np.testing.assert_allclose(_run(clone, J_BASE)[0], _run(strategy, J_BASE)[0])


def test_invalid_arguments():
    for kwargs, match in [
        ({"norm_eps": -1.0}, "norm_eps"),
        ({"reg_eps": float("nan")}, "reg_eps"),
        ({"reg_eps": float("inf")}, "reg_eps"),
        ({"pref_vector": "mean"}, "pref_vector"),
        ({"pref_vector": []}, "pref_vector"),
        ({"pref_vector": [1.0, float("nan")]}, "pref_vector"),
        ({"rep_grad": True}, "rep_grad"),
    ]:
        with pytest.raises(ValueError, match=match):
            UPGrad(**kwargs)
    with pytest.raises(ValueError, match="pref_vector"):
        UPGrad(pref_vector=[1.0, 1.0, 1.0]).build((2, 5))


def test_reference_values():
    # TorchJD test_values.py: UPGrad()(J_base) == [0.2929, 1.9004, 1.9004],
    # UPGradWeighting()(J_base @ J_base.T) == [1.1109, 0.7894].
    update, weights = _run(UPGrad(), J_BASE)
    np.testing.assert_allclose(update, [0.2929, 1.9004, 1.9004], atol=1e-4)
    np.testing.assert_allclose(weights, [1.1109, 0.7894], atol=1e-4)
    # TorchJD's pipeline (float32 Gramian, quadprog) run on J_CONFLICT.
    update, weights = _run(UPGrad(), J_CONFLICT)
    np.testing.assert_allclose(
        weights, [0.5362923327, 0.9178503167, 0.9251150503], rtol=1e-6
    )
    np.testing.assert_allclose(
        update, [-0.0129649187, 0.0852467935, 0.5456806925, 0.0125675484], atol=1e-6
    )


def test_matches_exhaustive_active_set_qp():
    for seed in range(8):
        rng = np.random.default_rng(seed)
        num = 1 + seed % 4
        grads = rng.standard_normal((num, 2 + seed)).astype(np.float32)
        pref = None if seed % 2 else rng.uniform(0.1, 2.0, num).tolist()
        _, weights = _run(UPGrad(pref_vector=pref), grads)
        expected = _reference_upgrad_weights(grads, pref)
        np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(
    solver_dtype() != "float64", reason="checks the float64 solver to 1e-8"
)
def test_solver_exact_on_larger_problems_and_feasible_when_stopped():
    rng = np.random.default_rng(7)
    for num, width in [(6, 3), (7, 20), (8, 5)]:
        grads = rng.standard_normal((num, width))
        gram = grads @ grads.T
        matrix = gram / np.trace(gram) + 1e-4 * np.eye(num)
        lower = np.diag(rng.uniform(0.05, 1.0, num))
        got = keras.ops.convert_to_numpy(project_weights(_t(lower), _t(matrix)))
        for row, bound in zip(got, lower):
            np.testing.assert_allclose(
                row, _qp_exhaustive(matrix, bound), rtol=1e-8, atol=1e-12
            )
    grads = rng.standard_normal((8, 3))
    matrix = grads @ grads.T / np.trace(grads @ grads.T) + 1e-4 * np.eye(8)
    lower = np.eye(8) / 8
    for budget in (1, 3, 5):
        got = project_weights(_t(lower), _t(matrix), budget)
        assert np.all(keras.ops.convert_to_numpy(got) >= lower - 1e-15)


def test_normalize_and_regularize_follows_torchjd():
    gram = _t([[4.0, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalize_and_regularize(gram, 1e-4, 0.5)),
        [[4 / 6 + 0.5, 1 / 6], [1 / 6, 2 / 6 + 0.5]],
        rtol=1e-6,
    )
    tiny = _t([[4e-5, 1e-5], [1e-5, 2e-5]])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(normalize_and_regularize(tiny, 1e-4, 0.5)),
        0.5 * np.eye(2),
    )


def test_update_conflicts_with_no_task():
    for seed, (num, width) in enumerate([(2, 3), (3, 2), (4, 10), (5, 3), (6, 6)]):
        rng = np.random.default_rng(100 + seed)
        grads = rng.standard_normal((num, width)).astype(np.float32)
        gram = grads.astype(np.float64) @ grads.T.astype(np.float64)
        # With the default regularisation, KKT gives A w >= -reg_eps tr(A) w.
        update, weights = _run(UPGrad(), grads)
        products = grads.astype(np.float64) @ update
        slack = 1e-4 * np.trace(gram) * weights
        assert np.all(products >= -slack - 1e-5 * np.abs(gram) @ np.abs(weights))
        # Without it the update is in the dual cone (up to rounding).
        update, weights = _run(UPGrad(reg_eps=0.0), grads)
        products = grads.astype(np.float64) @ update
        assert np.all(products >= -1e-5 * np.abs(gram) @ np.abs(weights))
        assert np.all(weights >= 1.0 / num - 1e-7)


def test_equals_mean_without_conflict():
    rng = np.random.default_rng(5)
    grads = rng.uniform(0.1, 1.0, (4, 6)).astype(np.float32)  # all dots > 0
    update, weights = _run(UPGrad(), grads)
    np.testing.assert_allclose(weights, np.full(4, 0.25), rtol=1e-6)
    np.testing.assert_allclose(update, grads.mean(axis=0), rtol=1e-6)
    # A preference vector is then applied as is.
    update, weights = _run(UPGrad(pref_vector=[1.0, 2.0, 0.5, 1.0]), grads)
    np.testing.assert_allclose(weights, [1.0, 2.0, 0.5, 1.0], rtol=1e-6)
    # Identical rows: the mean, i.e. the row itself.
    row = np.array([0.3, -1.2, 2.0], np.float32)
    update, weights = _run(UPGrad(), np.stack([row] * 3))
    np.testing.assert_allclose(weights, np.full(3, 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(update, row, rtol=1e-6)


def test_linear_in_preference_and_permutation_equivariant():
    update, _ = _run(UPGrad(), J_CONFLICT)
    update_sum, _ = _run(UPGrad(pref_vector=[1.0, 1.0, 1.0]), J_CONFLICT)
    np.testing.assert_allclose(update_sum, 3 * update, rtol=1e-6, atol=1e-7)
    # Permuting the tasks permutes the weights.
    rng = np.random.default_rng(11)
    grads = rng.standard_normal((4, 5)).astype(np.float32)
    perm = np.array([2, 0, 3, 1])
    update, weights = _run(UPGrad(), grads)
    update_p, weights_p = _run(UPGrad(), grads[perm])
    np.testing.assert_allclose(update_p, update, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights_p, weights[perm], rtol=1e-5, atol=1e-6)


def test_positively_homogeneous():
    update, weights = _run(UPGrad(), J_CONFLICT)
    for factor in (1e-2, 1e3):
        update_s, weights_s = _run(UPGrad(), J_CONFLICT * np.float32(factor))
        np.testing.assert_allclose(weights_s, weights, rtol=1e-5)
        np.testing.assert_allclose(
            update_s, factor * update, rtol=1e-5, atol=1e-6 * factor
        )


def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(2)
    grads = rng.standard_normal((3, 4)).astype(np.float32)
    low_rank = (rng.standard_normal((4, 2)) @ rng.standard_normal((2, 5))).astype(
        np.float32
    )
    cases = {
        "zero": np.zeros((3, 4), np.float32),
        "zero_row": np.concatenate([grads[:2], np.zeros((1, 4), np.float32)]),
        "opposite": np.stack([grads[0], -grads[0]]),
        "rank_deficient": low_rank,
        "tiny": grads * np.float32(1e-10),
        "huge": grads * np.float32(1e10),
        "mixed": grads * np.array([[1e-10], [1.0], [1e10]], np.float32),
        "one_task": grads[:1],
    }
    for name, matrix in cases.items():
        for kwargs in ({}, {"reg_eps": 0.0}):
            update, weights = _run(UPGrad(**kwargs), matrix)
            assert np.all(np.isfinite(update)), name
            assert np.all(np.isfinite(weights)) and np.all(weights >= 0), name
    # Below norm_eps the Gramian is dropped: the plain mean is returned.
    for name in ("zero", "tiny"):
        update, weights = _run(UPGrad(), cases[name])
        np.testing.assert_allclose(weights, np.full(3, 1 / 3), rtol=1e-6)
        np.testing.assert_allclose(update, cases[name].mean(0), rtol=1e-5)
    # Huge rows: same weights as the unscaled ones.
    np.testing.assert_allclose(
        _run(UPGrad(), cases["huge"])[1], _run(UPGrad(), grads)[1], rtol=1e-5
    )
    # One task: its own gradient (mean of one row).
    np.testing.assert_allclose(_run(UPGrad(), grads[:1])[0], grads[0], rtol=1e-6)


def test_eager_matches_xla():
    rng = np.random.default_rng(9)
    cases = [
        rng.standard_normal((4, 6)),
        np.zeros((4, 6)),
        rng.standard_normal((4, 1)) @ rng.standard_normal((1, 6)),
        rng.standard_normal((4, 6)) * 1e8,
    ]
    checks.assert_xla_matches_eager(
        UPGrad,
        [(_t(grads, "float32"), None) for grads in cases],
        rtol=1e-5,
        atol=(checks.scaled_atol(1e-6), 1e-7),
    )


def test_state_round_trip_reset_and_aggregate():
    strategy = UPGrad(pref_vector=[0.2, 0.3, 0.5])
    strategy.build(J_CONFLICT.shape)
    assert strategy.get_weights() == []
    checks.assert_state_round_trip(strategy, [J_CONFLICT])
    first = _run(strategy, J_CONFLICT)
    strategy.reset_state()
    np.testing.assert_array_equal(_run(strategy, J_CONFLICT)[0], first[0])
    # Standalone, eager use.
    update = UPGrad().aggregate(J_BASE)
    assert tuple(update.shape) == (3,)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), [0.2929, 1.9004, 1.9004], atol=1e-4
    )


# --- Missing tasks --------------------------------------------------------


def _conflicting(rng, num=5, dim=4):
    return (rng.standard_normal((num, dim)) * rng.uniform(0.2, 4.0, (num, 1))).astype(
        "float32"
    )


def test_missing_tasks_all_present_mask_equals_unmasked():
    rng = np.random.default_rng(20)
    for pref in (None, [0.5, 1.0, 2.0, 1.0, 0.3]):
        make = functools.partial(UPGrad, pref_vector=pref)
        checks.assert_all_ones_mask_is_no_mask(make, [_conflicting(rng)])


@pytest.mark.parametrize("absent", [(1,), (0, 3), (0, 1, 2, 4)])
@pytest.mark.parametrize("pref", [None, [0.5, 1.0, 2.0, 1.0, 0.3]])
def test_missing_tasks_equal_upgrad_on_present_rows(absent, pref):
    rng = np.random.default_rng(21)
    present = [t for t in range(5) if t not in absent]
    small_pref = None if pref is None else [pref[t] for t in present]
    for _ in range(2):
        grads, mask = checks.with_absent(_conflicting(rng), absent=absent)
        [((_, weights), _)] = checks.assert_absent_task_is_dropped(
            UPGrad(pref_vector=pref),
            UPGrad(pref_vector=small_pref),
            mask,
            [grads],
            atol=(1e-7, 1e-9),
        )
        # Against the exhaustive QP on the present rows alone.
        np.testing.assert_allclose(
            weights[present],
            _reference_upgrad_weights(grads[present], small_pref),
            rtol=1e-5,
            atol=1e-7,
        )


def test_missing_tasks_compute_weights_drops_nonzero_rows():
    # The representation-gradient path calls compute_weights directly; the
    # absent rows and columns are dropped even when they are not zero.
    rng = np.random.default_rng(22)
    grads = _conflicting(rng, 4, 3).astype("float64")
    mask = np.array([1.0, 0.0, 1.0, 1.0], "float32")
    strategy = UPGrad()
    weights = strategy.compute_weights(
        _t(grads @ grads.T, "float32"), task_mask=_t(mask)
    )
    weights = keras.ops.convert_to_numpy(weights)
    present = [0, 2, 3]
    ref = UPGrad().compute_weights(_t(grads[present] @ grads[present].T, "float32"))
    np.testing.assert_allclose(
        weights[present], keras.ops.convert_to_numpy(ref), rtol=1e-6
    )
    assert weights[1] == 0.0


def test_missing_tasks_finite_and_stateless():
    rng = np.random.default_rng(23)
    g = _conflicting(rng, 3, 4)
    strategy = UPGrad()
    checks.assert_masked_outputs_finite(
        strategy,
        [
            (g * np.array([[1e10], [1.0], [1e-10]], "float32"), [1.0, 0.0, 1.0]),
            (np.zeros((3, 4), "float32"), [0.0, 0.0, 0.0]),
            (g * 1e-10, [1.0, 1.0, 0.0]),
        ],
    )
    # One present task: the mean of one row is that row.
    update, weights = strategy(g * [[0.0], [0.0], [1.0]], task_mask=[0.0, 0.0, 1.0])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(weights), [0.0, 0.0, 1.0], rtol=1e-6
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(update), g[2], rtol=1e-6)
    assert strategy.per_task_state() == []


def test_missing_tasks_eager_matches_xla():
    rng = np.random.default_rng(24)
    cases = [
        checks.with_absent(_conflicting(rng, 4, 6), absent=absent)
        for absent in [(0,), (2,), (1, 3)]
    ]
    checks.assert_xla_matches_eager(UPGrad, cases, rtol=1e-5, atol=(1e-6, 1e-7))


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    dual_cone_checks.check_degenerate_inputs(UPGrad, shape)


@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs_relative_eps(shape):
    dual_cone_checks.check_degenerate_inputs_relative_eps(UPGrad, shape)


def test_eps_mode_is_validated_and_round_trips():
    dual_cone_checks.check_eps_mode_is_validated_and_round_trips(UPGrad)


def test_relative_eps_keeps_small_gradients_non_conflicting():
    dual_cone_checks.check_relative_eps_keeps_small_gradients_non_conflicting(UPGrad)
