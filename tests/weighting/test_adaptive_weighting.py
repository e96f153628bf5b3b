"""Tests of `AdaptiveWeighting` (reconstruction of Huq and Pervin, 2022)."""

import functools

import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.adaptive_weighting import AdaptiveWeighting

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _ratio(values):
    values = np.asarray(values, np.float64)
    return len(values) * values / values.sum()


def _softmax(values, temperature):
    values = np.asarray(values, np.float64) / temperature
    e = np.exp(values - values.max())
    return len(values) * e / e.sum()


def test_registry_names_resolve():
    for name in ["adaptive", "huq_pervin", "adaptive_weighting"]:
        assert isinstance(keras_mtl.weighting.get(name), AdaptiveWeighting)


def test_config_round_trip():
    strategy = AdaptiveWeighting(mode="epoch", normalize="softmax", temperature=0.5)
    config = strategy.get_config()
    assert (config["mode"], config["normalize"], config["temperature"]) == (
        "epoch",
        "softmax",
        0.5,
    )
    assert AdaptiveWeighting.from_config(config).get_config() == config


_INVALID_ARGUMENTS = [
    ({"mode": "step"}, "mode"),
    ({"normalize": "l1"}, "normalize"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": "warm"}, "temperature"),
]


def test_invalid_arguments_raise():
    for kwargs, match in _INVALID_ARGUMENTS:
        with pytest.raises(ValueError, match=match):
            AdaptiveWeighting(**kwargs)


@pytest.mark.parametrize(
    "normalize, temperature", [("ratio", 1.0), ("softmax", 1.0), ("softmax", 4.0)]
)
def test_batch_weights_follow_loss_order_and_sum_to_t(normalize, temperature):
    losses = np.array([0.7, 3.0, 0.1, 1.2], np.float32)
    strategy = AdaptiveWeighting(normalize=normalize, temperature=temperature)
    total, weights = strategy(_t(losses))
    w = np.asarray(weights)
    np.testing.assert_array_equal(np.argsort(w), np.argsort(losses))
    np.testing.assert_allclose(w.sum(), 4.0, rtol=1e-6)
    expected = _ratio(losses) if normalize == "ratio" else _softmax(losses, temperature)
    np.testing.assert_allclose(w, expected, rtol=1e-5)
    np.testing.assert_allclose(float(total), expected @ losses, rtol=1e-5)
    (_, weights), (grad,) = value_and_grad(strategy, losses, layers=[strategy])
    np.testing.assert_allclose(grad, weights)


def test_softmax_temperature_limits():
    losses = _t([1.0, 2.0, 3.0])
    hot = AdaptiveWeighting(normalize="softmax", temperature=1e6)
    np.testing.assert_allclose(np.asarray(hot(losses)[1]), 1.0, atol=1e-5)
    cold = AdaptiveWeighting(normalize="softmax", temperature=1e-3)
    np.testing.assert_allclose(np.asarray(cold(losses)[1]), [0.0, 0.0, 3.0], atol=1e-5)


def test_epoch_mode_uses_previous_epoch_means():
    strategy = AdaptiveWeighting(mode="epoch")
    epochs = [[[1.0, 2.0], [3.0, 2.0]], [[1.0, 4.0], [1.0, 8.0], [4.0, 0.0]]]
    # First epoch: unit weights whatever the losses.
    for losses in epochs[0]:
        np.testing.assert_array_equal(np.asarray(strategy(_t(losses))[1]), [1.0, 1.0])
    strategy.on_epoch_end()
    for losses in epochs[1]:
        np.testing.assert_allclose(
            np.asarray(strategy(_t(losses))[1]), _ratio([2.0, 2.0]), rtol=1e-6
        )
    strategy.on_epoch_end()
    strategy.on_epoch_end()  # an epoch without steps keeps the last means
    _, weights = strategy(_t([100.0, 0.0]))
    np.testing.assert_allclose(np.asarray(weights), _ratio([2.0, 4.0]), rtol=1e-6)


def test_training_false_changes_nothing():
    strategy = AdaptiveWeighting(mode="epoch")
    strategy.build((2,))
    strategy(_t([1.0, 2.0]), training=False)
    strategy.on_epoch_end()
    assert all(not np.any(np.asarray(v)) for v in strategy.weights)


@pytest.mark.parametrize("normalize", ["ratio", "softmax"])
def test_degenerate_inputs(normalize):
    strategy = AdaptiveWeighting(normalize=normalize)
    for scale in (1e-10, 1e10):
        _, w = strategy(_t([1.0, 2.0, 3.0]) * scale)
        assert np.all(np.isfinite(np.asarray(w)))
        np.testing.assert_allclose(np.asarray(w).sum(), 3.0, rtol=1e-5)
    for bad in ([0.0, 0.0, 0.0], [np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0]):
        _, w = strategy(_t(bad))
        np.testing.assert_array_equal(np.asarray(w), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(AdaptiveWeighting()(_t([5.0]))[1]), [1.0])


def test_permutation_equivariance():
    losses = np.array([0.3, 2.0, 1.1], np.float32)
    perm = [1, 2, 0]
    strategy = AdaptiveWeighting(normalize="softmax")
    _, w = strategy(_t(losses))
    _, w_p = strategy(_t(losses[perm]))
    np.testing.assert_allclose(np.asarray(w)[perm], np.asarray(w_p), rtol=1e-6)


@tf_only
@pytest.mark.parametrize("mode", ["batch", "epoch"])
def test_eager_equals_xla(mode):
    make = functools.partial(
        AdaptiveWeighting, mode=mode, normalize="softmax", temperature=2.0
    )
    rng = np.random.default_rng(0)
    epochs = [
        [(_t(rng.uniform(0.1, 4.0, 3)), None) for _ in range(2)] for _ in range(3)
    ]
    checks.assert_xla_matches_eager(make, checks.with_epoch_ends(epochs))


@tf_only
def test_state_round_trip_and_reset():
    strategy = AdaptiveWeighting(mode="epoch")
    for epoch in ([[1.0, 3.0]], [[2.0, 1.0], [2.0, 3.0]]):
        for losses in epoch:
            strategy(_t(losses))
        strategy.on_epoch_end()
    strategy(_t([5.0, 1.0]))  # a partial epoch
    steps = checks.with_epoch_ends([[_t([1.0, 1.0])], [_t([3.0, 0.5])]])
    checks.assert_state_round_trip(strategy, steps)
    strategy.reset_state()
    assert all(not np.any(np.asarray(v)) for v in strategy.weights)
    np.testing.assert_array_equal(np.asarray(strategy(_t([1.0, 9.0]))[1]), [1.0, 1.0])
    batch = AdaptiveWeighting()
    batch.build((2,))
    assert batch.weights == []
    batch.reset_state()


# --- Missing tasks ------------------------------------------------------

_KINDS = [
    ("batch", "ratio"),
    ("batch", "softmax"),
    ("epoch", "ratio"),
    ("epoch", "softmax"),
]


def _masked_epochs(strategy, epochs):
    """Each epoch a list of (losses, task_mask); returns every step's weights."""
    out = []
    for epoch in epochs:
        for losses, mask in epoch:
            mask = np.asarray(mask, np.float32)
            losses = np.asarray(losses, np.float32) * mask
            out.append(np.asarray(strategy(_t(losses), task_mask=_t(mask))[1]))
        strategy.on_epoch_end()
    return out


@tf_only
@pytest.mark.parametrize("mode, normalize", _KINDS)
def test_missing_tasks_all_present_mask_changes_nothing(mode, normalize):
    rng = np.random.default_rng(3)
    epochs = [[_t(x) for x in rng.uniform(0.1, 3.0, size=(2, 3))] for _ in range(3)]
    make = functools.partial(
        AdaptiveWeighting, mode=mode, normalize=normalize, temperature=0.7
    )
    *_, outputs = checks.assert_all_ones_mask_is_no_mask(
        make, checks.with_epoch_ends(epochs), rtol=1e-6
    )
    assert not np.allclose(outputs[-1][1], 1.0)


@tf_only
@pytest.mark.parametrize("normalize", ["ratio", "softmax"])
def test_batch_mode_absent_task_as_if_only_present_tasks_existed(normalize):
    losses = np.array([0.7, 0.0, 3.0, 1.2], np.float32)
    mask = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    strategy = AdaptiveWeighting(normalize=normalize, temperature=2.0)
    reference = AdaptiveWeighting(normalize=normalize, temperature=2.0)
    [((_, weights), _)] = checks.assert_absent_task_is_dropped(
        strategy, reference, mask, [_t(losses)]
    )
    expected = (
        _ratio(losses[mask > 0])
        if normalize == "ratio"
        else _softmax(losses[mask > 0], 2.0)
    )
    np.testing.assert_allclose(weights[mask > 0], expected, rtol=1e-6)
    # A single present task gets 1; none present gives 0; all finite.
    _, weights = strategy(_t([0.0, 0.0, 5.0, 0.0]), task_mask=_t([0, 0, 1, 0]))
    np.testing.assert_allclose(np.asarray(weights), [0.0, 0.0, 1.0, 0.0], rtol=1e-6)
    _, weights = strategy(_t([0.0] * 4), task_mask=_t([0.0] * 4))
    np.testing.assert_array_equal(np.asarray(weights), 0.0)


@pytest.mark.parametrize("normalize", ["ratio", "softmax"])
def test_epoch_mode_absent_task_as_if_only_present_tasks_existed(normalize):
    rng = np.random.default_rng(4)
    full = AdaptiveWeighting(mode="epoch", normalize=normalize)
    present_only = AdaptiveWeighting(mode="epoch", normalize=normalize)
    for losses in rng.uniform(0.1, 3.0, size=(2, 3)):
        full(_t(losses))
        present_only(_t(losses[[0, 2]]))
    full.on_epoch_end()
    present_only.on_epoch_end()
    # Epoch 1: task 1 labelled at one step of three; epoch 2: never.
    epoch_1 = rng.uniform(0.1, 3.0, size=(3, 3))
    schedule = [
        (epoch_1, [[1, 0, 1], [1, 1, 1], [1, 0, 1]]),
        (rng.uniform(0.1, 3.0, size=(2, 3)), [[1, 0, 1], [1, 0, 1]]),
    ]
    for epoch, masks in schedule:
        for losses, mask in zip(epoch, masks):
            mask = np.asarray(mask, np.float32)
            _, weights = full(_t(losses * mask), task_mask=_t(mask))
            _, expected = present_only(_t(losses[[0, 2]]))
            if mask[1] == 0:
                np.testing.assert_allclose(
                    np.asarray(weights)[[0, 2]], np.asarray(expected), rtol=1e-6
                )
                assert np.asarray(weights)[1] == 0.0
        full.on_epoch_end()
        present_only.on_epoch_end()
        np.testing.assert_allclose(
            np.asarray(full.previous_mean)[[0, 2]],
            np.asarray(present_only.previous_mean),
            rtol=1e-6,
        )
    # Task 1's mean is over its labelled step only; epoch 2 kept it.
    np.testing.assert_allclose(
        np.asarray(full.previous_mean)[1], epoch_1[1, 1], rtol=1e-6
    )


def test_epoch_mode_unit_weights_until_every_present_task_has_a_mean():
    # Documented choice: task 1 has no label in epoch 0.
    strategy = AdaptiveWeighting(mode="epoch")
    _masked_epochs(strategy, [[([1.0, 0.0, 3.0], [1, 0, 1])]])
    np.testing.assert_array_equal(np.asarray(strategy.epochs), [1.0, 0.0, 1.0])
    _, weights = strategy(_t([1.0, 1.0, 1.0]), task_mask=_t([1.0, 1.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(weights), [1.0, 1.0, 1.0])
    _, weights = strategy(_t([1.0, 0.0, 1.0]), task_mask=_t([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(weights), [0.5, 0.0, 1.5], rtol=1e-6)


@tf_only
def test_epoch_mode_absent_task_state_is_unchanged_and_restorable():
    strategy = AdaptiveWeighting(mode="epoch")
    _masked_epochs(strategy, [[([1.0, 2.0, 3.0], [1, 1, 1])]])
    strategy(_t([1.0, 2.0, 3.0]))
    assert [axis for _, axis in strategy.per_task_state()] == [0, 0, 0, 0]
    mask = _t([1.0, 0.0, 1.0])

    def step():
        _, weights = strategy(_t([0.5, 0.0, 2.0]), task_mask=mask)
        assert np.all(np.isfinite(np.asarray(weights)))

    # The strategy itself leaves the absent task's state alone.
    checks.assert_restore_keeps_absent_state(strategy, mask, step, moved="any")
    np.testing.assert_array_equal(np.asarray(strategy.current_steps), [2.0, 1.0, 2.0])


@tf_only
@pytest.mark.parametrize("mode", ["batch", "epoch"])
def test_masked_eager_equals_xla(mode):
    make = functools.partial(
        AdaptiveWeighting, mode=mode, normalize="softmax", temperature=2.0
    )
    rng = np.random.default_rng(5)
    masks = [[1, 0, 1], [1, 1, 1], [0, 1, 0], [0, 0, 0], [0, 1, 1]]
    epochs = []
    for epoch in range(3):
        epochs.append([])
        for i in range(2):
            mask = _t(masks[(2 * epoch + i) % len(masks)])
            epochs[-1].append((_t(rng.uniform(0.1, 4.0, 3)) * mask, mask))
    checks.assert_xla_matches_eager(make, checks.with_epoch_ends(epochs))
