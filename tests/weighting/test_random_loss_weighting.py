"""Tests of `RandomLossWeighting` (Lin et al., TMLR 2022)."""

import functools
import itertools
import math

import keras
import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad
from backends import compiled
from keras import ops

import keras_mtl
from keras_mtl.weighting.random_loss_weighting import RandomLossWeighting

pytestmark = pytest.mark.both_backends

SOFTMAX_DISTRIBUTIONS = ["normal", "uniform", "dirichlet"]
ALL_DISTRIBUTIONS = [*SOFTMAX_DISTRIBUTIONS, "bernoulli", "constrained_bernoulli"]


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _draw(strategy, num_tasks, num_draws, jit_compile=False, task_mask=None):
    """`num_draws` training-mode weight vectors, drawn in one tf.function
    (TensorFlow) or by `num_draws` calls of a jitted step (JAX)."""
    losses = ops.ones((num_tasks,)) if task_mask is None else task_mask
    kwargs = {} if task_mask is None else {"task_mask": task_mask}
    strategy(losses, training=False, **kwargs)  # builds the strategy eagerly
    if keras.backend.backend() != "tensorflow":
        step = compiled(
            lambda: strategy(losses, training=True, **kwargs)[1],
            jit_compile=jit_compile,
            layers=[strategy],
        )
        return np.stack([np.asarray(step()) for _ in range(num_draws)])
    import tensorflow as tf

    def run():
        out = tf.TensorArray(tf.float32, size=num_draws)
        for i in tf.range(num_draws):
            _, weights = strategy(losses, training=True, **kwargs)
            out = out.write(i, weights)
        return out.stack()

    return np.asarray(compiled(run, jit_compile=jit_compile)())


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _numpy_reference(distribution, num_tasks, size, rng):
    """Independent numpy sampler of the same distributions (LibMTL RLW.py)."""
    if distribution == "normal":
        return _softmax(rng.normal(size=(size, num_tasks)))
    if distribution == "uniform":
        return _softmax(rng.uniform(size=(size, num_tasks)))
    if distribution == "dirichlet":
        return _softmax(rng.dirichlet(np.ones(num_tasks), size=size))
    raise ValueError(distribution)


def test_registry_names_resolve():
    for name in ["rlw", "random", "random_loss_weighting", "RandomLossWeighting"]:
        assert isinstance(keras_mtl.weighting.get(name), RandomLossWeighting)
    assert RandomLossWeighting.registry_name == "rlw"


def test_config_round_trip():
    strategy = RandomLossWeighting(distribution="Dirichlet", seed=7)
    config = strategy.get_config()
    assert config["distribution"] == "dirichlet"
    assert config["seed"] == 7
    clone = RandomLossWeighting.from_config(config)
    assert clone.get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert restored.get_config() == config


