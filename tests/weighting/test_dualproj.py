"""Tests of DualProj."""

import functools
import itertools

import degenerate_inputs
import dual_cone_checks
import keras
import missing_task_checks as checks
import numpy as np
import pytest

import keras_mtl
from keras_mtl.weighting.dualproj import DualProj
from keras_mtl.weighting.upgrad import UPGrad

pytestmark = pytest.mark.both_backends


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


# TorchJD's golden input (tests/unit/aggregation/test_values.py).
J_BASE = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], np.float32)
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
    """min_v v^T M v s.t. v >= u by enumerating active sets (float64)."""
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
            if np.all(v >= u - 1e-12) and np.all((matrix @ v)[active] >= -1e-12):
                best = v
    assert best is not None
    return best


def _reference_dualproj_weights(grads, pref=None, norm_eps=1e-4, reg_eps=1e-4):
    """DualProj weights following TorchJD's `_dualproj.py`, exact QP."""
    grads = np.asarray(grads, np.float32)
    num = grads.shape[0]
    gramian = (grads.astype(np.float64) @ grads.T.astype(np.float64)).astype(np.float32)
    trace = np.trace(gramian.astype(np.float64))
    normalized = np.zeros_like(gramian) if trace < norm_eps else gramian / trace
    matrix = normalized.astype(np.float64) + reg_eps * np.eye(num)
    pref = np.full(num, 1.0 / num) if pref is None else np.asarray(pref, float)
    return _qp_exhaustive(matrix, pref)


def test_registry_and_config_round_trip():
    for name in ("dualproj", "DualProj", "dual_proj"):
        assert isinstance(keras_mtl.weighting.get(name), DualProj)
    assert DualProj.requires == "gramian" and not DualProj.stateful
    strategy = DualProj(pref_vector=[2.0, 1.0], norm_eps=0.0, reg_eps=1e-6)
    config = strategy.get_config()
    assert config["pref_vector"] == [2.0, 1.0]
    assert config["norm_eps"] == 0.0 and config["reg_eps"] == 1e-6
    clone = DualProj.from_config(config)
    assert clone.get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert isinstance(restored, DualProj) and restored.get_config() == config


def test_invalid_arguments():
    for kwargs, match in [
        ({"norm_eps": -1e-3}, "norm_eps"),
        ({"reg_eps": -1.0}, "reg_eps"),
        ({"pref_vector": 3.0}, "pref_vector"),
        ({"pref_vector": [1.0, float("inf")]}, "pref_vector"),
        ({"rep_grad": True}, "rep_grad"),
    ]:
        with pytest.raises(ValueError, match=match):
            DualProj(**kwargs)
    with pytest.raises(ValueError, match="pref_vector"):
        DualProj(pref_vector=[1.0]).build((2, 3))


def test_reference_values():
    # TorchJD test_values.py: DualProj()(J_base) == [0.5563, 1.1109, 1.1109].
    update, weights = _run(DualProj(), J_BASE)
    np.testing.assert_allclose(update, [0.5563, 1.1109, 1.1109], atol=1e-4)
    # TorchJD's pipeline (float32 Gramian, quadprog) run on J_CONFLICT.
    update, weights = _run(DualProj(), J_CONFLICT)
    np.testing.assert_allclose(
        weights, [0.3333333333, 0.3698540974, 0.3333333333], rtol=1e-6
    )
    np.testing.assert_allclose(
        update, [0.1041167187, 0.0698541053, 0.2666666706, 0.044289566], atol=1e-6
    )


def test_matches_exhaustive_active_set_qp():
    for seed in range(8):
        rng = np.random.default_rng(seed)
        num = 1 + seed % 4
        grads = rng.standard_normal((num, 1 + seed)).astype(np.float32)
        pref = None if seed % 2 else rng.uniform(0.1, 2.0, num).tolist()
        _, weights = _run(DualProj(pref_vector=pref), grads)
        expected = _reference_dualproj_weights(grads, pref)
        np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-7)


