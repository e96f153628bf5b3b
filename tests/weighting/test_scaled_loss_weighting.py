"""Tests of `ScaledLossWeighting` (SLW, Crawshaw and Kosecka, arXiv 2109.08218)."""

import keras
import missing_task_checks as checks
import numpy as np
import pytest
import tensorflow as tf
from backend_grads import tf_only, value_and_grad
from keras import ops
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp

import keras_mtl
from keras_mtl.weighting.scaled_loss_weighting import ScaledLossWeighting

pytestmark = pytest.mark.both_backends


def _t(values):
    return ops.convert_to_tensor(np.asarray(values, dtype="float32"))


def _reference(grads, eps=1e-5):
    """The authors' rule (mtcrawshaw/meta, branch slaw, `SLW._update_weights`
    in `meta/train/loss.py`) in float64 numpy: inverse gradient norms
    floored at EPSILON = 1e-5, normalised to the total initial weight T."""
    norms = np.linalg.norm(np.asarray(grads, np.float64), axis=1)
    inverse = 1.0 / np.maximum(norms, eps)
    return len(norms) * inverse / inverse.sum()


def _weights(strategy, grads, losses=None):
    grads = np.asarray(grads, np.float32)
    if losses is None:
        losses = np.ones(grads.shape[0], np.float32)
    return np.asarray(strategy(_t(losses), shared_grads=_t(grads))[1])


def test_registry_names_resolve():
    for name in ["slw", "scaled_loss_weighting"]:
        assert isinstance(keras_mtl.weighting.get(name), ScaledLossWeighting)


def test_config_round_trip_and_instance_shared_gradients():
    strategy = ScaledLossWeighting(gradients_of="all", epsilon=1e-3)
    config = strategy.get_config()
    assert (config["gradients_of"], config["epsilon"]) == ("all", 1e-3)
    rebuilt = ScaledLossWeighting.from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.shared_gradients == "all"
    assert ScaledLossWeighting().shared_gradients == "last_layer"
    assert ScaledLossWeighting.shared_gradients is None
    assert not ScaledLossWeighting.stateful
    assert not ScaledLossWeighting.differentiable_gradients


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gradients_of": "rep"}, "gradients_of"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"epsilon": "small"}, "epsilon"),
    ],
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaledLossWeighting(**kwargs)


def test_closed_form():
    # Norms 5, 1 and 2.5: 1 / n = [0.2, 1, 0.4], sum 1.6, w = 3 / 1.6 * that.
    grads = [[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [1.5, 0.0, 2.0]]
    w = _weights(ScaledLossWeighting(), grads)
    np.testing.assert_allclose(w, [0.375, 1.875, 0.75], rtol=1e-6)
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(4, 7)) * [[0.01], [1.0], [30.0], [2.0]]
    np.testing.assert_allclose(
        _weights(ScaledLossWeighting(), grads), _reference(grads), rtol=1e-5
    )


def test_weighted_gradient_norms_are_equal_whatever_the_loss_scales():
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(3, 10))
    strategy = ScaledLossWeighting()
    for scales in ([1.0, 1.0, 1.0], [1.0, 100.0, 0.01], [1e-3, 1e3, 7.0]):
        scaled = grads * np.array(scales)[:, None]  # L_t -> c_t L_t
        w = _weights(strategy, scaled)
        weighted = w * np.linalg.norm(scaled, axis=1)
        np.testing.assert_allclose(weighted, weighted[0], rtol=1e-5)
        np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-6)
    # Rescaling one task's loss by c divides its weight, relative to the
    # others, by c.
    base = _weights(strategy, grads)
    scaled = _weights(strategy, grads * np.array([[1.0], [50.0], [1.0]]))
    np.testing.assert_allclose(scaled[0] / scaled[1], 50 * base[0] / base[1], rtol=1e-5)


def test_objective_uses_constant_weights():
    strategy = ScaledLossWeighting()
    (total, weights), (grad, grad_of_grads) = value_and_grad(
        lambda x, g: strategy(x, shared_grads=g), [2.0, 3.0], [[1.0, 0.0], [0.0, 4.0]]
    )
    np.testing.assert_allclose(weights, [1.6, 0.4], rtol=1e-6)
    np.testing.assert_allclose(grad, [1.6, 0.4], rtol=1e-6)
    np.testing.assert_array_equal(grad_of_grads, 0.0)
    np.testing.assert_allclose(float(total), 1.6 * 2 + 0.4 * 3, rtol=1e-6)