def test_invalid_arguments_raise():
    cases = [
        ({"distribution": "gaussian"}, "distribution='gaussian'"),
        ({"distribution": 3}, "distribution=3"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"seed": "1"}, "seed='1'"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            RandomLossWeighting(**kwargs)


@pytest.mark.parametrize(
    "distribution", [*SOFTMAX_DISTRIBUTIONS, "constrained_bernoulli"]
)
def test_weights_lie_on_the_simplex_with_mean_one_over_t(distribution):
    num_tasks = 4
    draws = _draw(RandomLossWeighting(distribution, seed=3), num_tasks, 3000)
    assert np.all(draws >= 0)
    np.testing.assert_allclose(draws.sum(axis=1), 1.0, rtol=1e-5)
    # The draws differ from step to step.
    assert len({tuple(np.round(row, 6)) for row in draws}) > 1
    # E[w_t] = 1/T by symmetry. The standard error of the mean is at most
    # sqrt(1/4 * 3/4 / 3000) = 0.008 (one-hot draws), so allow 4 of them.
    np.testing.assert_allclose(draws.mean(axis=0), 1.0 / num_tasks, atol=0.032)


def _ks_distance(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    x = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, x, side="right") / a.size
    cdf_b = np.searchsorted(b, x, side="right") / b.size
    return np.max(np.abs(cdf_a - cdf_b))


def test_distribution_matches_an_independent_numpy_sampler():
    # Two-sample KS test of w_0 against numpy draws of the same distribution.
    # With 4000 draws the statistic stays below 0.035 under the null (the
    # 0.1% critical value is about 0.031), while the softmax-uniform and
    # softmax-Dirichlet laws, the closest pair here, are 0.062 apart, so the
    # test fails if a distribution or its softmax is wrong.
    num_tasks = 3
    references = {
        name: _numpy_reference(name, num_tasks, 200_000, np.random.default_rng(0))
        for name in SOFTMAX_DISTRIBUTIONS
    }
    for distribution in SOFTMAX_DISTRIBUTIONS:
        draws = _draw(RandomLossWeighting(distribution, seed=11), num_tasks, 4000)
        for name, reference in references.items():
            distance = _ks_distance(draws[:, 0], reference[:, 0])
            if name == distribution:
                assert distance < 0.035, (distribution, distance)
            else:
                assert distance > 0.045, (distribution, name, distance)


def test_dirichlet_weights_stay_within_the_softmax_range():
    num_tasks = 3
    draws = _draw(RandomLossWeighting("dirichlet", seed=5), num_tasks, 1000)
    low, high = 1 / (math.e + num_tasks - 1), math.e / (math.e + num_tasks - 1)
    assert draws.min() >= low - 1e-6
    assert draws.max() <= high + 1e-6


def test_bernoulli_is_uniform_over_nonzero_binary_vectors():
    num_tasks = 3
    draws = _draw(RandomLossWeighting("bernoulli", seed=2), num_tasks, 7000)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    assert np.all(draws.sum(axis=1) >= 1)  # never all zero
    patterns = [p for p in itertools.product([0, 1], repeat=num_tasks) if any(p)]
    counts = {p: 0 for p in patterns}
    for row in draws.astype(int):
        counts[tuple(row)] += 1
    # 7 equally likely patterns: 1000 expected each, sd about 30.
    for pattern, count in counts.items():
        assert 850 < count < 1150, (pattern, count)
    expected = 2 ** (num_tasks - 1) / (2**num_tasks - 1)
    np.testing.assert_allclose(draws.mean(axis=0), expected, atol=0.02)


def test_constrained_bernoulli_selects_one_task_uniformly():
    draws = _draw(RandomLossWeighting("constrained_bernoulli", seed=4), 4, 4000)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_array_equal(draws.sum(axis=1), 1.0)
    np.testing.assert_allclose(draws.mean(axis=0), 0.25, atol=0.03)


def test_evaluation_uses_expected_weights_and_keeps_the_state():
    losses = _t([1.0, 2.0, 3.0])
    for distribution in ALL_DISTRIBUTIONS:
        strategy = RandomLossWeighting(distribution, seed=1)
        state = np.asarray(strategy.seed_generator.state).copy()
        total, weights = strategy(losses, training=False)
        expected = 4 / 7 if distribution == "bernoulli" else 1 / 3
        np.testing.assert_allclose(np.asarray(weights), [expected] * 3, rtol=1e-6)
        np.testing.assert_allclose(float(total), 6.0 * expected, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(strategy.seed_generator.state), state)
        strategy(losses, training=True)
        assert not np.array_equal(np.asarray(strategy.seed_generator.state), state)


def test_objective_is_the_weighted_sum_with_constant_weights():
    strategy = RandomLossWeighting(seed=0)
    losses = [0.5, 2.0, 4.0]
    (total, weights), (grad,) = value_and_grad(strategy, losses, layers=[strategy])
    np.testing.assert_allclose(float(total), np.dot(weights, losses), rtol=1e-6)
    np.testing.assert_allclose(grad, weights)


def _eager_draws(strategy, num_draws, num_tasks=3):
    losses = ops.ones((num_tasks,))
    return np.stack([np.asarray(strategy(losses)[1]) for _ in range(num_draws)])


def test_same_seed_gives_the_same_sequence():
    for distribution in ALL_DISTRIBUTIONS:
        first = _eager_draws(RandomLossWeighting(distribution, seed=42), 10)
        second = _eager_draws(RandomLossWeighting(distribution, seed=42), 10)
        other = _eager_draws(RandomLossWeighting(distribution, seed=43), 10)
        np.testing.assert_array_equal(first, second)
        assert not np.array_equal(first, other)


def test_eager_and_graph_draws_agree():
    eager = _eager_draws(RandomLossWeighting(seed=9), 5)
    graph = _draw(RandomLossWeighting(seed=9), 3, 5)
    np.testing.assert_allclose(eager, graph, rtol=1e-6)


def test_eager_and_xla_agree():
    losses = _t([1.0, 2.0, 3.0])
    # Evaluation weights.
    for distribution in ["normal", "bernoulli"]:
        strategy = RandomLossWeighting(distribution, seed=0)
        eager = strategy(losses, training=False)
        in_xla = compiled(lambda x, s=strategy: s(x, training=False))(losses)
        for a, b in zip(eager, in_xla):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # Training draws: the same sequence eagerly and under XLA, and the seed
    # state advances alike.
    for distribution in ALL_DISTRIBUTIONS:
        a = RandomLossWeighting(distribution, seed=0)
        b = RandomLossWeighting(distribution, seed=0)
        xla = _draw(a, 3, 8, jit_compile=True)
        eager_draws = _eager_draws(b, 8)
        np.testing.assert_allclose(xla, eager_draws, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(
            np.asarray(a.seed_generator.state), np.asarray(b.seed_generator.state)
        )


@tf_only
def test_state_round_trip_continues_the_sequence():
    strategy = RandomLossWeighting(distribution="uniform", seed=21)
    losses = _t([1.0, 2.0])
    for _ in range(3):
        strategy(losses)
    # The seed generator's state is the strategy's one weight.
    assert len(strategy.get_weights()) == 1
    checks.assert_state_round_trip(strategy, [losses] * 3)


def test_reset_state_restarts_the_sequence():
    strategy = RandomLossWeighting(seed=None)
    losses = _t([1.0, 2.0, 3.0])
    first = [np.asarray(strategy(losses)[1]) for _ in range(3)]
    strategy.reset_state()
    again = [np.asarray(strategy(losses)[1]) for _ in range(3)]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))
    assert RandomLossWeighting.stateful