def test_update_conflicts_with_no_task_and_weights_exceed_preference():
    for seed, (num, width) in enumerate([(2, 3), (3, 2), (4, 10), (5, 3)]):
        rng = np.random.default_rng(200 + seed)
        grads = rng.standard_normal((num, width)).astype(np.float32)
        gram = grads.astype(np.float64) @ grads.T.astype(np.float64)
        update, weights = _run(DualProj(), grads)
        products = grads.astype(np.float64) @ update
        slack = 1e-4 * np.trace(gram) * weights + 1e-5 * np.abs(gram) @ weights
        assert np.all(products >= -slack)
        assert np.all(weights >= 1.0 / num - 1e-7)
        update, weights = _run(DualProj(reg_eps=0.0), grads)
        products = grads.astype(np.float64) @ update
        assert np.all(products >= -1e-5 * np.abs(gram) @ np.abs(weights))


def test_mean_in_the_dual_cone_is_unchanged():
    # g_1 . g_2 < 0, but the mean (0.4, 0.5) has a positive product with both:
    # DualProj returns it unchanged while UPGrad does not.
    grads = np.array([[1.0, 0.0], [-0.2, 1.0]], np.float32)
    update, weights = _run(DualProj(), grads)
    np.testing.assert_allclose(weights, [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(update, [0.4, 0.5], rtol=1e-6)
    assert not np.allclose(_run(UPGrad(), grads)[1], [0.5, 0.5], rtol=1e-3)
    # Non-conflicting rows, with a preference vector: kept as is.
    rng = np.random.default_rng(4)
    grads = rng.uniform(0.1, 1.0, (3, 5)).astype(np.float32)
    update, weights = _run(DualProj(pref_vector=[1.0, 0.5, 2.0]), grads)
    np.testing.assert_allclose(weights, [1.0, 0.5, 2.0], rtol=1e-6)
    # Identical rows: the mean.
    row = np.array([1.0, -2.0, 0.5], np.float32)
    np.testing.assert_allclose(_run(DualProj(), np.stack([row] * 4))[0], row, rtol=1e-6)


def test_projection_of_a_conflicting_mean():
    # g_1 = (1, 0), g_2 = (-1, 0.1): the mean (0, 0.05) conflicts with
    # neither, but with g_2 = (-2, 0.1) the mean (-0.5, 0.05) conflicts with
    # g_1; its projection onto {d : d_1 >= 0, -2 d_1 + 0.1 d_2 >= 0} is
    # (0, 0.05) (reg_eps = 0, exact projection).
    grads = np.array([[1.0, 0.0], [-2.0, 0.1]], np.float32)
    update, _ = _run(DualProj(reg_eps=0.0), grads)
    np.testing.assert_allclose(update, [0.0, 0.05], atol=1e-6)


def test_linear_in_preference_and_permutation_equivariant():
    update, _ = _run(DualProj(), J_CONFLICT)
    update_sum, _ = _run(DualProj(pref_vector=[1.0, 1.0, 1.0]), J_CONFLICT)
    np.testing.assert_allclose(update_sum, 3 * update, rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(12)
    grads = rng.standard_normal((4, 3)).astype(np.float32)
    perm = np.array([3, 1, 0, 2])
    update, weights = _run(DualProj(), grads)
    update_p, weights_p = _run(DualProj(), grads[perm])
    np.testing.assert_allclose(update_p, update, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights_p, weights[perm], rtol=1e-5, atol=1e-6)


def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(3)
    grads = rng.standard_normal((3, 4)).astype(np.float32)
    cases = {
        "zero": np.zeros((3, 4), np.float32),
        "zero_row": np.concatenate([grads[:2], np.zeros((1, 4), np.float32)]),
        "opposite": np.stack([grads[0], -grads[0]]),
        "rank_deficient": (
            rng.standard_normal((4, 1)) @ rng.standard_normal((1, 6))
        ).astype(np.float32),
        "tiny": grads * np.float32(1e-10),
        "huge": grads * np.float32(1e10),
        "mixed": grads * np.array([[1e-10], [1.0], [1e10]], np.float32),
        "one_task": grads[:1],
    }
    for name, matrix in cases.items():
        for kwargs in ({}, {"reg_eps": 0.0}):
            update, weights = _run(DualProj(**kwargs), matrix)
            assert np.all(np.isfinite(update)) and np.all(np.isfinite(weights)), name
    for name in ("zero", "tiny"):
        update, weights = _run(DualProj(), cases[name])
        np.testing.assert_allclose(weights, np.full(3, 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(
        _run(DualProj(), cases["huge"])[1], _run(DualProj(), grads)[1], rtol=1e-5
    )
    np.testing.assert_allclose(_run(DualProj(), grads[:1])[0], grads[0], rtol=1e-6)


def test_eager_matches_xla():
    rng = np.random.default_rng(8)
    cases = [
        rng.standard_normal((3, 5)),
        np.zeros((3, 5)),
        rng.standard_normal((3, 1)) @ rng.standard_normal((1, 5)),
        rng.standard_normal((3, 5)) * 1e-7,
    ]
    checks.assert_xla_matches_eager(
        DualProj,
        [(_t(grads, "float32"), None) for grads in cases],
        rtol=1e-5,
        atol=(checks.scaled_atol(1e-6), 1e-7),
    )


def test_state_round_trip_reset_and_aggregate():
    strategy = DualProj()
    strategy.build(J_CONFLICT.shape)
    checks.assert_state_round_trip(strategy, [J_CONFLICT])
    first = _run(strategy, J_CONFLICT)
    strategy.reset_state()
    np.testing.assert_array_equal(_run(strategy, J_CONFLICT)[0], first[0])
    update = DualProj().aggregate(J_BASE)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), [0.5563, 1.1109, 1.1109], atol=1e-4
    )


# --- Missing tasks --------------------------------------------------------


def _conflicting(rng, num=5, dim=4):
    return (rng.standard_normal((num, dim)) * rng.uniform(0.2, 4.0, (num, 1))).astype(
        "float32"
    )


def test_missing_tasks_all_present_mask_equals_unmasked():
    rng = np.random.default_rng(20)
    for pref in (None, [0.5, 1.0, 2.0, 1.0, 0.3]):
        make = functools.partial(DualProj, pref_vector=pref)
        checks.assert_all_ones_mask_is_no_mask(make, [_conflicting(rng)])


@pytest.mark.parametrize("absent", [(1,), (0, 3), (0, 1, 2, 4)])
@pytest.mark.parametrize("pref", [None, [0.5, 1.0, 2.0, 1.0, 0.3]])
def test_missing_tasks_equal_dualproj_on_present_rows(absent, pref):
    rng = np.random.default_rng(21)
    present = [t for t in range(5) if t not in absent]
    small_pref = None if pref is None else [pref[t] for t in present]
    for _ in range(2):
        grads, mask = checks.with_absent(_conflicting(rng), absent=absent)
        [((_, weights), _)] = checks.assert_absent_task_is_dropped(
            DualProj(pref_vector=pref),
            DualProj(pref_vector=small_pref),
            mask,
            [grads],
            atol=(1e-7, 1e-9),
        )
        # Against the exhaustive QP on the present rows alone.
        np.testing.assert_allclose(
            weights[present],
            _reference_dualproj_weights(grads[present], small_pref),
            rtol=1e-5,
            atol=1e-7,
        )


def test_missing_tasks_compute_weights_drops_nonzero_rows():
    # The representation-gradient path calls compute_weights directly; the
    # absent rows and columns are dropped even when they are not zero.
    rng = np.random.default_rng(22)
    grads = _conflicting(rng, 4, 3).astype("float64")
    mask = np.array([1.0, 0.0, 1.0, 1.0], "float32")
    strategy = DualProj()
    weights = strategy.compute_weights(
        _t(grads @ grads.T, "float32"), task_mask=_t(mask)
    )
    weights = keras.ops.convert_to_numpy(weights)
    present = [0, 2, 3]
    ref = DualProj().compute_weights(_t(grads[present] @ grads[present].T, "float32"))
    np.testing.assert_allclose(
        weights[present], keras.ops.convert_to_numpy(ref), rtol=1e-6
    )
    assert weights[1] == 0.0


def test_missing_tasks_finite_and_stateless():
    rng = np.random.default_rng(23)
    g = _conflicting(rng, 3, 4)
    strategy = DualProj()
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
    checks.assert_xla_matches_eager(DualProj, cases, rtol=1e-5, atol=(1e-6, 1e-7))


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    dual_cone_checks.check_degenerate_inputs(DualProj, shape)


@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs_relative_eps(shape):
    dual_cone_checks.check_degenerate_inputs_relative_eps(DualProj, shape)


def test_eps_mode_is_validated_and_round_trips():
    dual_cone_checks.check_eps_mode_is_validated_and_round_trips(DualProj)


def test_relative_eps_keeps_small_gradients_non_conflicting():
    dual_cone_checks.check_relative_eps_keeps_small_gradients_non_conflicting(DualProj)