def test_degenerate_inputs():
    strategy = ScaledLossWeighting()
    rng = np.random.default_rng(2)
    grads = rng.normal(size=(3, 5))
    for scale in (1e-10, 1e10):
        w = _weights(strategy, grads * scale)
        assert np.all(np.isfinite(w))
        np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-5)
    # Below eps every norm is floored: equal weights.
    np.testing.assert_allclose(_weights(strategy, grads * 1e-10), 1.0, rtol=1e-5)
    strategy = ScaledLossWeighting()
    np.testing.assert_allclose(_weights(strategy, np.zeros((2, 4))), [1.0, 1.0])
    # One zero gradient among non-zero ones: its norm is floored at eps, so
    # its weight is large but finite.
    w = _weights(strategy, [[0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(w, 2 * np.array([1e5, 1.0]) / (1e5 + 1.0), rtol=1e-5)
    np.testing.assert_array_equal(
        _weights(strategy, [[np.nan, 1.0], [1.0, 0.0]]), [1, 1]
    )
    with pytest.raises(ValueError, match="shared_grads"):
        strategy(_t([1.0, 2.0]))
    np.testing.assert_allclose(_weights(ScaledLossWeighting(), [[3.0, 4.0]]), [1.0])


def test_permutation_equivariance():
    rng = np.random.default_rng(3)
    grads = rng.normal(size=(4, 6)) * [[1.0], [0.1], [10.0], [3.0]]
    perm = [3, 1, 0, 2]
    strategy = ScaledLossWeighting()
    np.testing.assert_allclose(
        _weights(strategy, grads)[perm], _weights(strategy, grads[perm]), rtol=1e-6
    )


def _call(strategy, losses, grads, task_mask=None):
    return checks.default_call(
        strategy, losses, shared_grads=grads, task_mask=task_mask
    )


@tf_only
def test_eager_equals_xla():
    rng = np.random.default_rng(4)
    cases = []
    for _ in range(3):
        losses = _t(rng.uniform(0.1, 3.0, 3))
        grads = _t(rng.normal(size=(3, 5)) * rng.uniform(0.01, 10.0, (3, 1)))
        cases.append(((losses, grads), None))
    checks.assert_xla_matches_eager(ScaledLossWeighting, cases, call=_call, rtol=1e-5)


@tf_only
def test_state_round_trip_and_stateless():
    strategy = ScaledLossWeighting()
    strategy.build((2,))
    assert strategy.weights == []
    grads = _t([[1.0, 2.0], [0.5, 0.0]])
    checks.assert_state_round_trip(strategy, [(_t([1.0, 2.0]), grads)], call=_call)
    strategy.reset_state()  # stateless: nothing to do, must not raise
    training, _ = strategy(_t([1.0, 2.0]), shared_grads=grads, training=False)
    assert float(training) == float(strategy(_t([1.0, 2.0]), shared_grads=grads)[0])


@tf_only
@pytest.mark.parametrize("which", ["last_layer", "all"])
def test_model_step_uses_the_chosen_shared_gradients(which):
    # SGD with lr 0: the weights logged for the step are the closed form on
    # the per-task gradients of the last shared layer (or all shared ones).
    model = two_task_mlp(batch_norm=True)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=TWO_TASK_LOSSES,
        loss_weighting=ScaledLossWeighting(gradients_of=which),
    )
    x, y = two_task_data(n=8)
    variables = (
        model.last_shared_variables if which == "last_layer" else model.shared_variables
    )
    with tf.GradientTape(persistent=True) as tape:
        pred = model(x, training=True)
        cls = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"])
        reg = keras.losses.MeanSquaredError()(y["reg"], pred["reg"])
    grads = [
        np.concatenate([np.ravel(g) for g in tape.gradient(loss, variables)])
        for loss in (cls, reg)
    ]
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(
        [logs["cls_weight"], logs["reg_weight"]], _reference(grads), rtol=1e-5
    )


def _mtregression(sigmas, n=512, d_in=16, d_out=8, seed=0):
    """The MTRegression toy (methods.md C1) made small: targets
    sigma_t * tanh(x (B + E_t)), B ~ N(0, 10^2), E_t ~ N(0, 3.5^2)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0.0, 10.0, (d_in, d_out))
    specific = rng.normal(0.0, 3.5, (len(sigmas), d_in, d_out))
    x = rng.normal(0.0, 0.035, (n, d_in)).astype("float32")
    y = {
        f"t{t}": (s * np.tanh(x @ (shared + specific[t]))).astype("float32")
        for t, s in enumerate(sigmas)
    }
    return x, y


@tf_only
@pytest.mark.slow
def test_weights_go_from_inverse_scales_to_inverse_squared_scales():
    # Derivation: with y_t = sigma_t f_t(x), a head that has learned the
    # scale has weights ~ sigma_t and residuals ~ sigma_t, so the gradient
    # of the last shared layer is ~ sigma_t^2 and SLW's weights approach
    # 1 / sigma_t^2. At the start (heads not scaled yet) the residual alone
    # scales: n_t ~ sigma_t, w_t ~ 1 / sigma_t.
    sigmas = np.array([1.0, 3.0, 10.0])
    keras.utils.set_random_seed(0)
    x, y = _mtregression(sigmas)
    init = keras.initializers.GlorotUniform(seed=0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="tanh", kernel_initializer=init)(inputs)
    hidden = keras.layers.Dense(32, activation="tanh", kernel_initializer=init)(hidden)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {
            f"t{t}": keras.layers.Dense(8, kernel_initializer=init)(hidden)
            for t in range(3)
        },
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="mse",
        loss_weighting=ScaledLossWeighting(),
        steps_per_execution=8,
    )
    history = model.fit(x, y, batch_size=64, epochs=24, shuffle=False, verbose=0)
    weights = np.array([history.history[f"t{t}_weight"] for t in range(3)]).T
    inverse = 1.0 / sigmas
    inverse = 3 * inverse / inverse.sum()  # [2.093, 0.698, 0.209]
    ideal = 1.0 / sigmas**2
    ideal = 3 * ideal / ideal.sum()  # [2.676, 0.297, 0.027]
    first, last = weights[0], weights[-1]
    np.testing.assert_allclose(first, inverse, atol=0.1)  # first epoch
    assert np.mean((last - ideal) ** 2) < 0.1 * np.mean((last - inverse) ** 2), last
    assert np.mean((last - ideal) ** 2) < 0.02 * np.mean((1.0 - ideal) ** 2), last
    assert np.all(np.diff(last) < 0)


# --- Missing tasks ---------------------------------------------------------


@tf_only
def test_supports_missing_tasks():
    assert ScaledLossWeighting.supports_missing_tasks
    strategy = ScaledLossWeighting()
    strategy.build((3,))
    checks.assert_no_per_task_state(strategy, [1.0, 0.0, 1.0])  # stateless


@tf_only
def test_all_ones_mask_equals_the_unmasked_call():
    rng = np.random.default_rng(10)
    grads = _t(rng.normal(size=(3, 5)) * [[1.0], [10.0], [1e-3]])
    steps = [(_t([1.0, 2.0, 3.0]), grads)]
    checks.assert_all_ones_mask_is_no_mask(ScaledLossWeighting, steps, call=_call)


@tf_only
def test_absent_task_gets_zero_and_the_others_match_a_strategy_without_it():
    rng = np.random.default_rng(11)
    grads = rng.normal(size=(3, 5)) * [[1.0], [1.0], [20.0]]
    grads[1] = 0.0  # an absent task's row
    losses = np.array([1.0, 0.0, 3.0], np.float32)
    present = [0, 2]
    [((_, weights), _)] = checks.assert_absent_task_is_dropped(
        ScaledLossWeighting(),
        ScaledLossWeighting(),
        [1.0, 0.0, 1.0],
        [(_t(losses), _t(grads))],
        call=_call,
    )
    np.testing.assert_allclose(weights[present], _reference(grads[present]))
    np.testing.assert_allclose(weights.sum(), 2.0, rtol=1e-6)  # K
    # Unmasked, the zero row would take almost all the weight.
    assert _weights(ScaledLossWeighting(), grads)[1] > 2.9


@tf_only
def test_masked_results_are_finite():
    grads = np.array([[0.0, 0.0], [1e-10, 0.0], [1e10, 1e10]], np.float32)
    masks = ([0.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    results = checks.assert_masked_outputs_finite(
        ScaledLossWeighting(),
        [((_t([0.0, 1e-10, 1e10]) * _t(mask), _t(grads)), mask) for mask in masks],
        call=_call,
        zero_absent=False,
    )
    for (_, weights), mask in zip(results, masks):
        np.testing.assert_allclose(weights.sum(), sum(mask), rtol=1e-6)


@tf_only
def test_masked_eager_equals_xla():
    rng = np.random.default_rng(12)
    cases = []
    for mask in ([1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]):
        mask = _t(mask)
        grads = _t(rng.normal(size=(3, 4))) * mask[:, None]
        cases.append(((_t(rng.uniform(0.5, 2.0, 3)) * mask, grads), mask))
    checks.assert_xla_matches_eager(ScaledLossWeighting, cases, call=_call)
