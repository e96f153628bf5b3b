"""Property checks of gradient aggregators on the degenerate input family.

Each method's test file applies `check_degenerate` to the cases of
`degenerate_inputs` with the properties its docstring claims:

- the update and the weights are finite (always);
- a zero matrix gives a zero update (always);
- permuting the tasks permutes the weights and leaves the update unchanged
  (deterministic methods; the strategy is built afresh for each call, so
  stateful methods are compared from their initial state);
- positive homogeneity: scaling every gradient by c > 0 scales the update by
  c (where claimed; c is a power of two, so the scaled input is exact);
- non-conflict: g_t . update >= 0 for every task (where claimed), up to a
  tolerance relative to ||g_t|| sum_s |w_s| ||g_s||.

Calls are eager on small matrices (no XLA compilation per case), each on a
freshly built strategy, with unit losses.
"""

from __future__ import annotations

import keras
import numpy as np


def aggregate(make, matrix, losses=None, training=True):
    """`(update, weights)` of a fresh `make()` on `matrix`, in float64."""
    matrix = np.asarray(matrix, np.float32)
    if losses is None:
        losses = np.ones(matrix.shape[0], np.float32)
    strategy = make()
    update, weights = strategy(
        keras.ops.convert_to_tensor(matrix),
        keras.ops.convert_to_tensor(np.asarray(losses, np.float32)),
        training=training,
    )
    return (
        np.asarray(update, np.float64),
        np.asarray(weights, np.float64),
    )


def _combination_scale(matrix, weights):
    """sum_t |w_t| ||g_t||: the size of the terms of sum_t w_t g_t."""
    norms = np.linalg.norm(np.asarray(matrix, np.float64), axis=1)
    return float(np.sum(np.abs(weights) * norms))


def assert_finite(update, weights, case_id=""):
    assert np.all(np.isfinite(update)), f"{case_id}: non-finite update {update}"
    assert np.all(np.isfinite(weights)), f"{case_id}: non-finite weights {weights}"


def assert_permutation_equivariant(make, case, result, rtol=1e-5, compare_weights=True):
    """Reversing-and-rolling the tasks keeps the update (to `rtol` of the
    size of its terms) and, with `compare_weights`, permutes the weights alike (not
    for methods whose weights are not unique on a singular Gramian)."""
    update, weights = result
    num = case.num_tasks
    perm = np.roll(np.arange(num)[::-1], 1)
    p_update, p_weights = aggregate(make, case.matrix[perm])
    scale = _combination_scale(case.matrix, weights) + 1e-300
    gap = np.max(np.abs(p_update - update)) / scale
    assert gap <= rtol, f"{case.id}: update changes by {gap:.2e} under a permutation"
    if not compare_weights:
        return
    w_scale = np.max(np.abs(weights)) + 1e-300
    w_gap = np.max(np.abs(p_weights - weights[perm])) / w_scale
    assert w_gap <= max(rtol, 1e-5), (
        f"{case.id}: weights not permuted alike ({w_gap:.2e})"
    )


def assert_positively_homogeneous(
    make, case, result, factors=(2.0**-10, 2.0**10), rtol=1e-5
):
    """update(c G) = c update(G) for each c in `factors` (powers of two, so
    that c G is exact in float32)."""
    update, weights = result
    scale = _combination_scale(case.matrix, weights) + 1e-300
    for factor in factors:
        scaled = case.matrix.astype(np.float64) * factor
        # Skipped where the float32 Gramian would overflow.
        if np.sum(scaled**2) > 1e37:
            continue
        s_update, _ = aggregate(make, scaled)
        gap = np.max(np.abs(s_update / factor - update)) / scale
        assert gap <= rtol, (
            f"{case.id}: update(c G) != c update(G) for c = {factor} ({gap:.2e})"
        )


def assert_non_conflicting(case, result, rtol=1e-5, slack=None):
    """g_t . update >= -rtol ||g_t|| sum_s |w_s| ||g_s|| for every task t.

    The tolerance is relative to the size of the terms of the combination,
    not to ||update||: where the gradients cancel (exactly opposed tasks)
    the non-conflicting update is 0 and only its rounding remains. `slack`,
    a function of `(matrix, weights)` returning `(T,)` values, is a
    violation the method allows itself (a regularisation's bound)."""
    update, weights = result
    matrix = case.matrix.astype(np.float64)
    norms = np.linalg.norm(matrix, axis=1)
    scale = norms * _combination_scale(matrix, weights) + 1e-300
    products = matrix @ update
    if slack is not None:
        products = products + slack(matrix, weights)
    worst = float(np.min(products / scale))
    assert worst >= -rtol, f"{case.id}: the update conflicts with a task ({worst:.2e})"


def check_degenerate(
    make,
    case,
    *,
    permutation=True,
    permute_weights=True,
    homogeneous=False,
    non_conflicting=False,
    rtol=1e-5,
    conflict_rtol=1e-5,
    conflict_slack=None,
    factors=(2.0**-10, 2.0**10),
    max_tasks_for_extra=20,
):
    """Runs the checks on one case and returns `(update, weights)`.

    Args:
        make: a callable returning a fresh strategy.
        case: a `DegenerateCase`.
        permutation, homogeneous, non_conflicting: which claimed properties
            to check besides finiteness and zero-in-zero-out.
        permute_weights: whether the permutation check also compares the
            weights (False where they are not unique, e.g. min-norm weights
            on a singular Gramian; the update still is).
        rtol: tolerance of the permutation and homogeneity checks,
            relative to sum_t |w_t| ||g_t||.
        conflict_rtol, conflict_slack: tolerance and allowed violation of
            the non-conflict check (see `assert_non_conflicting`).
        factors: the scalings of the homogeneity check.
        max_tasks_for_extra: the permutation and homogeneity checks (each
            one more call) run only up to this many tasks, to keep the
            family fast; finiteness and non-conflict run at every T.
    """
    result = aggregate(make, case.matrix)
    update, weights = result
    assert_finite(update, weights, case.id)
    assert update.shape == (case.matrix.shape[1],)
    assert weights.shape == (case.num_tasks,)
    if not np.any(case.matrix):
        assert np.all(update == 0.0), f"{case.id}: zero gradients, update {update}"
    extra = case.num_tasks <= max_tasks_for_extra
    if permutation and extra and case.num_tasks > 1:
        assert_permutation_equivariant(make, case, result, rtol, permute_weights)
    if homogeneous and extra:
        assert_positively_homogeneous(make, case, result, factors, rtol)
    if non_conflicting:
        assert_non_conflicting(case, result, conflict_rtol, conflict_slack)
    return result


