"""Tests of ConFIG."""

import functools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
from fresh_compiled import on_jax

import keras_mtl
from keras_mtl.weighting.con_fig import ConFIG

# ConFIG's pseudo-inverse cut-off (float32 eps times max(T, P)) needs the
# float64 Gramian; on JAX the weights are computed in float64 too
# (`float64_function`), with or without x64.
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


def _reference_config(grads, pref=None):
    """ConFIG_update of tum-pbs/ConFIG (grad_operator.py) in float64 numpy."""
    grads = np.asarray(grads, np.float64)
    num, width = grads.shape
    pref = np.ones(num) if pref is None else np.asarray(pref, np.float64)
    norms = np.linalg.norm(grads, axis=1, keepdims=True)
    units = np.divide(grads, norms, out=np.zeros_like(grads), where=norms > 0)
    rcond = np.finfo(np.float32).eps * max(num, width)
    direction = np.linalg.pinv(units, rcond=rcond) @ pref
    unit = direction / max(np.linalg.norm(direction), 1e-12)
    return np.sum(grads @ unit) * unit


def _cosines(grads, update):
    grads = np.asarray(grads, np.float64)
    return grads @ update / (np.linalg.norm(grads, axis=1) * np.linalg.norm(update))


def test_registry_and_config_round_trip():
    for name in ("config", "ConFIG", "con_fig", "conflict_free"):
        assert isinstance(keras_mtl.weighting.get(name), ConFIG)
    assert ConFIG.requires == "gradients" and not ConFIG.stateful
    strategy = ConFIG(pref_vector=[1.0, 3.0])
    config = strategy.get_config()
    assert config["pref_vector"] == [1.0, 3.0]
    clone = ConFIG.from_config(config)
    assert clone.get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert isinstance(restored, ConFIG) and restored.get_config() == config
    assert ConFIG().get_config()["pref_vector"] is None


def test_invalid_arguments():
    for kwargs in ({"pref_vector": "ones"}, {"pref_vector": [float("nan")]}):
        with pytest.raises(ValueError, match="pref_vector"):
            ConFIG(**kwargs)
    with pytest.raises(ValueError, match="rep_grad"):
        ConFIG(rep_grad=True)
    with pytest.raises(ValueError, match="pref_vector"):
        ConFIG(pref_vector=[1.0, 1.0]).build((3, 4))


def test_reference_values():
    # TorchJD test_values.py: ConFIG()(J_base) == [0.1588, 2.0706, 2.0706].
    update, _ = _run(ConFIG(), J_BASE)
    np.testing.assert_allclose(update, [0.1588, 2.0706, 2.0706], atol=1e-4)
    # TorchJD's ConFIG (float32, torch.linalg.pinv) on J_CONFLICT.
    update, _ = _run(ConFIG(), J_CONFLICT)
    np.testing.assert_allclose(
        update, [-0.1681053936, 0.0479830205, 0.6460760236, -0.0445566326], atol=2e-6
    )


def test_matches_pseudo_inverse_formula():
    rng = np.random.default_rng(0)
    for num, width in [(1, 3), (2, 2), (3, 7), (4, 4), (5, 3), (6, 2)]:
        grads = rng.standard_normal((num, width)).astype(np.float32)
        pref = rng.uniform(0.5, 2.0, num).tolist() if num % 2 else None
        update, weights = _run(ConFIG(pref_vector=pref), grads)
        expected = _reference_config(grads, pref)
        scale = np.linalg.norm(grads, axis=1).sum()
        np.testing.assert_allclose(update, expected, atol=1e-5 * scale)
        # The returned weights give the update as a combination of the rows.
        np.testing.assert_allclose(
            weights @ grads.astype(np.float64), update, atol=1e-5 * scale
        )


def test_equal_cosines_and_no_conflict():
    rng = np.random.default_rng(1)
    for num, width in [(2, 3), (3, 3), (4, 9), (5, 20)]:
        grads = rng.standard_normal((num, width)).astype(np.float32)
        grads *= 10.0 ** rng.uniform(-2, 2, (num, 1)).astype(np.float32)
        update, _ = _run(ConFIG(), grads)
        cosines = _cosines(grads, update)
        np.testing.assert_allclose(cosines, np.full(num, cosines[0]), rtol=1e-5)
        assert np.all(cosines > 0)
        # The length is the sum of the projections onto the direction.
        unit = update / np.linalg.norm(update)
        np.testing.assert_allclose(
            np.linalg.norm(update), np.sum(grads @ unit), rtol=1e-5
        )
    # Preference vector: cosines proportional to it.
    grads = rng.standard_normal((3, 5)).astype(np.float32)
    update, _ = _run(ConFIG(pref_vector=[1.0, 2.0, 0.5]), grads)
    cosines = _cosines(grads, update)
    np.testing.assert_allclose(cosines / cosines[0], [1.0, 2.0, 0.5], rtol=1e-5)


