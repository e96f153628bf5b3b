"""Tests of `AdaptiveWeighting` (reconstruction of Huq and Pervin, 2022)."""

import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.weighting.adaptive_weighting import AdaptiveWeighting


def _t(values):
    return tf.constant(values, dtype=tf.float32)


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
    w = weights.numpy()
    np.testing.assert_array_equal(np.argsort(w), np.argsort(losses))
    np.testing.assert_allclose(w.sum(), 4.0, rtol=1e-6)
    expected = _ratio(losses) if normalize == "ratio" else _softmax(losses, temperature)
    np.testing.assert_allclose(w, expected, rtol=1e-5)
    np.testing.assert_allclose(float(total), expected @ losses, rtol=1e-5)
    x = _t(losses)
    with tf.GradientTape() as tape:
        tape.watch(x)
        total, weights = strategy(x)
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), weights.numpy())


def test_softmax_temperature_limits():
    losses = _t([1.0, 2.0, 3.0])
    hot = AdaptiveWeighting(normalize="softmax", temperature=1e6)
    np.testing.assert_allclose(hot(losses)[1].numpy(), 1.0, atol=1e-5)
    cold = AdaptiveWeighting(normalize="softmax", temperature=1e-3)
    np.testing.assert_allclose(cold(losses)[1].numpy(), [0.0, 0.0, 3.0], atol=1e-5)


def test_epoch_mode_uses_previous_epoch_means():
    strategy = AdaptiveWeighting(mode="epoch")
    epochs = [[[1.0, 2.0], [3.0, 2.0]], [[1.0, 4.0], [1.0, 8.0], [4.0, 0.0]]]
    # First epoch: unit weights whatever the losses.
    for losses in epochs[0]:
        np.testing.assert_array_equal(strategy(_t(losses))[1].numpy(), [1.0, 1.0])
    strategy.on_epoch_end()
    for losses in epochs[1]:
        np.testing.assert_allclose(
            strategy(_t(losses))[1].numpy(), _ratio([2.0, 2.0]), rtol=1e-6
        )
    strategy.on_epoch_end()
    strategy.on_epoch_end()  # an epoch without steps keeps the last means
    _, weights = strategy(_t([100.0, 0.0]))
    np.testing.assert_allclose(weights.numpy(), _ratio([2.0, 4.0]), rtol=1e-6)


def test_training_false_changes_nothing():
    strategy = AdaptiveWeighting(mode="epoch")
    strategy.build((2,))
    strategy(_t([1.0, 2.0]), training=False)
    strategy.on_epoch_end()
    assert all(not np.any(v.numpy()) for v in strategy.weights)


@pytest.mark.parametrize("normalize", ["ratio", "softmax"])
def test_degenerate_inputs(normalize):
    strategy = AdaptiveWeighting(normalize=normalize)
    for scale in (1e-10, 1e10):
        _, w = strategy(_t([1.0, 2.0, 3.0]) * scale)
        assert np.all(np.isfinite(w.numpy()))
        np.testing.assert_allclose(w.numpy().sum(), 3.0, rtol=1e-5)
    for bad in ([0.0, 0.0, 0.0], [np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0]):
        _, w = strategy(_t(bad))
        np.testing.assert_array_equal(w.numpy(), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(AdaptiveWeighting()(_t([5.0]))[1].numpy(), [1.0])


def test_permutation_equivariance():
    losses = np.array([0.3, 2.0, 1.1], np.float32)
    perm = [1, 2, 0]
    strategy = AdaptiveWeighting(normalize="softmax")
    _, w = strategy(_t(losses))
    _, w_p = strategy(_t(losses[perm]))
    np.testing.assert_allclose(w.numpy()[perm], w_p.numpy(), rtol=1e-6)


@pytest.mark.parametrize("mode", ["batch", "epoch"])
def test_eager_equals_xla(mode):
    eager = AdaptiveWeighting(mode=mode, normalize="softmax", temperature=2.0)
    eager.build((3,))
    compiled = AdaptiveWeighting.from_config(eager.get_config())
    compiled.build((3,))

    @tf.function(jit_compile=True)
    def step(losses):
        return compiled(losses)

    rng = np.random.default_rng(0)
    for _ in range(3):
        for _ in range(2):
            losses = _t(rng.uniform(0.1, 4.0, 3))
            for a, b in zip(eager(losses), step(losses)):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
        eager.on_epoch_end()
        compiled.on_epoch_end()


def test_state_round_trip_and_reset():
    strategy = AdaptiveWeighting(mode="epoch")
    for epoch in ([[1.0, 3.0]], [[2.0, 1.0], [2.0, 3.0]]):
        for losses in epoch:
            strategy(_t(losses))
        strategy.on_epoch_end()
    strategy(_t([5.0, 1.0]))  # a partial epoch
    clone = AdaptiveWeighting.from_config(strategy.get_config())
    clone.build((2,))
    clone.set_weights(strategy.get_weights())
    for losses in ([1.0, 1.0], [3.0, 0.5]):
        for a, b in zip(strategy(_t(losses)), clone(_t(losses))):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        strategy.on_epoch_end()
        clone.on_epoch_end()
    strategy.reset_state()
    assert all(not np.any(v.numpy()) for v in strategy.weights)
    np.testing.assert_array_equal(strategy(_t([1.0, 9.0]))[1].numpy(), [1.0, 1.0])
    batch = AdaptiveWeighting()
    batch.build((2,))
    assert batch.weights == []
    batch.reset_state()