def test_single_task_gets_weight_one():
    for distribution in ALL_DISTRIBUTIONS:
        strategy = RandomLossWeighting(distribution, seed=0)
        for _ in range(3):
            total, weights = strategy(_t([2.5]))
            np.testing.assert_allclose(np.asarray(weights), [1.0], rtol=1e-6)
            np.testing.assert_allclose(float(total), 2.5, rtol=1e-6)


def test_extreme_losses_give_finite_results():
    strategy = RandomLossWeighting(seed=0)
    total, weights = strategy(_t([0.0, 1e-10, 1e10]))
    assert np.isfinite(float(total))
    assert np.all(np.isfinite(np.asarray(weights)))


# --- Missing tasks ------------------------------------------------------

_MASKS = [
    [1.0, 0.0, 1.0, 1.0],
    [0.0, 1.0, 0.0, 0.0],
    [1.0, 1.0, 0.0, 1.0],
    [0.0, 0.0, 1.0, 1.0],
    [1.0, 1.0, 1.0, 1.0],
]


def _call(strategy, losses, training, task_mask=None):
    return checks.default_call(strategy, losses, training=training, task_mask=task_mask)


@tf_only
def test_missing_tasks_all_present_mask_changes_nothing():
    losses = _t([1.0, 2.0, 3.0])
    steps = [(losses, training) for training in (True, True, False, True)]
    for distribution in ALL_DISTRIBUTIONS:
        make = functools.partial(RandomLossWeighting, distribution, seed=5)
        # The seed generator states (the only variables) advance alike.
        checks.assert_all_ones_mask_is_no_mask(
            make, steps, call=_call, rtol=1e-6, state_rtol=0.0
        )