def test_special_cases():
    row = np.array([0.5, -1.0, 2.0], np.float32)
    # One task: its own gradient.
    np.testing.assert_allclose(_run(ConFIG(), row[None])[0], row, rtol=1e-6)
    # Identical rows: their sum.
    np.testing.assert_allclose(
        _run(ConFIG(), np.stack([row] * 3))[0], 3 * row, rtol=1e-5
    )
    # Parallel rows of different lengths: the sum too.
    grads = np.stack([row, 4 * row])
    np.testing.assert_allclose(_run(ConFIG(), grads)[0], 5 * row, rtol=1e-5)
    # Orthogonal rows: the sum of their norms times the unit diagonal.
    grads = np.array([[3.0, 0.0], [0.0, 1.0]], np.float32)
    expected = 4.0 * np.array([1.0, 1.0]) / np.sqrt(2.0) / np.sqrt(2.0)
    np.testing.assert_allclose(_run(ConFIG(), grads)[0], expected, rtol=1e-6)
    # Rescaling one gradient keeps the direction.
    update, _ = _run(ConFIG(), J_CONFLICT)
    scaled = J_CONFLICT * np.array([[1.0], [30.0], [0.1]], np.float32)
    update_s, _ = _run(ConFIG(), scaled)
    np.testing.assert_allclose(
        update_s / np.linalg.norm(update_s), update / np.linalg.norm(update), atol=1e-6
    )


def test_permutation_equivariant_and_homogeneous():
    rng = np.random.default_rng(2)
    grads = rng.standard_normal((4, 6)).astype(np.float32)
    perm = np.array([1, 3, 0, 2])
    update, weights = _run(ConFIG(), grads)
    update_p, weights_p = _run(ConFIG(), grads[perm])
    np.testing.assert_allclose(update_p, update, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights_p, weights[perm], rtol=1e-5, atol=1e-6)
    update_s, _ = _run(ConFIG(), grads * np.float32(1e3))
    np.testing.assert_allclose(update_s, 1e3 * update, rtol=1e-5, atol=1e-3)


def test_degenerate_inputs_are_finite():
    rng = np.random.default_rng(3)
    grads = rng.standard_normal((3, 4)).astype(np.float32)
    cases = {
        "zero": np.zeros((3, 4), np.float32),
        "zero_row": np.concatenate([grads[:2], np.zeros((1, 4), np.float32)]),
        "opposite": np.stack([grads[0], -grads[0]]),
        "rank_deficient": (
            rng.standard_normal((4, 2)) @ rng.standard_normal((2, 5))
        ).astype(np.float32),
        "more_tasks_than_params": rng.standard_normal((5, 2)).astype(np.float32),
        "tiny": grads * np.float32(1e-10),
        "huge": grads * np.float32(1e10),
        "mixed": grads * np.array([[1e-10], [1.0], [1e10]], np.float32),
    }
    for name, matrix in cases.items():
        update, weights = _run(ConFIG(), matrix)
        assert np.all(np.isfinite(update)) and np.all(np.isfinite(weights)), name
    assert np.all(_run(ConFIG(), cases["zero"])[0] == 0)
    # A zero gradient is ignored (its unit vector is 0, its target unmet).
    expected = _reference_config(cases["zero_row"])
    np.testing.assert_allclose(
        _run(ConFIG(), cases["zero_row"])[0], expected, atol=1e-5
    )
    # Exactly opposite gradients: no direction helps both; update ~ 0.
    assert np.linalg.norm(_run(ConFIG(), cases["opposite"])[0]) < 1e-4
    # Scaled inputs: the same directions, scaled lengths.
    base, _ = _run(ConFIG(), grads)
    for name, factor in (("tiny", 1e-10), ("huge", 1e10)):
        np.testing.assert_allclose(
            _run(ConFIG(), cases[name])[0], factor * base, rtol=1e-5, atol=1e-6 * factor
        )
    # Least-squares directions when the rows cannot all be met.
    for name in ("rank_deficient", "more_tasks_than_params"):
        expected = _reference_config(cases[name])
        scale = np.linalg.norm(cases[name], axis=1).sum()
        np.testing.assert_allclose(
            _run(ConFIG(), cases[name])[0], expected, atol=1e-5 * scale
        )


def test_eager_matches_xla():
    rng = np.random.default_rng(6)
    cases = [
        rng.standard_normal((3, 5)),
        np.zeros((3, 5)),
        rng.standard_normal((3, 2)) @ rng.standard_normal((2, 5)),
        rng.standard_normal((3, 5)) * 1e8,
    ]
    checks.assert_xla_matches_eager(
        ConFIG,
        [(_t(grads, "float32"), None) for grads in cases],
        rtol=1e-5,
        atol=checks.scaled_atol(1e-6),
    )


def test_state_round_trip_reset_and_aggregate():
    strategy = ConFIG(pref_vector=[1.0, 2.0, 3.0])
    strategy.build(J_CONFLICT.shape)
    checks.assert_state_round_trip(strategy, [J_CONFLICT])
    first = _run(strategy, J_CONFLICT)
    strategy.reset_state()
    np.testing.assert_array_equal(_run(strategy, J_CONFLICT)[0], first[0])
    update = ConFIG().aggregate(J_BASE)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), [0.1588, 2.0706, 2.0706], atol=1e-4
    )


