"""Tests of `SDMGrad` (Xiao, Ban, Ji; NeurIPS 2023): the inner loop, its
batch roles, its state, the paper's bounds and the degenerate input family.
The model-level step (three sub-batches per batch, heads with the sum of
their sub-batch gradients) is in `tests/models/test_multi_batch_path.py`."""

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import numpy as np
import pytest
from backends import compiled
from fresh_compiled import FreshCompiled

import keras_mtl
from keras_mtl.weighting.sdmgrad import SDMGrad

pytestmark = pytest.mark.both_backends

A1 = [[1.0, 0.8, 0.6], [0.7, 1.2, 0.5], [0.6, 0.4, 0.9]]
A2 = [[2.0, -0.5, 0.3], [-0.4, 1.0, 0.2], [0.3, 0.1, 0.5]]


def _t(value, dtype="float32"):
    return keras.ops.convert_to_tensor(np.asarray(value, dtype))


def _numpy(value):
    return keras.ops.convert_to_numpy(value)


def _weights(strategy, matrices, dtype="float32"):
    return np.asarray(
        [_numpy(strategy.compute_weights(_t(m, dtype))) for m in matrices]
    )


def test_registry_name_resolves():
    assert isinstance(keras_mtl.weighting.get("sdmgrad"), SDMGrad)
    assert SDMGrad.batches_per_step == 3


