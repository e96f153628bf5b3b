"""Tests of MoCo (multi-objective gradient correction)."""

import functools

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import missing_task_checks as checks
import numpy as np
import pytest
from backends import graph

import keras_mtl.weighting as weighting
from keras_mtl.weighting.moco import MoCo

pytestmark = pytest.mark.both_backends


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _reference(
    grads_seq, losses_seq, beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0
):
    """Float64 re-derivation of LibMTL `LibMTL/weighting/MoCo.py`."""
    num_tasks = len(grads_seq[0])
    tracking = np.zeros_like(np.asarray(grads_seq[0], np.float64))
    lambd = np.full(num_tasks, 1.0 / num_tasks)
    updates, lambdas = [], []
    for k, (grads, losses) in enumerate(zip(grads_seq, losses_seq), start=1):
        grads = np.asarray(grads, np.float64)
        losses = np.asarray(losses, np.float64)
        norms = np.linalg.norm(grads, axis=1)
        directions = grads / (norms + 1e-8)[:, None] * losses[:, None]
        tracking = tracking - beta / k**beta_sigma * (tracking - directions)
        gramian = tracking @ tracking.T + rho * np.eye(num_tasks)
        lambd = _softmax(lambd - gamma / k**gamma_sigma * gramian @ lambd)
        updates.append(tracking.T @ lambd)
        lambdas.append(lambd)
    return updates, lambdas, tracking


def _random_sequence(rng, steps, num_tasks=3, dim=5):
    grads = [rng.normal(size=(num_tasks, dim)).astype("float32") for _ in range(steps)]
    losses = [
        rng.uniform(0.1, 3.0, size=num_tasks).astype("float32") for _ in range(steps)
    ]
    return grads, losses


def _run(strategy, grads_seq, losses_seq):
    strategy.build(np.shape(grads_seq[0]))
    outputs = [strategy(g, x) for g, x in zip(grads_seq, losses_seq)]
    return [keras.ops.convert_to_numpy(u) for u, _ in outputs], [
        keras.ops.convert_to_numpy(w) for _, w in outputs
    ]


def test_first_step_by_hand():
    # LibMTL MoCo.py, step k = 1, beta_1 = 0.5, gamma_1 = 0.1, lambda = (.5, .5):
    # h = g / ||g|| * L = [[0.6, 0.8] * 2, [0, 1] * 1] = [[1.2, 1.6], [0, 1]]
    # y = 0.5 h = [[0.6, 0.8], [0, 0.5]],  y y^T = [[1, 0.4], [0.4, 0.25]]
    # y y^T lambda = [0.7, 0.325],  logits = 0.5 - 0.1 [0.7, 0.325]
    #   = [0.43, 0.4675],  lambda = softmax(logits)
    # update = lambda_1 [0.6, 0.8] + lambda_2 [0, 0.5].
    strategy = MoCo()
    update, lambd = (
        strategy.aggregate(
            np.array([[3.0, 4.0], [0.0, 2.0]], "float32"), losses=[2.0, 1.0]
        ),
        keras.ops.convert_to_numpy(strategy.lambd),
    )
    lambda_1 = 1.0 / (1.0 + np.exp(0.4675 - 0.43))
    np.testing.assert_allclose(lambd, [lambda_1, 1.0 - lambda_1], rtol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update),
        [0.6 * lambda_1, 0.8 * lambda_1 + 0.5 * (1.0 - lambda_1)],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(strategy.tracking),
        [[0.6, 0.8], [0.0, 0.5]],
        rtol=1e-6,
    )
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"rho": 0.3, "gamma": 1.0},
        {"beta": 0.9, "beta_sigma": 0.0, "gamma_sigma": 0.0},
    ],
)
def test_matches_reference_over_steps(kwargs):
    grads, losses = _random_sequence(np.random.default_rng(0), steps=4)
    updates, lambdas = _run(MoCo(**kwargs), grads, losses)
    ref_updates, ref_lambdas, _ = _reference(grads, losses, **kwargs)
    np.testing.assert_allclose(updates, ref_updates, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lambdas, ref_lambdas, rtol=1e-5)


def test_lambda_stays_on_the_simplex():
    rng = np.random.default_rng(1)
    strategy = MoCo(gamma=5.0, gamma_sigma=0.0)
    strategy.build((4, 6))
    grads = _t(rng.normal(size=(30, 4, 6)).astype("float32"))
    losses = _t(rng.uniform(0.1, 10.0, size=(30, 4)).astype("float32"))

    step = graph(lambda g, loss: strategy(g, loss)[1], layers=[strategy])
    lambdas = np.stack(
        [keras.ops.convert_to_numpy(step(grads[i], losses[i])) for i in range(30)]
    )
    assert np.all(lambdas >= 0)
    np.testing.assert_allclose(lambdas.sum(axis=1), 1.0, rtol=1e-6)
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 30


def test_large_gramian_entries_get_less_weight():
    # The dual step lowers the weight of the task whose tracked direction has
    # the larger inner products (the MGDA min-norm direction).
    strategy = MoCo()
    _, lambd = strategy(np.eye(2, dtype="float32"), np.array([5.0, 1.0], "float32"))
    assert keras.ops.convert_to_numpy(lambd)[0] < keras.ops.convert_to_numpy(lambd)[1]


