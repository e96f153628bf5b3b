"""Tests of `GradNorm` (Chen et al., ICML 2018)."""

import functools

import keras
import missing_task_checks as checks
import numpy as np
import pytest
import tensorflow as tf
from backend_grads import tf_only, value_and_grad
from keras import ops

import keras_mtl
from keras_mtl.weighting.grad_norm import GradNorm

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _grads_with_norms(norms, width=3, seed=0):
    """A (T, width) gradient matrix whose rows have the given norms."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(len(norms), width))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows * np.asarray(norms, np.float64)[:, None]


def _reference(steps, alpha=1.5, lr=0.025, optimizer="adam"):
    """GradNorm re-derived in float64 numpy from the authors' follow-up code
    (mtcrawshaw/meta, branch slaw, `GradNorm._update_weights` in
    `meta/train/loss.py`): L(0) = first-step losses, G_t = w_t n_t,
    Target = mean(G) r^alpha held constant, one torch-Adam step (betas 0.9,
    0.999, eps 1e-8) on sum_t |G_t - Target_t|, then w <- T w / sum(w). The
    weights are returned before each step's update (the paper's
    Algorithm 1). `steps` is a list of (losses, gradient norms)."""
    num_tasks = len(steps[0][0])
    w = np.ones(num_tasks)
    m = np.zeros(num_tasks)
    v = np.zeros(num_tasks)
    initial = None
    used = []
    for k, (losses, norms) in enumerate(steps, start=1):
        losses = np.asarray(losses, np.float64)
        norms = np.asarray(norms, np.float64)
        used.append(w.copy())
        if initial is None:
            initial = losses
        ratio = losses / initial
        r = ratio / ratio.mean()
        g_norm = w * norms
        target = g_norm.mean() * r**alpha
        grad = np.sign(g_norm - target) * norms
        if optimizer == "adam":
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad**2
            w = w - lr * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8)
        else:
            w = w - lr * grad
        w = num_tasks * w / w.sum()
    return np.array(used), w


def _feed(strategy, steps, seed=0):
    used = []
    for k, (losses, norms) in enumerate(steps):
        grads = _grads_with_norms(norms, seed=seed + k)
        _, weights = strategy(_t(losses), shared_grads=_t(grads))
        used.append(np.asarray(weights))
    return np.array(used)


def _random_steps(num_steps=12, num_tasks=3, seed=0):
    rng = np.random.default_rng(seed)
    losses = rng.uniform(0.5, 2.0, (num_steps, num_tasks)) * [1.0, 3.0, 0.2][:num_tasks]
    norms = rng.uniform(0.1, 1.0, (num_steps, num_tasks)) * [1.0, 5.0, 0.5][:num_tasks]
    return list(zip(losses, norms))


def test_registry_names_resolve():
    for name in ["gradnorm", "grad_norm"]:
        assert isinstance(keras_mtl.weighting.get(name), GradNorm)


def test_config_round_trip_and_instance_shared_gradients():
    strategy = GradNorm(
        alpha=0.12,
        weight_learning_rate=0.1,
        weight_optimizer="sgd",
        initial_loss="first_epoch",
        gradients_of="all",
    )
    config = strategy.get_config()
    rebuilt = GradNorm.from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.shared_gradients == "all"
    assert GradNorm().shared_gradients == "last_layer"
    assert GradNorm.shared_gradients is None  # the class attribute is untouched
    assert not GradNorm.differentiable_gradients
    assert GradNorm.stateful


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -0.5}, "alpha"),
        ({"alpha": "x"}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"weight_learning_rate": 0.0}, "weight_learning_rate"),
        ({"weight_learning_rate": True}, "weight_learning_rate"),
        ({"weight_optimizer": "rmsprop"}, "weight_optimizer"),
        ({"initial_loss": "zero"}, "initial_loss"),
        ({"gradients_of": "first_layer"}, "gradients_of"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GradNorm(**kwargs)


def test_two_steps_worked_by_hand():
    # SGD, lr 0.1, alpha 1, two tasks.
    # Step 1: L = L(0) = [2, 4], n = [1, 3], w = [1, 1]: G = [1, 3],
    #   mean 2, r = [1, 1], Target = [2, 2], dL/dw = sign([-1, 1]) * n =
    #   [-1, 3], w = [1.1, 0.7] -> renormalised 2 w / 1.8 = [11/9, 7/9].
    # Step 2: L = [1, 4]: L/L(0) = [0.5, 1], r = [2/3, 4/3]; n = [2, 2],
    #   G = [22/9, 14/9], mean 2, Target = [4/3, 8/3], dL/dw = [2, -2],
    #   w = [11/9 - 0.2, 7/9 + 0.2] (sum 2) = [0.0222 + 1, 0.9778].
    strategy = GradNorm(alpha=1.0, weight_learning_rate=0.1, weight_optimizer="sgd")
    _, used = strategy(_t([2.0, 4.0]), shared_grads=_t([[1.0, 0.0], [0.0, 3.0]]))
    np.testing.assert_array_equal(np.asarray(used), [1.0, 1.0])
    np.testing.assert_allclose(
        np.asarray(strategy.loss_weights), [11 / 9, 7 / 9], rtol=1e-6
    )
    total, used = strategy(_t([1.0, 4.0]), shared_grads=_t([[0.0, 2.0], [2.0, 0.0]]))
    np.testing.assert_allclose(np.asarray(used), [11 / 9, 7 / 9], rtol=1e-6)
    np.testing.assert_allclose(float(total), 11 / 9 + 4 * 7 / 9, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(strategy.loss_weights), [11 / 9 - 0.2, 7 / 9 + 0.2], rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(strategy.initial_losses), [2.0, 4.0])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_matches_the_reference_algorithm(optimizer):
    steps = _random_steps()
    lr = 0.025 if optimizer == "adam" else 0.05
    strategy = GradNorm(weight_optimizer=optimizer, weight_learning_rate=lr)
    got = _feed(strategy, steps)
    expected, final = _reference(steps, lr=lr, optimizer=optimizer)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(strategy.loss_weights), final, rtol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 3.0, rtol=1e-5)
    assert np.all(got > 0)
    # The weights moved: a test with constant weights would not notice.
    assert np.ptp(final) > 0.1


def test_objective_uses_constant_weights():
    strategy = GradNorm()
    strategy(_t([1.0, 1.0]), shared_grads=_t([[1.0], [3.0]]))
    (total, weights), (grad,) = value_and_grad(
        lambda x: strategy(x, shared_grads=_t([[1.0], [3.0]])),
        [2.0, 3.0],
        layers=[strategy],
    )
    np.testing.assert_allclose(grad, weights)
    np.testing.assert_allclose(
        float(total), float(np.dot(weights, [2.0, 3.0])), rtol=1e-6
    )


def test_the_task_with_larger_gradients_loses_weight():
    # Equal training rates: the targets are the mean norm, so the weights
    # move towards equal weighted norms w_t n_t.
    strategy = GradNorm(weight_learning_rate=0.05)
    for _ in range(60):
        strategy(_t([1.0, 1.0]), shared_grads=_t([[1.0, 0.0], [0.0, 4.0]]))
    w = np.asarray(strategy.loss_weights)
    assert w[0] > w[1]
    # Equal weighted norms: w = 2 * [4, 1] / 5 = [1.6, 0.4], up to the
    # oscillation of the Adam steps around it.
    np.testing.assert_allclose(w, [1.6, 0.4], atol=0.1)


def test_slower_task_gets_a_larger_target():
    # Equal gradient norms; task 1's loss stays at L(0) while task 0's
    # halves: r = [2/3, 4/3], so task 1 gets the larger weight.
    strategy = GradNorm()
    strategy(_t([1.0, 1.0]), shared_grads=_t([[1.0], [1.0]]))
    for _ in range(5):
        strategy(_t([0.5, 1.0]), shared_grads=_t([[1.0], [1.0]]))
    w = np.asarray(strategy.loss_weights)
    assert w[1] > 1.0 > w[0]


def test_first_epoch_mode_is_equal_weighting_until_the_first_epoch_ends():
    strategy = GradNorm(initial_loss="first_epoch", weight_optimizer="sgd")
    grads = _t([[1.0, 0.0], [0.0, 3.0]])
    for losses in ([2.0, 4.0], [4.0, 8.0]):
        _, used = strategy(_t(losses), shared_grads=grads)
        np.testing.assert_array_equal(np.asarray(used), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(strategy.loss_weights), [1.0, 1.0])
    strategy.on_epoch_end()
    np.testing.assert_allclose(np.asarray(strategy.initial_losses), [3.0, 6.0])
    # From now on, GradNorm with L(0) = the mean loss of the first epoch:
    # L = L(0) gives r = 1 and the SGD step of the hand-worked test.
    strategy(_t([3.0, 6.0]), shared_grads=grads)
    w = 2 * np.array([1.025, 0.925]) / 1.95
    np.testing.assert_allclose(np.asarray(strategy.loss_weights), w, rtol=1e-6)
    strategy.on_epoch_end()  # later epochs leave L(0) alone
    np.testing.assert_allclose(np.asarray(strategy.initial_losses), [3.0, 6.0])


def test_training_false_and_missing_gradients():
    strategy = GradNorm()
    strategy(_t([1.0, 2.0]), shared_grads=_t([[1.0], [5.0]]))
    before = [np.asarray(v).copy() for v in strategy.weights]
    total, weights = strategy(_t([3.0, 1.0]), training=False)
    for b, v in zip(before, strategy.weights):
        np.testing.assert_array_equal(b, np.asarray(v))
    np.testing.assert_array_equal(np.asarray(weights), before[0])
    np.testing.assert_allclose(float(total), float(np.dot(before[0], [3.0, 1.0])))
    with pytest.raises(ValueError, match="shared_grads"):
        strategy(_t([1.0, 2.0]))
    with pytest.raises(ValueError, match="3 tasks"):
        strategy(_t([1.0, 2.0]), shared_grads=_t(np.ones((3, 2))))


def test_degenerate_inputs_keep_finite_positive_weights_summing_to_t():
    for scale in (1e-10, 1e10):
        strategy = GradNorm()
        got = _feed(
            strategy,
            [(losses * scale, norms * scale) for losses, norms in _random_steps()],
        )
        assert np.all(np.isfinite(got)) and np.all(got > 0)
        np.testing.assert_allclose(
            np.asarray(strategy.loss_weights).sum(), 3.0, rtol=1e-5
        )
    # One task: the target is its own norm, the weight stays 1.
    strategy = GradNorm()
    for _ in range(3):
        strategy(_t([2.0]), shared_grads=_t([[3.0, 4.0]]))
    np.testing.assert_allclose(np.asarray(strategy.loss_weights), [1.0])
    # Zero gradients and zero losses: no movement, no NaN.
    strategy = GradNorm()
    for _ in range(3):
        strategy(_t([0.0, 0.0]), shared_grads=_t(np.zeros((2, 4))))
    np.testing.assert_array_equal(np.asarray(strategy.loss_weights), [1.0, 1.0])
    # A huge SGD step is floored and renormalised: weights stay positive.
    strategy = GradNorm(weight_optimizer="sgd", weight_learning_rate=100.0)
    strategy(_t([1.0, 1.0]), shared_grads=_t([[1.0], [2.0]]))
    w = np.asarray(strategy.loss_weights)
    assert np.all(w > 0) and np.isclose(w.sum(), 2.0)


def test_non_finite_inputs_leave_the_weights_alone():
    strategy = GradNorm()
    strategy(_t([1.0, 2.0]), shared_grads=_t([[1.0], [5.0]]))
    before = [np.asarray(v).copy() for v in strategy.weights]
    strategy(_t([1.0, 2.0]), shared_grads=_t([[np.nan], [5.0]]))
    strategy(_t([np.inf, 2.0]), shared_grads=_t([[1.0], [5.0]]))
    for b, v in zip(before, strategy.weights):
        np.testing.assert_array_equal(b, np.asarray(v), err_msg=v.path)
    # A non-finite first step does not record L(0).
    fresh = GradNorm()
    fresh(_t([np.nan, 1.0]), shared_grads=_t([[1.0], [5.0]]))
    assert float(np.asarray(fresh.active)) == 0.0
    np.testing.assert_array_equal(np.asarray(fresh.loss_weights), [1.0, 1.0])


def test_permutation_equivariance():
    steps = _random_steps()
    perm = [2, 0, 1]
    got = _feed(GradNorm(), steps)
    permuted = [(losses[perm], norms[perm]) for losses, norms in steps]
    got_p = _feed(GradNorm(), permuted)
    np.testing.assert_allclose(got[:, perm], got_p, rtol=1e-5)


def _call(strategy, losses, grads, task_mask=None):
    return checks.default_call(
        strategy, losses, shared_grads=grads, task_mask=task_mask
    )


def _steps(steps, masks=None, epoch_end_after=None):
    """`(losses, norms)` steps as `call` arguments (the k-th gradients drawn
    with seed k), each with its mask when `masks` are given, and an
    `END_OF_EPOCH` after step `epoch_end_after`."""
    out = []
    for k, (losses, norms) in enumerate(steps):
        step = (_t(losses), _t(_grads_with_norms(norms, seed=k)))
        out.append(step if masks is None else (step, masks[k]))
        if k == epoch_end_after:
            out.append(checks.END_OF_EPOCH)
    return out


@tf_only
@pytest.mark.parametrize("initial_loss", ["first_step", "first_epoch"])
def test_eager_equals_xla(initial_loss):
    make = functools.partial(GradNorm, initial_loss=initial_loss)
    cases = _steps(_random_steps(8), masks=[None] * 8, epoch_end_after=3)
    eager, _ = checks.assert_xla_matches_eager(make, cases, call=_call, rtol=1e-5)
    assert np.ptp(np.asarray(eager.loss_weights)) > 0.01


@tf_only
@pytest.mark.parametrize("initial_loss", ["first_step", "first_epoch"])
def test_state_round_trip_and_reset(initial_loss):
    steps = _random_steps(10)
    strategy = GradNorm(initial_loss=initial_loss)
    _feed(strategy, steps[:4])
    strategy.on_epoch_end()
    _feed(strategy, steps[4:7])
    checks.assert_state_round_trip(strategy, _steps(steps[7:]), call=_call)
    fresh = GradNorm(initial_loss=initial_loss)
    fresh.build((3,))
    strategy.reset_state()
    assert len(strategy.weights) == len(fresh.weights)
    for a, b in zip(strategy.weights, fresh.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


# --- In a MultiTaskModel ---------------------------------------------------


def _scaled_regression(sigmas, n=256, d_in=8, seed=0):
    """Two regression tasks sigma_t * tanh(x . a_t / 2) that need different
    features of a small shared layer (methods.md C1, reduced)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(len(sigmas), d_in))
    x = rng.normal(size=(n, d_in)).astype("float32")
    y = {
        f"t{t}": (s * np.tanh(x @ a[t] / 2))[:, None].astype("float32")
        for t, s in enumerate(sigmas)
    }
    return x, y