def test_reference_value_and_stored_iterate():
    """methods-new.md, SDMGrad test 4: A = [[1, 1], [2, 3]] with the
    defaults gives omega = [0.884615, 0.115385] and stores w = [1, 0]."""
    strategy = SDMGrad()
    got = _weights(strategy, [[[1.0, 1.0], [2.0, 3.0]]])[0]
    np.testing.assert_allclose(got, [0.884615, 0.115385], atol=1e-6)
    np.testing.assert_allclose(_numpy(strategy.task_weights), [1.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torchjd_reference_sequences(dtype):
    """TorchJD 0.18.0 `SDMGradWeighting`, three warm-started calls (float64
    values rounded to 1e-8): its defaults, LibMTL's lr = 5, a slow inner
    loop with an interior solution, and a preference vector."""
    cases = [
        (
            {},
            [
                [0.11760808, 0.80546885, 0.07692308],
                [0.07692308, 0.84615385, 0.07692308],
                [0.07692308, 0.07692308, 0.84615385],
            ],
        ),
        (
            {"lr": 5.0},
            [
                [0.1631498, 0.26493997, 0.57191023],
                [0.07692308, 0.07692308, 0.84615385],
                [0.16290682, 0.26364091, 0.57345227],
            ],
        ),
        (
            {"lr": 0.5, "n_iter": 30, "momentum": 0.3, "lambda_": 0.1},
            [
                [0.16337248, 0.26526912, 0.57135839],
                [0.16981014, 0.30660193, 0.52358793],
                [0.16326325, 0.26530683, 0.57142992],
            ],
        ),
        (
            {"lambda_": 0.5, "pref_vector": [0.6, 0.3, 0.1]},
            [[0.2, 0.1, 0.7], [0.2, 0.76666667, 0.03333333], [0.2, 0.1, 0.7]],
        ),
    ]
    for kwargs, want in cases:
        got = _weights(SDMGrad(dtype=dtype, **kwargs), [A1, A2, A1], dtype)
        # JAX without x64 computes a float64 request in float32.
        atol = 1e-8 if got.dtype == "float64" else 2e-6
        np.testing.assert_allclose(got, want, atol=atol, err_msg=str(kwargs))


def test_weights_sum_to_one_and_respect_the_preference_floor():
    """methods-new.md test 1: sum omega = 1 and omega_t >= lambda / (T (1 +
    lambda)) (0.0769 for T = 3, lambda = 0.3), on matrices of any sign."""
    rng = np.random.default_rng(0)
    for lambda_ in (0.0, 0.3, 2.0):
        strategy = SDMGrad(lambda_=lambda_)
        for _ in range(4):
            weights = _weights(strategy, [rng.normal(size=(3, 3)) * 5.0])[0]
            np.testing.assert_allclose(np.sum(weights), 1.0, atol=1e-6)
            assert np.all(weights >= lambda_ / (3 * (1 + lambda_)) - 1e-7), weights


def test_the_pull_towards_the_preference():
    """methods-new.md test 2: a huge lambda gives the preference vector;
    lambda = 0 gives the stored projected iterate itself."""
    got = _weights(SDMGrad(lambda_=1e9), [A2])[0]
    np.testing.assert_allclose(got, np.full(3, 1 / 3), atol=1e-6)
    strategy = SDMGrad(lambda_=0.0)
    got = _weights(strategy, [A2])[0]
    np.testing.assert_allclose(got, _numpy(strategy.task_weights), atol=1e-7)
    preference = [0.5, 0.25, 0.25]
    got = _weights(SDMGrad(lambda_=1e9, pref_vector=preference), [A2])[0]
    np.testing.assert_allclose(got, preference, atol=1e-6)


def test_a_common_scale_of_the_matrix_changes_nothing():
    """methods-new.md test 3: A and c A (c > 0) give the same weights, up to
    the 1e-8 of the normalisation."""
    for c in (2.0**-8, 2.0**8):
        base = _weights(SDMGrad(lr=0.5, n_iter=30), [A1, A2])
        scaled = _weights(
            SDMGrad(lr=0.5, n_iter=30), [np.multiply(A1, c), np.multiply(A2, c)]
        )
        np.testing.assert_allclose(scaled, base, atol=1e-5)


def test_the_three_batches_play_their_roles():
    """omega from A = J^(xi) J^(xi')^T (the second and third batches), the
    update omega^T J^(zeta) from the first (LibMTL's roles)."""
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(3, 3, 6)).astype("float32")
    kwargs = {"lr": 0.5, "n_iter": 30}
    update, weights = SDMGrad(**kwargs)(_t(grads))
    want = _numpy(SDMGrad(**kwargs).compute_weights(_t(grads[1] @ grads[2].T)))
    np.testing.assert_allclose(_numpy(weights), want, atol=1e-6)
    np.testing.assert_allclose(_numpy(update), want @ grads[0], rtol=1e-5, atol=1e-6)
    other = _numpy(SDMGrad(**kwargs).compute_weights(_t(grads[0] @ grads[1].T)))
    assert np.max(np.abs(other - want)) > 1e-3


def test_heads_receive_the_sum_of_their_sub_batch_gradients():
    scales = SDMGrad().head_gradient_scales(_t([0.5, 2.0]), _t([0.3, 0.7]))
    np.testing.assert_array_equal(_numpy(scales), [3.0, 3.0])


def test_state_reset_and_evaluation():
    strategy = SDMGrad()
    evaluated = _numpy(strategy.compute_weights(_t(A1), training=False))
    np.testing.assert_array_equal(
        _numpy(strategy.task_weights), np.full(3, 1 / 3, "float32")
    )
    np.testing.assert_array_equal(_numpy(strategy.compute_weights(_t(A1))), evaluated)
    assert not np.allclose(_numpy(strategy.task_weights), 1 / 3)
    strategy.reset_state()
    np.testing.assert_array_equal(
        _numpy(strategy.task_weights), np.full(3, 1 / 3, "float32")
    )


def test_compiled_step_equals_eager():
    rng = np.random.default_rng(3)
    grads = _t(rng.normal(size=(3, 4, 9)))
    kwargs = {"lr": 0.5, "n_iter": 30}
    eager = SDMGrad(**kwargs)
    eager_out = [eager(grads) for _ in range(3)]
    strategy = SDMGrad(**kwargs)
    strategy.build(grads.shape)
    step = compiled(lambda g: strategy(g), layers=[strategy])
    for (u1, w1), (u2, w2) in zip(eager_out, [step(grads) for _ in range(3)]):
        np.testing.assert_allclose(_numpy(u2), u1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_numpy(w2), w1, atol=1e-6)


def test_validation():
    bad = (
        {"lambda_": -0.1},
        {"lr": 0.0},
        {"momentum": 1.0},
        {"momentum": -0.5},
        {"n_iter": 0},
        {"n_iter": 2.5},
        {"pref_vector": "uniform"},
    )
    for kwargs in bad:
        with pytest.raises(ValueError, match=f"SDMGrad `{next(iter(kwargs))}`"):
            SDMGrad(**kwargs)
    with pytest.raises(ValueError, match="pref_vector` has 2 entries"):
        SDMGrad(pref_vector=[0.5, 0.5]).build((3, 4))


# --- Degenerate inputs (issue 15; tests/weighting/degenerate_inputs.py) ---
# Deterministic from the initial (uniform) state. The defaults' inner loop
# (lr = 10) jumps between faces of the simplex, so rounding differences grow
# about twofold per iteration: the permutation check runs on a contractive
# loop (lr = 0.5), where reordering the tasks only reorders the rounding.
# The weights do not depend on a common scale (A / s^2) where s^2 >> 1e-8,
# so the update is positively homogeneous there: checked for factors 1/2 and
# 2 on the cases whose every row has a squared norm above 0.1. The inner
# loops run compiled (`FreshCompiled`), one graph per shape: eagerly, 20 to
# 30 iterations of a dozen ops per call make the family slow.


# Where the rows repeat (duplicated, opposed, rank one) several weightings
# give the same update, and the permuted run may settle on another one: the
# update is compared there, not the weights.
_NON_UNIQUE = ("duplicated", "opposed", "rank_one", "rank_one_signed")


def _options(case):
    norms = np.sum(case.matrix.astype(np.float64) ** 2, axis=1)
    homogeneous = bool(np.all(np.isfinite(norms)) and np.min(norms) > 0.1)
    return {
        "homogeneous": homogeneous,
        "factors": (0.5, 2.0),
        "permute_weights": case.kind not in _NON_UNIQUE,
    }


@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    cases = degenerate_inputs.degenerate_cases(shapes=[shape])
    degenerate_checks.check_cases(
        FreshCompiled(lambda: SDMGrad(lr=0.5, n_iter=30)), cases, _options
    )
    defaults = FreshCompiled(SDMGrad)
    failures = []
    for case in cases:
        update, weights = degenerate_checks.aggregate(defaults, case.matrix)
        if not (np.isfinite(update).all() and np.isfinite(weights).all()):
            failures.append(f"{case.id}: not finite")
        elif (
            abs(np.sum(weights) - 1.0) > 1e-5
            or np.min(weights) < 0.3 / (1.3 * case.num_tasks) - 1e-6
        ):
            failures.append(f"{case.id}: weights {weights}")
    assert not failures, "\n".join(failures)