def test_invariant_to_gradient_scale():
    grads, losses = _random_sequence(np.random.default_rng(2), steps=3)
    scale = np.array([1.0, 1e3, 1e-3], "float32")[:, None]
    base, _ = _run(MoCo(), grads, losses)
    scaled, _ = _run(MoCo(), [g * scale for g in grads], losses)
    np.testing.assert_allclose(scaled, base, rtol=1e-5, atol=1e-7)


def test_requires_losses():
    with pytest.raises(ValueError, match="losses"):
        MoCo().aggregate(np.ones((2, 3), "float32"))


def test_degenerate_inputs_are_finite():
    cases = [
        (np.zeros((3, 4)), np.ones(3)),
        (np.zeros((3, 4)), np.zeros(3)),
        (np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [-1.0, -2.0, -3.0]]), np.ones(3)),
        (1e-10 * np.arange(12.0).reshape(3, 4), np.ones(3)),
        (1e10 * np.arange(12.0).reshape(3, 4), np.ones(3)),
        (1e10 * np.arange(12.0).reshape(3, 4), np.full(3, 1e10)),
    ]
    for grads, losses in cases:
        strategy = MoCo()
        for _ in range(2):
            update = strategy.aggregate(
                grads.astype("float32"), losses.astype("float32")
            )
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(update))), (
                grads,
                losses,
            )
            assert np.all(np.isfinite(keras.ops.convert_to_numpy(strategy.lambd)))
    strategy = MoCo()
    update = strategy.aggregate(np.array([[3.0, -4.0]], "float32"), [2.0])
    # One task: lambda = 1 and y = 0.5 * g / ||g|| * L.
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), [0.6, -0.8], rtol=1e-6
    )


def test_eager_equals_xla():
    grads, losses = _random_sequence(np.random.default_rng(3), steps=3)
    make = functools.partial(MoCo, rho=0.1)
    cases = [((g, x), None) for g, x in zip(grads, losses)]
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=(1e-7, 0.0))


def test_training_false_leaves_state():
    strategy = MoCo()
    strategy.build((2, 2))
    strategy(
        np.eye(2, dtype="float32"), np.array([1.0, 2.0], "float32"), training=False
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.tracking), 0.0)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy.lambd), [0.5, 0.5]
    )
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 0


def test_invalid_arguments():
    for kwargs, name in [
        ({"beta": 0.0}, "beta"),
        ({"beta_sigma": -1.0}, "beta_sigma"),
        ({"gamma": -0.1}, "gamma"),
        ({"gamma_sigma": float("inf")}, "gamma_sigma"),
        ({"rho": -1.0}, "rho"),
        ({"rep_grad": True}, "rep_grad"),
    ]:
        with pytest.raises(ValueError, match=name):
            MoCo(**kwargs)


def test_config_and_registry():
    strategy = MoCo(beta=0.3, beta_sigma=0.1, gamma=0.2, gamma_sigma=0.4, rho=0.5)
    config = strategy.get_config()
    assert [
        config[k] for k in ("beta", "beta_sigma", "gamma", "gamma_sigma", "rho")
    ] == [
        0.3,
        0.1,
        0.2,
        0.4,
        0.5,
    ]
    assert MoCo.from_config(config).get_config() == config
    for name in ("moco", "MoCo", "mo_co"):
        assert isinstance(weighting.get(name), MoCo)
    restored = weighting.deserialize(weighting.serialize(strategy))
    assert isinstance(restored, MoCo) and restored.rho == 0.5


def test_state_round_trip_and_reset():
    grads, losses = _random_sequence(np.random.default_rng(4), steps=3)
    strategy = MoCo()
    _run(strategy, grads[:2], losses[:2])
    checks.assert_state_round_trip(strategy, [(grads[2], losses[2])])
    strategy.reset_state()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.tracking), 0.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(strategy.lambd), np.full(3, 1 / 3)
    )
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 0
    fresh = MoCo()
    fresh.build(grads[0].shape)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy(grads[0], losses[0])[0]),
        keras.ops.convert_to_numpy(fresh(grads[0], losses[0])[0]),
    )


# --- Missing tasks --------------------------------------------------------


def _present_clone(strategy, present, **kwargs):
    """A MoCo for the present tasks with their slices of the state."""
    clone = MoCo(**kwargs)
    clone.build((len(present), strategy.tracking.shape[1]))
    clone.tracking.assign(keras.ops.convert_to_numpy(strategy.tracking)[present])
    # A one-task MoCo's lambda is 1 whatever the state it would inherit.
    lambd = (
        keras.ops.convert_to_numpy(strategy.lambd)[present]
        if len(present) > 1
        else [1.0]
    )
    clone.lambd.assign(lambd)
    clone.step.assign(keras.ops.convert_to_numpy(strategy.step))
    clone.task_steps.assign(keras.ops.convert_to_numpy(strategy.task_steps)[present])
    return clone