# --- Missing tasks --------------------------------------------------------


def test_missing_tasks_all_present_mask_equals_unmasked():
    rng = np.random.default_rng(20)
    for pref in (None, [0.5, 1.0, 2.0, 1.0]):
        grads = rng.standard_normal((4, 6)).astype(np.float32)
        make = functools.partial(ConFIG, pref_vector=pref)
        checks.assert_all_ones_mask_is_no_mask(make, [grads])


@pytest.mark.parametrize("absent", [(1,), (0, 3), (0, 1, 2)])
@pytest.mark.parametrize("pref", [None, [0.5, 1.0, 2.0, 3.0]])
def test_missing_tasks_equal_config_on_present_rows(absent, pref):
    rng = np.random.default_rng(21)
    present = [t for t in range(4) if t not in absent]
    small_pref = None if pref is None else [pref[t] for t in present]
    grads, mask = checks.with_absent(rng.standard_normal((4, 5)), absent=absent)
    [((update, _), _)] = checks.assert_absent_task_is_dropped(
        ConFIG(pref_vector=pref),
        ConFIG(pref_vector=small_pref),
        mask,
        [grads],
        atol=1e-7,
    )
    np.testing.assert_allclose(
        update, _reference_config(grads[present], small_pref), atol=1e-5
    )
    # The present rows keep equal (preference-proportional) cosines.
    target = np.ones(len(present)) if small_pref is None else np.asarray(small_pref)
    cosines = _cosines(grads[present], update.astype(np.float64))
    np.testing.assert_allclose(cosines / cosines[0], target / target[0], rtol=1e-4)


def test_missing_tasks_cut_off_counts_present_rows():
    # With T = 5 > P = 3, the relative singular value 5e-7 of the present
    # rows is kept by the cut-off of K = 3 rows (3.6e-7), not by that of
    # T = 5 rows (6e-7): the masked update is the 3-row ConFIG's. The
    # preference (1, 1, 2) needs the small singular direction (e_3).
    present_rows = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1e-6]], np.float32)
    grads = np.zeros((5, 3), np.float32)
    grads[[0, 2, 4]] = present_rows
    mask = np.array([1, 0, 1, 0, 1], "float32")
    pref = [1.0, 9.0, 1.0, 9.0, 2.0]
    update, _ = ConFIG(pref_vector=pref)(grads, task_mask=mask)
    ref_update, _ = ConFIG(pref_vector=[1.0, 1.0, 2.0])(present_rows)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update),
        keras.ops.convert_to_numpy(ref_update),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update),
        _reference_config(present_rows, [1.0, 1.0, 2.0]),
        rtol=1e-4,
        atol=1e-10,
    )
    assert abs(keras.ops.convert_to_numpy(update)[2]) > 0.5 * np.linalg.norm(
        keras.ops.convert_to_numpy(update)
    )
    # The zero rows left in, unmasked, change the cut-off and the answer.
    unmasked, _ = ConFIG(pref_vector=[1.0, 0.0, 1.0, 0.0, 2.0])(grads)
    assert abs(keras.ops.convert_to_numpy(unmasked)[2]) < 1e-3 * np.linalg.norm(
        keras.ops.convert_to_numpy(unmasked)
    )


def test_missing_tasks_finite_and_stateless():
    rng = np.random.default_rng(22)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    strategy = ConFIG()
    checks.assert_masked_outputs_finite(
        strategy,
        [
            (g * np.array([[1e10], [1.0], [1e-10]], "float32"), [1.0, 0.0, 1.0]),
            (np.zeros((3, 4), "float32"), [0.0, 0.0, 0.0]),
            (np.stack([g[0], -g[0], g[1]]), [1.0, 1.0, 0.0]),
        ],
    )
    # One present task: its gradient.
    update, _ = strategy(g * [[0.0], [1.0], [0.0]], task_mask=[0.0, 1.0, 0.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(update), g[1], rtol=1e-5)
    assert strategy.per_task_state() == []


def test_missing_tasks_eager_matches_xla():
    rng = np.random.default_rng(23)
    cases = [
        checks.with_absent(rng.standard_normal((4, 5)), absent=absent)
        for absent in [(0,), (2,), (1, 3)]
    ]
    checks.assert_xla_matches_eager(ConFIG, cases, rtol=1e-5, atol=1e-6)


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# Where the exact update is 0 (opposed rows) it is rounding noise, whose
# direction depends on the task order (see the class Note).
@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    degenerate_checks.check_cases(
        on_jax(ConFIG),
        degenerate_inputs.degenerate_cases(shapes=[shape]),
        lambda case: {
            "permutation": case.kind not in ("opposed", "rank_one_signed"),
            "homogeneous": True,
        },
    )