def _regression_model(num_tasks, d_in=8, hidden=8):
    init = keras.initializers.GlorotUniform(seed=0)
    inputs = keras.Input((d_in,))
    shared = keras.layers.Dense(hidden, activation="tanh", kernel_initializer=init)(
        inputs
    )
    outputs = {
        f"t{t}": keras.layers.Dense(1, kernel_initializer=init)(shared)
        for t in range(num_tasks)
    }
    return keras_mtl.MultiTaskModel(inputs, outputs)


def _train_ratios(loss_weighting, sigmas, epochs=40):
    """Trains with SGD; returns the loss ratios L_t(end) / L_t(start) on the
    whole data and the last epoch's mean weights."""
    keras.utils.set_random_seed(0)
    x, y = _scaled_regression(sigmas)
    model = _regression_model(len(sigmas))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss="mse",
        loss_weighting=loss_weighting,
        steps_per_execution=4,
    )
    names = [f"t{t}_loss" for t in range(len(sigmas))]
    # The arrays as `tf.data` data sets of the batches fit (64, in order) and
    # evaluate (Keras' default 32) make of them: Keras' array pipeline costs
    # tens of milliseconds per epoch, most of the time of 40 short epochs.
    data = tf.data.Dataset.from_tensor_slices((x, y))
    start = model.evaluate(data.batch(32), verbose=0, return_dict=True)
    history = model.fit(data.batch(64), epochs=epochs, shuffle=False, verbose=0)
    end = model.evaluate(data.batch(32), verbose=0, return_dict=True)
    ratios = np.array([end[k] / start[k] for k in names])
    weights = np.array(
        [history.history[f"t{t}_weight"][-1] for t in range(len(sigmas))]
    )
    return ratios, weights