def test_missing_tasks_all_present_mask_equals_unmasked():
    grads, losses = _random_sequence(np.random.default_rng(10), steps=4, num_tasks=4)
    make = functools.partial(MoCo, rho=0.1)
    checks.assert_all_ones_mask_is_no_mask(make, list(zip(grads, losses)))


@pytest.mark.parametrize("absent", [(1,), (0, 3), (0, 1, 2)])
def test_missing_tasks_equal_moco_on_present_tasks(absent):
    kwargs = {"rho": 0.1, "beta_sigma": 0.3, "gamma": 0.5}
    rng = np.random.default_rng(11)
    present = [t for t in range(4) if t not in absent]
    strategy = MoCo(**kwargs)
    _run(strategy, *_random_sequence(rng, steps=3, num_tasks=4))
    small = _present_clone(strategy, present, **kwargs)
    grads, losses = _random_sequence(rng, steps=2, num_tasks=4)
    steps = [checks.with_absent(g, x, absent=absent) for g, x in zip(grads, losses)]
    # The present slices of the state follow the K-task MoCo, the absent
    # ones are untouched, the shared step advances.
    pairs = checks.assert_absent_task_is_dropped(
        strategy, small, steps[0][2], [(g, x) for g, x, _ in steps], rtol=1e-6
    )
    for (_, weights), _ in pairs:
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy.task_steps)[list(absent)], 3
    )
    assert int(keras.ops.convert_to_numpy(strategy.step)) == 5


def test_missing_tasks_per_task_step_counts_drive_tracking():
    # Task 1 misses steps 2 and 3; at step 4 its row moves with
    # beta / 2^beta_sigma (its second step), the others with beta / 4^sigma.
    beta, sigma = 0.5, 0.5
    grads, losses = _random_sequence(np.random.default_rng(12), steps=4)
    strategy = MoCo(beta=beta, beta_sigma=sigma)
    strategy(grads[0], losses[0])
    for g, x in zip(grads[1:3], losses[1:3]):
        g, x, mask = checks.with_absent(g, x, absent=(1,))
        strategy(g, x, task_mask=mask)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(strategy.task_steps), [3, 1, 3]
    )
    tracking = keras.ops.convert_to_numpy(strategy.tracking).astype(np.float64)
    strategy(grads[3], losses[3], task_mask=np.ones(3, "float32"))
    g = grads[3].astype(np.float64)
    h = g / (np.linalg.norm(g, axis=1) + 1e-8)[:, None] * losses[3][:, None]
    rates = beta / np.array([4.0, 2.0, 4.0]) ** sigma
    expected = tracking - rates[:, None] * (tracking - h)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(strategy.tracking), expected, rtol=1e-5
    )


def test_missing_tasks_restore_absent_state():
    rng = np.random.default_rng(13)
    strategy = MoCo()
    _run(strategy, *_random_sequence(rng, steps=2))
    g, x, mask = checks.with_absent(
        *[s[0] for s in _random_sequence(rng, steps=1)], absent=(2,)
    )
    checks.assert_restore_keeps_absent_state(
        strategy, mask, lambda: strategy(g, x, task_mask=mask), moved="each"
    )
    assert [v.name for v, _ in strategy.per_task_state()] == [
        "tracking",
        "lambda",
        "task_steps",
    ]


def test_missing_tasks_finite():
    grads, losses = _random_sequence(np.random.default_rng(14), steps=3)
    strategy = MoCo(beta_sigma=0.7)
    # Task 0 absent from the very first step (its count stays 0).
    cases = [
        ((grads[0], losses[0]), [0.0, 1.0, 1.0]),
        (
            (grads[1] * np.array([[1e10], [1.0], [1e-10]], "float32"), losses[1]),
            [0.0, 1.0, 1.0],
        ),
        ((grads[2], losses[2]), [0.0, 0.0, 0.0]),
        ((grads[2], losses[2]), [0.0, 1.0, 0.0]),
    ]
    results = checks.assert_masked_outputs_finite(strategy, cases)
    # A single present task has weight 1.
    np.testing.assert_array_equal(results[-1][1], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(strategy.tracking)[0], 0.0)


def test_missing_tasks_eager_equals_xla():
    grads, losses = _random_sequence(np.random.default_rng(15), steps=4)
    absents = [(), (1,), (0, 2), (2,)]
    cases = []
    for g, x, absent in zip(grads, losses, absents):
        g, x, mask = checks.with_absent(g, x, absent=absent)
        cases.append(((g, x), mask))
    make = functools.partial(MoCo, rho=0.1)
    checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=(1e-7, 0.0))


# --- Degenerate inputs (issue 15): zero, rank-one and rank-deficient
# matrices, duplicated and opposed rows, a zero row, scales from 1e-15 to
# 1e15, T from 1 to 40 (tests/weighting/degenerate_inputs.py).


# Stateful: every call is on a fresh strategy (its first step).
@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    degenerate_checks.check_cases(
        MoCo,
        degenerate_inputs.degenerate_cases(shapes=[shape]),
        lambda case: {"permutation": case.kind not in ("tiny", "small")},
    )