def assert_evaluation_keeps_random_state(make, matrix, steps=2):
    """A call with `training=False` leaves every variable (the random
    generator's state included) unchanged, and draws what the next
    training call draws."""
    matrix = keras.ops.convert_to_tensor(np.asarray(matrix, np.float32))
    losses = keras.ops.ones([matrix.shape[0]])
    strategy = make()
    strategy(matrix, losses, training=True)  # built, state advanced once
    for _ in range(steps):
        before = [np.array(keras.ops.convert_to_numpy(v)) for v in strategy.variables]
        eval_update, eval_weights = strategy(matrix, losses, training=False)
        after = [np.array(keras.ops.convert_to_numpy(v)) for v in strategy.variables]
        for b, a, v in zip(before, after, strategy.variables):
            np.testing.assert_array_equal(
                a, b, err_msg=f"{v.path} changed in a call with training=False"
            )
        train_update, train_weights = strategy(matrix, losses, training=True)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(eval_update),
            keras.ops.convert_to_numpy(train_update),
        )
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(eval_weights),
            keras.ops.convert_to_numpy(train_weights),
        )


def regularised_gramian_slack(reg_eps):
    """The conflict UPGrad and DualProj allow: g_t . update >=
    -reg_eps trace(G G^T) w_t (from the optimality conditions of their QP
    on the regularised Gramian)."""

    def slack(matrix, weights):
        return reg_eps * np.sum(matrix**2) * np.abs(weights)

    return slack


def check_cases(make, cases, options=None):
    """`check_degenerate` on every case, in one test.

    One pytest test per case (or per shape) would spend much of its time in
    the suite's per-test set-up (a fresh Keras session); this runs them all
    and reports every failing case at once.

    Args:
        make: a callable returning a fresh strategy.
        cases: `DegenerateCase`s.
        options: None, or a function of the case returning the keyword
            arguments of `check_degenerate` for it.
    """
    failures = []
    for case in cases:
        kwargs = {} if options is None else options(case)
        try:
            check_degenerate(make, case, **kwargs)
        except Exception as error:  # reported below, with the others
            failures.append(f"{case.id}: {_describe(error)}")
    assert not failures, "\n".join(failures)


def _compiled_outputs(strategy, shape):
    """`compiled_degenerate_runs` without its finiteness check."""
    from backends import compiled
    from degenerate_inputs import degenerate_cases

    strategy.build(shape)

    # Both calls in one compiled step: one (XLA) compilation per shape
    # instead of two; the calls run in the same order as two steps would.
    def plain_then_masked(grads, masked_grads, mask):
        return strategy(grads), strategy(masked_grads, task_mask=mask)

    step = compiled(plain_then_masked, layers=[strategy])
    mask = (np.arange(shape[0]) % 3 != 1).astype("float32")
    for case in degenerate_cases(shapes=[shape]):
        outputs = step(case.matrix, case.matrix * mask[:, None], mask)
        outputs = [tuple(np.asarray(x) for x in output) for output in outputs]
        yield case, mask, outputs[0], outputs[1]


def _assert_outputs_finite(case, outputs):
    for update, weights in outputs:
        assert np.isfinite(update).all() and np.isfinite(weights).all(), case.id


def compiled_degenerate_runs(strategy, shape):
    """For each degenerate case of `shape`, the strategy's `(update,
    weights)` inside a compiled step, without and with absent tasks (every
    third task from the second, its rows zeroed), as numpy arrays, both
    checked finite. Yields `(case, mask, plain, masked)`; the strategy is
    built for `shape`."""
    for case, mask, plain, masked in _compiled_outputs(strategy, shape):
        _assert_outputs_finite(case, (plain, masked))
        yield case, mask, plain, masked


def check_compiled_cases(make, check=None, shapes=None):
    """`compiled_degenerate_runs` at every shape of `shapes` (default
    `degenerate_inputs.SHAPES`), in one test reporting every failing case.

    Each shape compiles its steps once (a strategy `make()` built for it)
    and feeds all its cases through them; each case's outputs are checked
    finite, then `check(case, mask, plain, masked)` (if given) makes the
    method's own assertions.
    """
    from degenerate_inputs import SHAPES

    failures = []
    for shape in SHAPES if shapes is None else shapes:
        runs = _compiled_outputs(make(), shape)
        while True:
            try:
                case, mask, plain, masked = next(runs)
            except StopIteration:
                break
            except Exception as error:  # the step failed: the shape's cases
                failures.append(f"{shape}: {_describe(error)}")
                break
            try:
                _assert_outputs_finite(case, (plain, masked))
                if check is not None:
                    check(case, mask, plain, masked)
            except Exception as error:
                failures.append(f"{case.id}: {_describe(error)}")
    assert not failures, "\n".join(failures)


def _describe(error):
    first_line = str(error).strip().splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first_line}"
