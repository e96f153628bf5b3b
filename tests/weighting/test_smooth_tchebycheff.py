"""Tests of `SmoothTchebycheff` (Lin et al., ICML 2024)."""

import functools

import missing_task_checks as checks
import numpy as np
import pytest
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.smooth_tchebycheff import SmoothTchebycheff

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _built(num_tasks=2, **kwargs):
    strategy = SmoothTchebycheff(**kwargs)
    strategy.build((num_tasks,))
    return strategy


def _value_and_grad(strategy, losses, training=True):
    (total, weights), (grad,) = value_and_grad(
        lambda x: strategy(x, training=training), losses, layers=[strategy]
    )
    return float(total), weights, grad


def _libmtl_objective(losses, nadir, mu, shift=None):
    """LibMTL/weighting/STCH.py after the warm-up, in float64 numpy:
    l = log(L / nadir + 1e-20); loss = mu * log(sum(exp((l - max l) / mu))) * T
    where max l is detached: pass `shift` to hold it constant."""
    losses = np.asarray(losses, np.float64)
    log_losses = np.log(losses / nadir + 1e-20)
    if shift is None:
        shift = np.max(log_losses)
    return losses.size * mu * np.log(np.sum(np.exp((log_losses - shift) / mu))), shift


def _numeric_gradient(fn, x, h=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h * max(1.0, abs(x[i]))
        grad[i] = (fn(x + e) - fn(x - e)) / (2 * e[i])
    return grad


def test_registry_and_config_round_trip():
    for name in [
        "stch",
        "smooth_tchebycheff",
        "SmoothTchebycheff",
        "Smooth-Tchebycheff",
    ]:
        assert isinstance(keras_mtl.weighting.get(name), SmoothTchebycheff)
    assert SmoothTchebycheff.registry_name == "stch"
    strategy = SmoothTchebycheff(
        mu=0.5,
        warmup_epochs=2,
        preference=[1.0, 2.0],
        ideal_point=[0.0, -1.0],
        normalize=False,
    )
    config = strategy.get_config()
    assert config["mu"] == 0.5 and config["warmup_epochs"] == 2
    assert config["preference"] == [1.0, 2.0]
    assert config["ideal_point"] == [0.0, -1.0]
    assert config["normalize"] is False
    assert SmoothTchebycheff.from_config(config).get_config() == config
    restored = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert restored.get_config() == config
    defaults = SmoothTchebycheff().get_config()
    assert defaults["mu"] == 1.0 and defaults["warmup_epochs"] == 4
    assert defaults["normalize"] is True


def test_invalid_arguments_raise():
    cases = [
        ({"mu": 0.0}, "mu=0.0"),
        ({"mu": "small"}, "mu='small'"),
        ({"warmup_epochs": -1}, "warmup_epochs=-1"),
        ({"warmup_epochs": 1.5}, "warmup_epochs=1.5"),
        ({"preference": [1.0, 0.0]}, r"preference=\[1.0, 0.0\]"),
        ({"preference": 1.0}, "preference=1.0"),
        ({"ideal_point": [float("nan")]}, r"ideal_point=\[nan\]"),
        ({"normalize": "yes"}, "normalize='yes'"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            SmoothTchebycheff(**kwargs)
    with pytest.raises(ValueError, match="2 `preference` values"):
        _built(3, preference=[1.0, 1.0])


def test_raw_closed_form_and_weights_sum_to_t():
    preference = np.array([1.0, 2.0, 0.5])
    ideal = np.array([0.1, 0.0, -0.3])
    losses = np.array([0.8, 0.6, 1.5])
    mu = 0.3
    strategy = _built(
        3, mu=mu, preference=list(preference), ideal_point=list(ideal), normalize=False
    )
    total, weights, grad = _value_and_grad(strategy, losses)
    u = preference * (losses - ideal) / mu
    expected = 3 * mu * np.log(np.sum(np.exp(u)))
    p = np.exp(u - u.max()) / np.exp(u - u.max()).sum()
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    np.testing.assert_allclose(weights, 3 * p * preference, rtol=1e-5)
    np.testing.assert_allclose(grad, weights, rtol=1e-5)
    # With the uniform preference the weights sum to T.
    _, uniform_weights, _ = _value_and_grad(_built(3, mu=mu, normalize=False), losses)
    np.testing.assert_allclose(uniform_weights.sum(), 3.0, rtol=1e-6)
    assert np.all(uniform_weights > 0)


def test_small_mu_tends_to_the_tchebycheff_maximum():
    preference = np.array([1.0, 3.0, 0.5])
    ideal = np.array([0.0, 0.5, -1.0])
    losses = np.array([2.0, 1.2, 1.0])
    terms = preference * (losses - ideal)  # [2.0, 2.1, 1.0]: task 1 is worst
    for mu in (1.0, 0.1, 0.01, 1e-3):
        strategy = _built(
            3,
            mu=mu,
            preference=list(preference),
            ideal_point=list(ideal),
            normalize=False,
        )
        total, weights, _ = _value_and_grad(strategy, losses)
        # max <= g_mu <= max + mu log T (times T).
        assert (
            3 * terms.max() - 1e-5 <= total <= 3 * (terms.max() + mu * np.log(3)) + 1e-5
        )
    np.testing.assert_allclose(total, 3 * terms.max(), rtol=1e-4)
    # All the weight goes to the worst task: T * lambda_worst.
    np.testing.assert_allclose(weights, [0.0, 9.0, 0.0], atol=1e-3)


def test_large_mu_tends_to_the_linear_scalarization():
    losses = np.array([1.0, 2.0, 4.0])
    _, weights, _ = _value_and_grad(_built(3, mu=1e4, normalize=False), losses)
    np.testing.assert_allclose(weights, 1.0, rtol=1e-3)


def test_libmtl_warm_up_and_normalization_schedule():
    strategy = _built(2, mu=0.5, warmup_epochs=1)
    epochs = [
        [[2.0, 8.0], [1.8, 7.0]],  # epoch 0: warm-up only
        [[1.5, 6.0], [1.3, 4.0]],  # epoch 1: warm-up, losses accumulated
    ]
    for batches in epochs:
        for losses in batches:
            total, weights, grad = _value_and_grad(strategy, losses)
            # LibMTL: loss = sum(log(L + 1e-20)).
            np.testing.assert_allclose(total, np.sum(np.log(losses)), rtol=1e-6)
            np.testing.assert_allclose(weights, 1.0 / np.asarray(losses), rtol=1e-6)
            np.testing.assert_allclose(grad, weights, rtol=1e-6)
        strategy.on_epoch_end()
    nadir = np.mean(epochs[1], axis=0)  # mean of epoch W = 1 only
    np.testing.assert_allclose(np.asarray(strategy.normalizers), nadir, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(strategy.loss_count), 2.0)

    # Epoch 2: the STCH objective on log-normalised losses. Same gradient as
    # LibMTL's formula, value larger by the detached shift T * max(l).
    losses = np.array([1.2, 3.0])
    total, weights, grad = _value_and_grad(strategy, losses)
    libmtl_value, shift = _libmtl_objective(losses, nadir, 0.5)
    np.testing.assert_allclose(total, libmtl_value + 2 * shift, rtol=1e-5)
    libmtl_grad = _numeric_gradient(
        lambda x: _libmtl_objective(x, nadir, 0.5, shift=shift)[0], losses
    )
    np.testing.assert_allclose(weights, libmtl_grad, rtol=1e-4)
    np.testing.assert_allclose(grad, weights, rtol=1e-5)
    # No more accumulation after epoch W.
    np.testing.assert_allclose(np.asarray(strategy.loss_count), 2.0)
    strategy.on_epoch_end()
    np.testing.assert_allclose(np.asarray(strategy.normalizers), nadir, rtol=1e-6)


def test_normalized_mode_is_invariant_to_loss_scales():
    def run(scale):
        strategy = _built(2, mu=0.2, warmup_epochs=0)
        strategy(_t(np.array([2.0, 5.0]) * scale))
        strategy.on_epoch_end()
        total, weights, _ = _value_and_grad(strategy, np.array([1.0, 4.0]) * scale)
        return total, weights * scale  # weight times scale: gradient wrt L/scale

    base, scaled = run(np.array([1.0, 1.0])), run(np.array([1.0, 1000.0]))
    np.testing.assert_allclose(base[0], scaled[0], rtol=1e-5)
    np.testing.assert_allclose(base[1], scaled[1], rtol=1e-5)


def test_evaluation_does_not_accumulate():
    strategy = _built(2, warmup_epochs=0)
    strategy(_t([1.0, 2.0]), training=False)
    np.testing.assert_array_equal(np.asarray(strategy.loss_sum), 0.0)
    assert float(np.asarray(strategy.loss_count)) == 0.0
    strategy(_t([1.0, 2.0]), training=True)
    np.testing.assert_array_equal(np.asarray(strategy.loss_sum), [1.0, 2.0])


@tf_only
def test_eager_and_xla_agree_in_every_phase():
    losses = _t([0.7, 2.5, 1.1])
    for kwargs in (
        {"normalize": False, "mu": 0.3, "preference": [1.0, 0.5, 2.0]},
        {"normalize": True, "warmup_epochs": 0, "mu": 0.5},
    ):
        # The warm-up epoch (if any), then the STCH epoch.
        checks.assert_xla_matches_eager(
            functools.partial(_built, 3, **kwargs),
            checks.with_epoch_ends([[(losses, None)]] * 2),
            rtol=1e-5,
            state_rtol=1e-6,
        )


@tf_only
def test_state_round_trip_and_reset():
    strategy = _built(2, warmup_epochs=1, mu=0.5)
    for losses in ([2.0, 3.0], [1.0, 2.0]):
        strategy(_t(losses))
        strategy.on_epoch_end()
    checks.assert_state_round_trip(strategy, [_t([0.8, 1.5])])
    assert int(np.asarray(strategy.epoch)) == 2
    strategy.reset_state()
    assert int(np.asarray(strategy.epoch)) == 0
    np.testing.assert_array_equal(np.asarray(strategy.normalizers), 1.0)
    np.testing.assert_array_equal(np.asarray(strategy.loss_sum), 0.0)
    assert float(np.asarray(strategy.loss_count)) == 0.0
    total, _ = strategy(_t([1.0, 2.0]))
    np.testing.assert_allclose(float(total), np.log(2.0), rtol=1e-6)  # warm-up again


def test_degenerate_inputs_give_finite_results():
    strategy = _built(3, warmup_epochs=0, mu=0.1)
    strategy(_t([0.0, 1.0, 2.0]))  # a zero loss during the normalisation epoch
    strategy.on_epoch_end()
    assert np.all(np.asarray(strategy.normalizers) >= 1e-12)
    for losses in ([0.0, 1.0, 2.0], [1e-10, 1e10, 1.0], [1.0, 1.0, 1.0]):
        total, weights, grad = _value_and_grad(strategy, losses)
        assert np.isfinite(total)
        assert np.all(np.isfinite(weights)) and np.all(np.isfinite(grad))
    raw = _built(2, mu=1e-3, normalize=False)
    total, weights, grad = _value_and_grad(raw, [1e10, 1e-10])
    assert np.isfinite(total) and np.all(np.isfinite(grad))
    single = _built(1, normalize=False)
    _, weights, _ = _value_and_grad(single, [3.0])
    np.testing.assert_allclose(weights, [1.0])


def test_permutation_equivariance():
    preference = np.array([1.0, 2.0, 0.5])
    losses = np.array([0.9, 0.4, 2.0])
    perm = np.array([2, 0, 1])
    a = _built(3, mu=0.4, preference=list(preference), normalize=False)
    b = _built(3, mu=0.4, preference=list(preference[perm]), normalize=False)
    total_a, weights_a, _ = _value_and_grad(a, losses)
    total_b, weights_b, _ = _value_and_grad(b, losses[perm])
    np.testing.assert_allclose(total_a, total_b, rtol=1e-6)
    np.testing.assert_allclose(weights_a[perm], weights_b, rtol=1e-6)


# --- Missing tasks ------------------------------------------------------


def _masked(strategy, losses, task_mask=None, training=True):
    """Objective, weights, gradient with respect to the losses."""
    mask = None if task_mask is None else _t(task_mask)
    total, weights, grad = checks.loss_call(strategy, losses, mask, training=training)
    return float(total), np.asarray(weights), np.asarray(grad)


_RAW = {
    "normalize": False,
    "mu": 0.3,
    "preference": [1.0, 0.5, 2.0],
    "ideal_point": [0.1, 0.0, -0.2],
}


@tf_only
def test_missing_tasks_all_present_mask_changes_nothing():
    # Warm-up, normalisation epoch, STCH.
    steps = checks.with_epoch_ends([[[0.7, 2.5, 1.1], [0.5, 2.0, 1.3]]] * 3)
    for kwargs in (_RAW, {"warmup_epochs": 1, "mu": 0.5}):
        make = functools.partial(_built, 3, **kwargs)
        checks.assert_all_ones_mask_is_no_mask(
            make, steps, call=checks.loss_call, rtol=1e-6
        )


@tf_only
def test_raw_absent_task_as_if_only_present_tasks_existed():
    strategy = _built(3, **_RAW)
    present_only = _built(
        2,
        normalize=False,
        mu=0.3,
        preference=[_RAW["preference"][0], _RAW["preference"][2]],
        ideal_point=[_RAW["ideal_point"][0], _RAW["ideal_point"][2]],
    )
    [((total, _, _), _)] = checks.assert_absent_task_is_dropped(
        strategy,
        present_only,
        [1.0, 0.0, 1.0],
        [[0.8, 0.0, 0.6]],
        call=checks.loss_call,
        per_task=(False, True, True),
    )
    # K * mu * logsumexp over the present tasks, in numpy.
    u = np.array([1.0, 2.0]) * (np.array([0.8, 0.6]) - np.array([0.1, -0.2])) / 0.3
    np.testing.assert_allclose(total, 2 * 0.3 * np.log(np.exp(u).sum()), rtol=1e-6)


@tf_only
def test_normalized_absent_task_as_if_only_present_tasks_existed():
    rng = np.random.default_rng(12)
    full = _built(3, warmup_epochs=1, mu=0.5)
    present_only = _built(2, warmup_epochs=1, mu=0.5)
    mask = np.array([1.0, 0.0, 1.0], np.float32)
    # Epoch 0 (warm-up) and epoch 1 (normalisation): task 1 labelled at one
    # step of epoch 1 only.
    epoch_1 = rng.uniform(0.2, 3.0, size=(3, 3))
    schedule = [
        (rng.uniform(0.2, 3.0, size=(2, 3)), [[1, 0, 1], [1, 1, 1]]),
        (epoch_1, [[1, 0, 1], [1, 1, 1], [1, 0, 1]]),
    ]
    for batch, masks in schedule:
        for losses, m in zip(batch, masks):
            m = np.asarray(m, np.float32)
            got = _masked(full, losses * m, m)
            expected = _masked(present_only, losses[[0, 2]])
            if m[1] == 0:
                np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
                np.testing.assert_allclose(got[1][[0, 2]], expected[1], rtol=1e-6)
                np.testing.assert_allclose(got[2][[0, 2]], expected[2], rtol=1e-6)
                assert got[1][1] == 0.0 and got[2][1] == 0.0
        full.on_epoch_end()
        present_only.on_epoch_end()
    # Task 1's normaliser: the mean over its single labelled step.
    np.testing.assert_allclose(
        np.asarray(full.normalizers),
        [epoch_1[:, 0].mean(), epoch_1[1, 1], epoch_1[:, 2].mean()],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(np.asarray(full.task_loss_count), [3.0, 1.0, 3.0])
    assert float(np.asarray(full.loss_count)) == 3.0
    # Epoch 2: the STCH objective over the present tasks alone.
    for losses in rng.uniform(0.2, 3.0, size=(2, 3)):
        got = _masked(full, losses * mask, mask)
        expected = _masked(present_only, losses[[0, 2]])
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
        np.testing.assert_allclose(got[1][[0, 2]], expected[1], rtol=1e-5)
        np.testing.assert_allclose(got[2][[0, 2]], expected[2], rtol=1e-5)
        assert got[1][1] == 0.0 and got[2][1] == 0.0


@tf_only
def test_task_absent_during_the_normalisation_epoch_keeps_normaliser_one():
    strategy = _built(2, warmup_epochs=0)
    _masked(strategy, [2.0, 0.0], [1.0, 0.0])
    strategy.on_epoch_end()
    np.testing.assert_allclose(np.asarray(strategy.normalizers), [2.0, 1.0])


@tf_only
def test_absent_task_state_is_unchanged_and_restorable():
    strategy = _built(3, warmup_epochs=1)
    strategy(_t([1.0, 2.0, 3.0]))
    strategy.on_epoch_end()
    strategy(_t([1.0, 2.0, 3.0]))  # epoch 1 accumulates
    names = {v.name: axis for v, axis in strategy.per_task_state()}
    assert names == {"loss_sum": 0, "normalizers": 0, "task_loss_count": 0}
    mask = _t([1.0, 0.0, 1.0])

    def step():
        total, weights = strategy(_t([0.5, 0.0, 2.0]), task_mask=mask)
        assert np.isfinite(float(total)) and np.all(np.isfinite(np.asarray(weights)))

    checks.assert_restore_keeps_absent_state(strategy, mask, step, moved="any")
    np.testing.assert_allclose(np.asarray(strategy.loss_sum), [1.5, 2.0, 5.0])
    np.testing.assert_allclose(np.asarray(strategy.task_loss_count), [2.0, 1.0, 2.0])
    assert float(np.asarray(strategy.loss_count)) == 2.0  # shared, advances


@tf_only
def test_masked_degenerate_inputs_are_finite():
    epoch = [
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ([0.0, 1e10, 0.0], [0.0, 1.0, 0.0]),
        ([1e-10, 0.0, 1e10], [1.0, 0.0, 1.0]),
    ]
    for kwargs in (_RAW, {"warmup_epochs": 0, "mu": 0.1}):
        results = checks.assert_masked_outputs_finite(
            _built(3, **kwargs),
            checks.with_epoch_ends([epoch] * 2),
            call=checks.loss_call,
            per_task=(False, True, True),
        )
        for (total, _, _), (_, mask) in zip(results, epoch * 2):
            if not any(mask):
                assert total == 0.0


@tf_only
def test_masked_eager_equals_xla():
    masks = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    losses = np.array([0.7, 2.5, 1.1], np.float32)
    epoch = [(_t(losses * mask), mask) for mask in masks]
    for kwargs in (_RAW, {"normalize": True, "warmup_epochs": 0, "mu": 0.5}):
        checks.assert_xla_matches_eager(
            functools.partial(_built, 3, **kwargs),
            checks.with_epoch_ends([epoch] * 2),
            rtol=1e-5,
            state_rtol=1e-6,
        )
