"""Tests of Aligned-MTL."""

import functools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import missing_task_checks as checks
import numpy as np
import pytest
from backends import compiled

import keras_mtl.weighting as weighting
from keras_mtl.weighting._solver_ops import solver_function
from keras_mtl.weighting.aligned_mtl import AlignedMTL, aligned_mtl_matrix

# Strategy-level tests run on both backends; those through the shared
# checks of `aggregator_properties` / `missing_task_checks` (which use
# TensorFlow) are TensorFlow-only until those modules are backend-neutral.
both_backends = pytest.mark.both_backends

# B in float64 on both backends (JAX without x64 included), returned in
# float32 there.
_matrix = solver_function(aligned_mtl_matrix)


def _reference_weights(grads, scale_mode="min"):
    """Float64 re-derivation of LibMTL `LibMTL/weighting/Aligned_MTL.py`
    (commit 0aaada5) and of the authors' `ProcrustesSolver` scale modes
    (SamsungLabs/MTL `code/optim/aligned/solver.py`): alpha = B.sum(0)."""
    grads = np.asarray(grads, np.float64)
    gramian = grads @ grads.T
    lmbda, vecs = np.linalg.eigh(gramian)
    tol = lmbda.max() * len(gramian) * np.finfo(np.float32).eps
    rank = int((lmbda > tol).sum())
    order = np.argsort(-lmbda)
    lmbda, vecs = lmbda[order][:rank], vecs[:, order][:, :rank]
    sigma_sq = {
        "min": lmbda[-1],
        "median": np.sort(lmbda)[(rank - 1) // 2],
        "rmse": lmbda.mean(),
    }[scale_mode]
    basis = np.sqrt(sigma_sq) * (vecs / np.sqrt(lmbda)) @ vecs.T
    return basis.sum(0)


def _random_grads(rng, num, dim, common=0.0):
    grads = rng.normal(size=(num, dim)) * rng.uniform(0.3, 3.0, size=(num, 1))
    return (grads + common * rng.normal(size=(1, dim))).astype("float32")


def _assert_compiled_matches_eager(make, cases, rtol, atol):
    """Each `(grads, mask)` case (mask None: no mask): `make()` inside a
    compiled step (XLA) gives its eager `(update, weights)`, finite."""
    strategy = make()

    def plain(grads):
        return strategy(grads)

    def masked(grads, mask):
        return strategy(grads, task_mask=mask)

    plain, masked = (
        compiled(plain, layers=[strategy]),
        compiled(masked, layers=[strategy]),
    )
    for grads, mask in cases:
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
def test_registry_and_config_round_trip():
    assert isinstance(weighting.get("aligned_mtl"), AlignedMTL)
    original = AlignedMTL(scale_mode="rmse", rep_grad=True, name="a")
    rebuilt = AlignedMTL.from_config(original.get_config())
    assert rebuilt.get_config() == original.get_config()
    assert AlignedMTL.requires == "gramian" and AlignedMTL.supports_rep_grad
    with pytest.raises(ValueError, match="scale_mode"):
        AlignedMTL(scale_mode="max")


@both_backends
def test_doc_example_values():
    update, weights = AlignedMTL()(np.array([[1.0, 0.0], [0.0, 2.0]], "float32"))
    np.testing.assert_allclose(np.asarray(weights), [1.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(update), [1.0, 1.0], rtol=1e-6)


@both_backends
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_matches_reference(scale_mode):
    rng = np.random.default_rng(0)
    for num in (2, 3, 4, 5):
        grads = _random_grads(rng, num, 7, common=1.0)
        update, weights = AlignedMTL(scale_mode=scale_mode)(grads)
        expected = _reference_weights(grads, scale_mode)
        np.testing.assert_allclose(np.asarray(weights), expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(update), expected @ grads, rtol=1e-4, atol=1e-5
        )


@both_backends
def test_aligned_rows_are_orthogonal_with_equal_norms():
    rng = np.random.default_rng(1)
    for num in (2, 3, 5):
        grads = _random_grads(rng, num, 8, common=2.0).astype("float64")
        basis = np.asarray(_matrix(grads @ grads.T))
        aligned = basis @ grads
        gram = aligned @ aligned.T
        sigma_min_sq = np.linalg.eigvalsh(grads @ grads.T).min()
        # Orthogonal rows, all of squared norm lambda_min (to float64
        # rounding; to float32 rounding where B is returned in float32).
        tol = 1e-9 if basis.dtype == np.float64 else 1e-5
        np.testing.assert_allclose(
            gram, sigma_min_sq * np.eye(num), atol=tol * gram.max()
        )
        # The update is the sum of the aligned rows.
        _, weights = AlignedMTL()(grads.astype("float32"))
        np.testing.assert_allclose(
            np.asarray(weights) @ grads, aligned.sum(0), rtol=1e-4, atol=1e-5
        )


@both_backends
def test_rank_deficient_input_drops_the_null_direction():
    rng = np.random.default_rng(2)
    g = _random_grads(rng, 2, 6).astype("float64")
    grads = np.stack([g[0], g[1], g[0] + g[1]])
    update, weights = AlignedMTL()(grads.astype("float32"))
    assert np.isfinite(np.asarray(update)).all()
    np.testing.assert_allclose(
        np.asarray(weights), _reference_weights(grads), rtol=1e-3, atol=1e-4
    )
    basis = np.asarray(_matrix(grads @ grads.T))
    singular = np.linalg.svd(basis @ grads, compute_uv=False)
    # Two equal non-zero singular values, one zero.
    np.testing.assert_allclose(singular[0], singular[1], rtol=1e-6)
    assert singular[2] < 1e-6 * singular[0]


@both_backends
def test_global_scale_leaves_the_weights():
    rng = np.random.default_rng(3)
    grads = _random_grads(rng, 3, 6, common=1.0)
    _, weights = AlignedMTL()(grads)
    for scale in (1e-10, 1e10):
        _, scaled = AlignedMTL()(grads * np.float32(scale))
        np.testing.assert_allclose(np.asarray(scaled), np.asarray(weights), rtol=1e-4)


@both_backends
def test_identical_rows_and_degenerate_inputs():
    row = np.array([0.5, -1.0, 2.0], "float32")
    update, weights = AlignedMTL()(np.tile(row, (3, 1)))
    np.testing.assert_allclose(np.asarray(weights), [1.0, 1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(update), 3 * row, rtol=1e-5)
    rng = np.random.default_rng(4)
    g = _random_grads(rng, 4, 6)
    cases = [
        np.zeros((3, 5), "float32"),
        np.stack([g[0], np.zeros_like(g[0]), g[1]]),
        g * np.array([[1e-10], [1.0], [1e10], [1.0]], "float32"),
        _random_grads(rng, 5, 2),
        g[:1],
    ]
    for grads in cases:
        update, weights = AlignedMTL()(grads)
        assert np.isfinite(np.asarray(update)).all()
        assert np.isfinite(np.asarray(weights)).all()
    np.testing.assert_array_equal(
        np.asarray(AlignedMTL().aggregate(np.zeros((2, 3)))), 0.0
    )
    # One task: B = 1.
    np.testing.assert_allclose(
        np.asarray(AlignedMTL().aggregate(g[:1])), g[0], rtol=1e-6
    )


def test_eager_equals_xla():
    rng = np.random.default_rng(5)
    cases = [(_random_grads(rng, 4, 7, common=1.0), None) for _ in range(2)]
    checks.assert_xla_matches_eager(AlignedMTL, cases, rtol=1e-5, atol=1e-6)


@both_backends
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_compiled_step_equals_eager(scale_mode):
    rng = np.random.default_rng(5)
    cases = [(_random_grads(rng, 4, 7, common=1.0), None) for _ in range(2)]
    cases += [
        checks.with_absent(_random_grads(rng, 4, 7, common=1.0), absent=absent)
        for absent in [(0,), (2,), (1, 3), (0, 1, 2)]
    ]
    make = functools.partial(AlignedMTL, scale_mode=scale_mode)
    _assert_compiled_matches_eager(make, cases, rtol=1e-5, atol=1e-6)


# --- Missing tasks --------------------------------------------------------


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_missing_tasks_all_present_mask_equals_unmasked(scale_mode):
    grads = _random_grads(np.random.default_rng(10), 4, 7, common=1.0)
    make = functools.partial(AlignedMTL, scale_mode=scale_mode)
    checks.assert_all_ones_mask_is_no_mask(make, [grads])


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
def test_missing_tasks_equal_aligned_mtl_on_present_rows(scale_mode):
    rng = np.random.default_rng(11)
    strategy = AlignedMTL(scale_mode=scale_mode)
    for absent in [(1,), (0, 3), (0, 1, 2, 4)]:
        present = [t for t in range(5) if t not in absent]
        grads, mask = checks.with_absent(
            _random_grads(rng, 5, 7, common=1.0), absent=absent
        )
        [((_, weights), _)] = checks.assert_absent_task_is_dropped(
            strategy,
            AlignedMTL(scale_mode=scale_mode),
            mask,
            [grads],
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            weights[present],
            _reference_weights(grads[present], scale_mode),
            rtol=1e-4,
            atol=1e-5,
        )


@both_backends
def test_missing_tasks_rank_threshold_counts_present_tasks():
    # Present block diag(1, 4e-7): the relative eigenvalue 4e-7 is above the
    # threshold of K = 2 tasks (2.4e-7) but below that of T = 5 (6e-7). On
    # the present tasks alone it is kept: sigma^2 = 4e-7 and alpha =
    # (sqrt(4e-7), 1); dropping it would give alpha = (1, 0).
    small = 4e-7
    gramian = np.zeros((5, 5))
    gramian[1, 1], gramian[3, 3] = 1.0, small
    mask = np.array([0, 1, 0, 1, 0], "float32")
    weights = np.asarray(AlignedMTL().compute_weights(gramian, task_mask=mask))
    expected = np.zeros(5)
    expected[[1, 3]] = [np.sqrt(small), 1.0]
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    ref = AlignedMTL().compute_weights(gramian[np.ix_([1, 3], [1, 3])])
    np.testing.assert_allclose(weights[[1, 3]], np.asarray(ref), rtol=1e-6)
    # Unmasked, the zero rows count and the small direction is dropped.
    unmasked = np.asarray(AlignedMTL().compute_weights(gramian))
    np.testing.assert_allclose(unmasked[[1, 3]], [1.0, 0.0], atol=1e-6)


@both_backends
def test_missing_tasks_compute_weights_drops_nonzero_rows():
    # The representation-gradient path calls compute_weights directly.
    grads = _random_grads(np.random.default_rng(12), 4, 6, common=1.0)
    grads = grads.astype("float64")
    mask = np.array([1.0, 1.0, 0.0, 1.0], "float32")
    weights = np.asarray(AlignedMTL().compute_weights(grads @ grads.T, task_mask=mask))
    present = [0, 1, 3]
    np.testing.assert_allclose(
        weights[present], _reference_weights(grads[present]), rtol=1e-5
    )
    assert weights[2] == 0.0


def test_missing_tasks_finite_and_stateless():
    rng = np.random.default_rng(13)
    g = _random_grads(rng, 3, 4)
    strategy = AlignedMTL()
    checks.assert_masked_outputs_finite(
        strategy,
        [
            (g * np.array([[1e10], [1.0], [1e-10]], "float32"), [1.0, 0.0, 1.0]),
            (np.zeros((3, 4), "float32"), [0.0, 0.0, 0.0]),
            (np.stack([g[0], g[0], g[1]]), [1.0, 1.0, 0.0]),
        ],
    )
    # One present task: B = 1, its gradient passes unchanged.
    update, weights = strategy(g * [[0.0], [1.0], [0.0]], task_mask=[0.0, 1.0, 0.0])
    np.testing.assert_allclose(weights.numpy(), [0.0, 1.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(update.numpy(), g[1], rtol=1e-6)
    assert strategy.per_task_state() == []


def test_missing_tasks_eager_equals_xla():
    rng = np.random.default_rng(14)
    cases = [
        checks.with_absent(_random_grads(rng, 4, 7, common=1.0), absent=absent)
        for absent in [(0,), (2,), (1, 3)]
    ]
    checks.assert_xla_matches_eager(AlignedMTL, cases, rtol=1e-5, atol=1e-6)


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# Deterministic: permutation equivariant, except for exactly opposed rows
# (the spectrum's threshold then splits the zero eigenvalues by rounding;
# TorchJD 0.18's AlignedMTL gives the same updates, divided by T). The
# update scales with the gradients (scalings 2^-3 and 2^10: at 2^-10 the
# float32 Gramian of the 1e-15 rows is subnormal).
# Every shape in one test (every failing case reported).
def test_degenerate_inputs():
    degenerate_checks.check_cases(
        AlignedMTL,
        degenerate_inputs.degenerate_cases(),
        lambda case: {
            "permutation": case.kind != "opposed",
            "homogeneous": True,
            "factors": (2.0**-3, 2.0**10),
        },
    )


# The same degenerate inputs on both backends, inside a compiled step: the
# weights and update stay finite (and the weights are 0 for zero
# gradients).
# Each shape compiles once; every failing case is reported.
@both_backends
def test_degenerate_inputs_finite_when_compiled():
    failures = []
    for shape in degenerate_inputs.SHAPES:
        strategy = AlignedMTL()
        strategy.build(shape)
        step = compiled(strategy, layers=[strategy])
        for case in degenerate_inputs.degenerate_cases(shapes=[shape]):
            try:
                update, weights = (np.asarray(x) for x in step(case.matrix))
                assert np.isfinite(update).all(), "non-finite update"
                assert np.isfinite(weights).all(), "non-finite weights"
                if case.kind == "zeros":
                    np.testing.assert_array_equal(weights, 0.0)
            except Exception as error:
                failures.append(f"{case.id}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)