@tf_only
@pytest.mark.slow
def test_training_rates_are_balanced_on_scale_imbalanced_regression():
    # Output scales sigma = [1, 10]: with equal weighting the large task
    # dominates the shared layer and trains about 10x faster (relative to
    # its initial loss) than the small one; GradNorm brings the training
    # rates together and gives the large-sigma task the smaller weight.
    sigmas = [1.0, 10.0]
    ew_ratios, _ = _train_ratios("ew", sigmas)
    gn_ratios, gn_weights = _train_ratios(GradNorm(), sigmas)
    ew_spread = abs(np.log(ew_ratios[0] / ew_ratios[1]))
    gn_spread = abs(np.log(gn_ratios[0] / gn_ratios[1]))
    assert ew_spread > 1.5, ew_ratios
    assert gn_spread < 0.5 * ew_spread, (gn_ratios, ew_ratios)
    assert gn_weights[1] < 0.5 < 1.5 < gn_weights[0], gn_weights
    np.testing.assert_allclose(gn_weights.sum(), 2.0, rtol=1e-5)


@tf_only
def test_all_shared_variables_option_in_a_model():
    # gradients_of="all" asks the model for the gradients of every shared
    # variable; one step moves the weights like the standalone call on them.
    x, y = _scaled_regression([1.0, 10.0], n=32)
    model = _regression_model(2)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss="mse",
        loss_weighting=GradNorm(gradients_of="all"),
    )
    with tf.GradientTape(persistent=True) as tape:
        pred = model(x, training=True)
        losses = [tf.reduce_mean(tf.square(pred[t] - y[t])) for t in ("t0", "t1")]
    grads = np.stack(
        [
            np.concatenate(
                [np.ravel(g) for g in tape.gradient(loss, model.shared_variables)]
            )
            for loss in losses
        ]
    )
    reference = GradNorm()
    reference(_t([float(v) for v in losses]), shared_grads=_t(grads))
    model.train_on_batch(x, y)
    np.testing.assert_allclose(
        np.asarray(model.loss_weighting.loss_weights),
        np.asarray(reference.loss_weights),
        rtol=1e-5,
    )