def test_present_tasks_get_the_draws_of_a_strategy_built_for_them():
    # With K present tasks, the weights are those of a K-task strategy with
    # the same seed state, whatever the mask of the step.
    losses = _t([1.0, 0.0, 2.0, 3.0])
    for distribution in ALL_DISTRIBUTIONS:
        strategy = RandomLossWeighting(distribution, seed=3)
        for step in range(15):
            mask = np.asarray(_MASKS[step % len(_MASKS)])
            present = mask > 0
            reference = RandomLossWeighting(distribution, seed=0)
            reference.build((int(present.sum()),))
            reference.seed_generator.state.assign(strategy.seed_generator.state)
            _, weights = strategy(losses * mask, task_mask=_t(mask))
            _, expected = reference(ops.ones((int(present.sum()),)))
            weights = np.asarray(weights)
            np.testing.assert_allclose(
                weights[present], np.asarray(expected), rtol=1e-6
            )
            np.testing.assert_array_equal(weights[~present], 0.0)
            np.testing.assert_array_equal(
                np.asarray(strategy.seed_generator.state),
                np.asarray(reference.seed_generator.state),
            )
        # Evaluation: the expected weights of K tasks.
        _, weights = strategy(losses, training=False, task_mask=_t(_MASKS[0]))
        expected = 4 / 7 if distribution == "bernoulli" else 1 / 3
        np.testing.assert_allclose(
            np.asarray(weights), [expected, 0, expected, expected]
        )


def test_masked_draws_stay_on_the_present_simplex():
    mask = _t([1.0, 0.0, 1.0, 1.0])
    for distribution in ALL_DISTRIBUTIONS:
        strategy = RandomLossWeighting(distribution, seed=11)
        draws = _draw(strategy, 4, 300, jit_compile=False, task_mask=mask)
        np.testing.assert_array_equal(draws[:, 1], 0.0)
        assert np.all(draws >= 0) and np.all(np.isfinite(draws))
        sums = draws.sum(axis=1)
        if distribution in SOFTMAX_DISTRIBUTIONS + ["constrained_bernoulli"]:
            np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
        else:  # non-zero 0/1 vectors over the three present tasks
            assert np.all(sums >= 1)
        if distribution == "constrained_bernoulli":
            # Each of the three present tasks is chosen about a third of the time.
            np.testing.assert_allclose(draws[:, [0, 2, 3]].mean(0), 1 / 3, atol=0.1)


def test_no_task_present_gives_zero_weights():
    for distribution in ALL_DISTRIBUTIONS:
        strategy = RandomLossWeighting(distribution, seed=2)
        for training in (True, False):
            total, weights = strategy(
                _t([0.0, 0.0, 0.0]), training=training, task_mask=_t([0.0, 0.0, 0.0])
            )
            assert float(total) == 0.0
            np.testing.assert_array_equal(np.asarray(weights), 0.0)


@tf_only
def test_missing_tasks_no_per_task_state():
    # The only state is the shared random generator, which advances.
    strategy = RandomLossWeighting(seed=0)
    strategy.build((3,))
    before = np.asarray(strategy.seed_generator.state).copy()
    strategy(_t([1.0, 0.0, 1.0]), task_mask=_t([1.0, 0.0, 1.0]))
    checks.assert_no_per_task_state(strategy, [1.0, 0.0, 1.0])
    assert not np.array_equal(np.asarray(strategy.seed_generator.state), before)


@tf_only
def test_masked_eager_equals_xla():
    cases = []
    for mask in _MASKS + [[0.0] * 4]:
        cases.append((_t(np.array([1.0, 2.0, 3.0, 4.0]) * mask), mask))
    for distribution in ALL_DISTRIBUTIONS:
        make = functools.partial(RandomLossWeighting, distribution, seed=7)
        checks.assert_xla_matches_eager(make, cases, rtol=1e-5, atol=1e-7)