# --- Missing tasks ---------------------------------------------------------


def _masked_step(strategy, losses, norms, mask, seed=0):
    mask = np.asarray(mask, np.float32)
    grads = _grads_with_norms(np.asarray(norms) * mask, seed=seed)
    return strategy(
        _t(np.asarray(losses) * mask), shared_grads=_t(grads), task_mask=_t(mask)
    )


@tf_only
@pytest.mark.parametrize("initial_loss", ["first_step", "first_epoch"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_supports_missing_tasks_and_marks_per_task_state(initial_loss, optimizer):
    strategy = GradNorm(initial_loss=initial_loss, weight_optimizer=optimizer)
    strategy.build((3,))
    checks.assert_all_state_is_per_task(strategy, len(strategy.weights))


@tf_only
@pytest.mark.parametrize("initial_loss", ["first_step", "first_epoch"])
def test_all_ones_mask_equals_the_unmasked_call(initial_loss):
    make = functools.partial(GradNorm, initial_loss=initial_loss)
    steps = _steps(_random_steps(8), epoch_end_after=3)
    plain, *_ = checks.assert_all_ones_mask_is_no_mask(
        make, steps, call=_call, rtol=1e-6
    )
    assert np.ptp(np.asarray(plain.loss_weights)) > 0.01


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_absent_task_gets_zero_and_the_others_match_a_strategy_without_it(optimizer):
    # GradNorm on the present tasks alone renormalises their weights to sum
    # to K; the masked step keeps their sum instead (see the docstring), so
    # the new weights agree up to that one factor; the rest of the state
    # agrees exactly.
    steps = _random_steps(8, num_tasks=3)
    full = GradNorm(alpha=1.0, weight_optimizer=optimizer, weight_learning_rate=0.1)
    _feed(full, steps[:4])
    present = [0, 2]
    mask = [1.0, 0.0, 1.0]
    for k, (losses, norms) in enumerate(steps[4:]):
        alone = GradNorm.from_config(full.get_config())
        alone.build((2,))
        alone.set_weights([w[present] for w in full.get_weights()])
        before = np.asarray(full.loss_weights).copy()
        total, used = _masked_step(full, losses, norms, mask, seed=k)
        grads = _grads_with_norms(norms, seed=k)[present]
        expected_total, expected = alone(_t(losses[present]), shared_grads=_t(grads))
        np.testing.assert_array_equal(np.asarray(used), before * mask)
        np.testing.assert_array_equal(np.asarray(used)[present], np.asarray(expected))
        np.testing.assert_allclose(float(total), float(expected_total), rtol=1e-6)
        after = np.asarray(full.loss_weights)
        factor = before[present].sum() / 2.0
        np.testing.assert_allclose(
            after[present], factor * np.asarray(alone.loss_weights), rtol=1e-5
        )
        assert after[1] == before[1]
        np.testing.assert_allclose(after.sum(), 3.0, rtol=1e-6)
        assert np.max(np.abs(after - before)) > 1e-4
        for a, b in zip(full.weights, alone.weights):
            if a.path.endswith("loss_weights"):
                continue
            np.testing.assert_allclose(
                np.asarray(a)[present], np.asarray(b), rtol=1e-6, err_msg=a.path
            )


def test_initial_loss_is_recorded_at_the_first_present_step():
    strategy = GradNorm(weight_optimizer="sgd", weight_learning_rate=0.1)
    _masked_step(strategy, [2.0, 5.0, 4.0], [1.0, 1.0, 3.0], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(strategy.recorded), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(strategy.initial_losses), [2.0, 0.0, 4.0])
    assert float(np.asarray(strategy.active)) == 0.0
    _masked_step(strategy, [1.0, 3.0, 4.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(strategy.initial_losses), [2.0, 3.0, 4.0])
    assert float(np.asarray(strategy.active)) == 1.0
    # An absent first-step loss of 0 never becomes L(0): no division by 0.
    assert np.all(np.isfinite(np.asarray(strategy.loss_weights)))


def test_first_epoch_mode_records_a_late_task_after_its_first_epoch():
    strategy = GradNorm(initial_loss="first_epoch", weight_optimizer="sgd")
    # Epoch 0: task 2 never present; equal weighting.
    for losses in ([2.0, 4.0, 0.0], [4.0, 8.0, 0.0]):
        _, used = _masked_step(strategy, losses, [1.0, 3.0, 0.0], [1.0, 1.0, 0.0])
        np.testing.assert_array_equal(np.asarray(used), [1.0, 1.0, 0.0])
    strategy.on_epoch_end()
    np.testing.assert_array_equal(np.asarray(strategy.recorded), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(np.asarray(strategy.initial_losses), [3.0, 6.0, 0.0])
    # Epoch 1: task 2 present; GradNorm runs on tasks 0 and 1 only (their
    # sum, 2, is kept), task 2 keeps weight 1 and accumulates its mean.
    for losses in ([3.0, 6.0, 1.0], [3.0, 6.0, 3.0]):
        _masked_step(strategy, losses, [1.0, 3.0, 2.0], [1.0, 1.0, 1.0])
    w = np.asarray(strategy.loss_weights)
    assert w[2] == 1.0 and w[0] > 1.0 > w[1]
    np.testing.assert_allclose(w[:2].sum(), 2.0, rtol=1e-6)
    strategy.on_epoch_end()
    np.testing.assert_allclose(np.asarray(strategy.initial_losses), [3.0, 6.0, 2.0])
    np.testing.assert_array_equal(np.asarray(strategy.recorded), [1.0, 1.0, 1.0])
    _masked_step(strategy, [3.0, 6.0, 2.0], [1.0, 3.0, 2.0], [1.0, 1.0, 1.0])
    assert np.asarray(strategy.loss_weights)[2] != 1.0


@tf_only
@pytest.mark.parametrize("initial_loss", ["first_step", "first_epoch"])
def test_restore_absent_tasks_keeps_the_absent_state(initial_loss):
    strategy = GradNorm(initial_loss=initial_loss)
    _feed(strategy, _random_steps(3))
    strategy.on_epoch_end()
    _feed(strategy, _random_steps(2, seed=1))
    mask = [1.0, 1.0, 0.0]
    before, moved = checks.assert_restore_keeps_absent_state(
        strategy,
        mask,
        lambda: _masked_step(strategy, [1.0, 2.0, 0.0], [1.0, 0.2, 0.0], mask),
        moved="any",
    )
    # The weights and the Adam moments moved.
    assert sum(np.any(moved[p][:2] != before[p][:2]) for p in before) >= 3


@tf_only
@pytest.mark.parametrize("initial_loss", ["first_step", "first_epoch"])
def test_masked_results_are_finite(initial_loss):
    cases = [
        ([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 1.0]),
        ([0.0, 1e-10, 1e10], [0.0, 1e-10, 1e10], [0.0, 1.0, 1.0]),
        ([0.0, 0.0, 5.0], [0.0, 0.0, 5.0], [0.0, 0.0, 1.0]),
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]),
    ]
    for losses, norms, mask in cases:
        strategy = GradNorm(initial_loss=initial_loss)
        steps = _steps([(losses, norms)] * 3, masks=[mask] * 3)
        checks.assert_masked_outputs_finite(
            strategy,
            [c for step in steps for c in (step, checks.END_OF_EPOCH)],
            call=_call,
        )
        w = np.asarray(strategy.loss_weights)
        assert np.all(w > 0) and np.isclose(w.sum(), 3.0, rtol=1e-5)


@tf_only
@pytest.mark.parametrize("initial_loss", ["first_step", "first_epoch"])
def test_masked_eager_equals_xla(initial_loss):
    make = functools.partial(GradNorm, initial_loss=initial_loss)
    masks = [
        np.array([1.0, float(k % 3 != 1), float(k % 2 == 0)], np.float32)
        for k in range(8)
    ]
    steps = [
        (losses * m, norms * m) for (losses, norms), m in zip(_random_steps(8), masks)
    ]
    cases = _steps(steps, masks=masks, epoch_end_after=3)
    eager, _ = checks.assert_xla_matches_eager(make, cases, call=_call, rtol=1e-5)
    assert np.ptp(np.asarray(eager.loss_weights)) > 0.01
