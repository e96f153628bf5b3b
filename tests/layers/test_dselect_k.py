"""Tests of DSelectK (differentiable top-k mixture of experts)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from soft_sharing_checks import (
    assert_config_round_trip,
    assert_eager_equals_xla,
    assert_save_load_equal,
    tower_data,
    tower_losses,
    tower_model,
)

import keras_mtl
from keras_mtl.layers import DSelectK
from keras_mtl.layers.dselect_k import binary_codes, smooth_step

LOSSES = tower_losses(2)


def _data(n=8, dim=5, seed=0):
    return tower_data(2, n, dim, seed)


def _model(layer, dim=5):
    return tower_model(layer, 2, dim)


def _np_smooth_step(t, gamma):
    cubic = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5
    return np.where(t <= -gamma / 2, 0.0, np.where(t >= gamma / 2, 1.0, cubic))


def _np_experts(bank, x):
    """(B, D) -> (B, E, U) from an ExpertBank's weights (ReLU experts)."""
    h = np.repeat(x[:, None, :], bank.num_experts, axis=1)
    for kernel, bias in zip(bank.kernels, bank.biases):
        h = np.maximum(np.einsum("bed,edu->beu", h, np.array(kernel)) + bias, 0.0)
    return h


def _np_gates(layer, x):
    """Independent forward pass of the gates (per-example routing): expert
    weights (B, T, E) and selectors (B, T, k, E), codes from np.binary_repr
    read digit by digit."""
    num_experts, k, m = layer.num_experts, layer.num_nonzeros, layer.num_bits
    codes = np.array(
        [[int(c) for c in np.binary_repr(e, width=m)] for e in range(num_experts)]
    )
    weights, selectors = [], []
    for gate in layer.gates:
        z = np.einsum("bd,dkm->bkm", x, np.array(gate.z_kernel)) + np.array(gate.z_bias)
        s = _np_smooth_step(z, layer.gamma)[:, :, None, :]  # (B, k, 1, m)
        r = np.prod(np.where(codes == 1, s, 1 - s), axis=-1)  # (B, k, E)
        w = x @ np.array(gate.w_kernel) + np.array(gate.w_bias)
        sigma = np.exp(w - w.max(-1, keepdims=True))
        sigma /= sigma.sum(-1, keepdims=True)
        assert r.shape == (len(x), k, num_experts)
        weights.append(np.einsum("bk,bke->be", sigma, r))
        selectors.append(r)
    return np.stack(weights, 1), np.stack(selectors, 1)


def _randomize_gates(layer, scale, seed=0):
    """Gate logits large enough that some smooth steps saturate."""
    rng = np.random.default_rng(seed)
    if not layer.built:
        layer.build((None, 5))
    for gate in layer.gates:
        for v in gate.weights:
            v.assign(scale * rng.normal(size=v.shape).astype("float32"))


# --- the smooth step ---------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 2.5])
def test_smooth_step_closed_form_and_c1(gamma):
    t = np.linspace(-gamma, gamma, 401).astype("float64")
    t = np.concatenate([t, [-gamma / 2, gamma / 2, -10.0, 10.0]])
    tensor = tf.constant(t)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        s = smooth_step(tensor, gamma)
    grad = tape.gradient(s, tensor).numpy()
    s = s.numpy()
    np.testing.assert_allclose(s, _np_smooth_step(t, gamma), atol=1e-12)
    # Exactly 0 below -gamma/2 and 1 above gamma/2, with zero gradient.
    assert np.all(s[t <= -gamma / 2] == 0) and np.all(s[t >= gamma / 2] == 1)
    assert np.all(grad[np.abs(t) >= gamma / 2] == 0)
    # Inside: the derivative of the cubic, continuous and nonnegative.
    inside = np.abs(t) < gamma / 2
    np.testing.assert_allclose(
        grad[inside], -6 * t[inside] ** 2 / gamma**3 + 1.5 / gamma, atol=1e-12
    )
    assert np.all(grad >= 0)
    # C1: value and slope of the cubic tend to those outside at +-gamma/2.
    eps = 1e-6
    edges = np.array([-gamma / 2 + eps, gamma / 2 - eps])
    np.testing.assert_allclose(_np_smooth_step(edges, gamma), [0, 1], atol=1e-9)
    np.testing.assert_allclose(-6 * edges**2 / gamma**3 + 1.5 / gamma, 0, atol=1e-5)
    # Symmetry S(-t) = 1 - S(t).
    np.testing.assert_allclose(s[:401] + s[:401][::-1], 1.0, atol=1e-12)


@pytest.mark.both_backends
def test_binary_codes_are_msb_first_from_integers():
    assert binary_codes(5) == [
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 0.0],
        [0.0, 1.0, 1.0],
        [1.0, 0.0, 0.0],
    ]
    assert binary_codes(2) == [[0.0], [1.0]]
    # Every code distinct (the string-to-bool cast of the references makes
    # them all ones under NumPy >= 2).
    codes = binary_codes(8)
    assert len({tuple(c) for c in codes}) == 8


# --- gates -------------------------------------------------------------------


@pytest.mark.both_backends
def test_closed_form_of_selectors_weights_and_outputs():
    layer = DSelectK(num_tasks=2, num_experts=4, expert_units=[6, 3], gamma=1.5)
    x, _ = _data()
    outputs = layer(x)
    _randomize_gates(layer, 0.5)
    want_weights, want_selectors = _np_gates(layer, x)
    # Some steps saturated, some not: both branches are exercised.
    assert 0 < np.mean((want_selectors == 0) | (want_selectors == 1)) < 1
    np.testing.assert_allclose(
        np.array(layer.selector_outputs(x)), want_selectors, atol=1e-6
    )
    np.testing.assert_allclose(np.array(layer.gate_weights(x)), want_weights, atol=1e-6)
    outputs = layer(x)
    experts = _np_experts(layer.experts, x)
    for task, got in enumerate(outputs):
        want = np.einsum("be,beu->bu", want_weights[:, task], experts)
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.both_backends
def test_golden_values_of_the_authors_gate():
    # Expert weights and regulariser computed by the authors' DSelectKGate
    # (google-research dselect_k_moe/dselect_k_moe.py @38bbf30d, its binary
    # codes read as integers; example-conditioned, entropy weight 0.01) for
    # these gate weights. E = 5 (not a power of 2), k = 2, gamma = 1; a
    # quarter of the smooth steps are saturated.
    d, k, m = 3, 2, 3
    x = np.array([[0.5, -1.0, 2.0], [-0.3, 0.8, 0.1]], "float32")
    layer = DSelectK(
        num_tasks=1, num_experts=5, expert_units=2, num_nonzeros=k, entropy_reg=0.01
    )
    layer(x)
    gate = layer.gates[0]
    gate.z_kernel.assign((0.6 * np.sin(np.arange(d * k * m))).reshape(d, k, m))
    gate.z_bias.assign((0.2 * np.cos(np.arange(k * m))).reshape(k, m))
    gate.w_kernel.assign((0.5 * np.sin(1.0 + np.arange(d * k))).reshape(d, k))
    gate.w_bias.assign([0.1, -0.2])
    want = [
        [0.0277534, 0.0006701, 0.0012097, 0.2613325, 0.6426321],
        [0.1341288, 0.0415938, 0.0502622, 0.2340573, 0.1459041],
    ]
    np.testing.assert_allclose(np.array(layer.gate_weights(x))[:, 0], want, atol=2e-7)
    layer(x, training=True)
    np.testing.assert_allclose(float(layer.losses[0]), 5.526310920715332, rtol=1e-6)


@pytest.mark.both_backends
@pytest.mark.parametrize("routing", ["example", "static"])
def test_zero_logits_give_uniform_selectors(routing):
    layer = DSelectK(
        num_tasks=2,
        num_experts=5,
        expert_units=2,
        num_nonzeros=3,
        routing=routing,
        z_initializer="zeros",
    )
    x, _ = _data()
    selectors = np.array(layer.selector_outputs(x))
    np.testing.assert_allclose(selectors, 2.0**-3, atol=1e-7)  # m = 3 bits


@pytest.mark.both_backends
@pytest.mark.parametrize("num_experts, k", [(4, 2), (8, 3), (2, 1)])
def test_gate_weights_are_on_the_simplex_for_powers_of_two(num_experts, k):
    layer = DSelectK(
        num_tasks=2, num_experts=num_experts, expert_units=2, num_nonzeros=k
    )
    x, _ = _data()
    for scale in [0.01, 0.5, 5.0]:  # from near-uniform to saturated
        _randomize_gates(layer, scale)
        weights = np.array(layer.gate_weights(x))
        assert weights.shape == (8, 2, num_experts)
        assert np.all(weights >= 0)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)


@pytest.mark.both_backends
def test_unreachable_codes_leave_weights_summing_to_at_most_one():
    layer = DSelectK(num_tasks=2, num_experts=3, expert_units=2)
    x, _ = _data()
    _randomize_gates(layer, 0.5)
    sums = np.array(layer.gate_weights(x)).sum(-1)
    assert np.all(sums <= 1 + 1e-6) and np.any(sums < 0.99)


@pytest.mark.both_backends
def test_saturated_selector_picks_the_expert_of_its_code():
    # E = 4, k = 1, z = (+inf, -inf) selects code "10", expert 2.
    layer = DSelectK(
        num_tasks=1, num_experts=4, expert_units=3, num_nonzeros=1, routing="static"
    )
    x, _ = _data()
    layer(x)
    layer.gates[0].z_bias.assign([[10.0, -10.0]])
    np.testing.assert_array_equal(np.array(layer.gate_weights(x)), [[0, 0, 1, 0]])
    expert_2 = _np_experts(layer.experts, x)[:, 2]
    np.testing.assert_allclose(np.array(layer(x)[0]), expert_2, rtol=1e-5, atol=1e-6)


@pytest.mark.both_backends
def test_saturated_gates_mix_at_most_k_experts_per_example():
    layer = DSelectK(num_tasks=2, num_experts=8, expert_units=2, num_nonzeros=2)
    x, _ = _data(n=32)
    _randomize_gates(layer, 1000.0)
    selectors = np.array(layer.selector_outputs(x))
    assert np.all((selectors == 0) | (selectors == 1))
    np.testing.assert_array_equal(selectors.sum(-1), 1.0)  # one-hot
    weights = np.array(layer.gate_weights(x))
    assert (weights > 0).sum(-1).max() <= 2
    assert (weights > 0).sum(-1).min() >= 1


@pytest.mark.both_backends
def test_higher_rank_and_static_shapes():
    x = np.random.default_rng(1).normal(size=(2, 7, 5)).astype("float32")
    layer = DSelectK(num_tasks=3, num_experts=4, expert_units=[6, 4])
    assert [tuple(o.shape) for o in layer(x)] == [(2, 7, 4)] * 3
    assert layer.compute_output_shape((None, 7, 5)) == [(None, 7, 4)] * 3
    assert tuple(layer.gate_weights(x).shape) == (2, 7, 3, 4)
    assert tuple(layer.selector_outputs(x).shape) == (2, 7, 3, 2, 4)
    # Each position is gated independently: same as the flattened batch.
    flat = layer(x.reshape(14, 5))
    np.testing.assert_allclose(
        np.array(layer(x)[2]).reshape(14, 4), np.array(flat[2]), atol=1e-6
    )
    static = DSelectK(num_tasks=2, num_experts=4, expert_units=3, routing="static")
    assert [tuple(o.shape) for o in static(x)] == [(2, 7, 3)] * 2
    assert tuple(static.gate_weights(x).shape) == (2, 4)
    # Static gates: one weight vector for every example.
    weights = np.array(static.gate_weights(x))
    experts = _np_experts(static.experts, x.reshape(14, 5))
    want = np.einsum("e,beu->bu", weights[1], experts).reshape(2, 7, 3)
    np.testing.assert_allclose(np.array(static(x)[1]), want, rtol=1e-5, atol=1e-6)


# --- regularisers ------------------------------------------------------------


@pytest.mark.both_backends
@pytest.mark.parametrize("num_experts", [4, 3])
def test_regularisers_are_added_in_training_calls_only(num_experts):
    c = 0.3
    layer = DSelectK(
        num_tasks=2, num_experts=num_experts, expert_units=2, entropy_reg=c
    )
    x, _ = _data()
    layer(x)
    _randomize_gates(layer, 0.1)
    layer(x, training=False)
    assert layer.losses == []
    layer(x, training=True)
    assert len(layer.losses) == 1
    r = np.array(layer.selector_outputs(x))  # (B, T, k, E), every task
    assert 0 < np.mean((r == 0) | (r == 1)) < 1 and r.sum(-1).min() > 0
    want = c * np.sum(-r * np.log(r + 1e-6))
    if num_experts == 3:  # not a power of 2: sum over (B, T, k) of 1/sum_e r
        want += np.sum(1.0 / r.sum(-1))
    np.testing.assert_allclose(float(layer.losses[0]), want, rtol=1e-5)


@pytest.mark.both_backends
def test_a_selector_stuck_on_an_unreachable_code_costs_a_finite_loss():
    # E = 3: code "11" selects no expert; z = (+inf, +inf) puts r there.
    layer = DSelectK(
        num_tasks=1, num_experts=3, expert_units=2, num_nonzeros=1, routing="static"
    )
    x, _ = _data()
    layer(x)
    layer.gates[0].z_bias.assign([[10.0, 10.0]])
    np.testing.assert_array_equal(np.array(layer.gate_weights(x)), [[0, 0, 0]])
    layer(x, training=True)
    np.testing.assert_allclose(float(layer.losses[0]), 1e6, rtol=1e-5)


@pytest.mark.both_backends
def test_no_loss_for_powers_of_two_without_entropy_term():
    layer = DSelectK(num_tasks=2, num_experts=4, expert_units=2)
    x, _ = _data()
    layer(x, training=True)
    assert layer.losses == []


@pytest.mark.both_backends
def test_mixed_precision_keeps_the_regulariser_in_float32():
    # E = 3, z = (+inf, +inf): a selector on the unreachable code "11" costs
    # 1 / 1e-6, which overflows float16 (max 65504) but not float32.
    layer = DSelectK(
        num_tasks=1,
        num_experts=3,
        expert_units=2,
        num_nonzeros=1,
        routing="static",
        dtype="mixed_float16",
    )
    x, _ = _data()
    layer(x)
    layer.gates[0].z_bias.assign([[10.0, 10.0]])
    outputs = layer(x, training=True)
    assert outputs[0].dtype == "float16"
    assert layer.losses[0].dtype == "float32"
    np.testing.assert_allclose(float(layer.losses[0]), 1e6, rtol=1e-3)
    weights = layer.gate_weights(x)
    assert weights.dtype == "float16"
    np.testing.assert_array_equal(np.array(weights), [[0, 0, 0]])


def _train(layer, steps, x, y, lr=0.05):
    inputs = keras.Input((x.shape[1],))
    towers = layer(inputs)
    model = keras_mtl.MultiTaskModel(
        inputs,
        {"a": keras.layers.Dense(1)(towers[0]), "b": keras.layers.Dense(1)(towers[1])},
    )
    model.compile(
        optimizer=keras.optimizers.Adam(lr), loss="mse", steps_per_execution=steps
    )
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)


@pytest.mark.slow
def test_entropy_regulariser_makes_the_gates_select_at_most_k_experts():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = {t: rng.normal(size=(16, 1)).astype("float32") for t in "ab"}
    fractions = {}
    for c in [0.1, 0.0]:
        keras.utils.set_random_seed(0)
        layer = DSelectK(
            num_tasks=2, num_experts=4, expert_units=3, num_nonzeros=2, entropy_reg=c
        )
        _train(layer, 200, x, y)
        selectors = np.array(layer.selector_outputs(x))
        fractions[c] = np.mean((selectors == 0) | (selectors == 1))
        weights = np.array(layer.gate_weights(x))
        if c > 0:
            # Every selector is binary (one-hot): each gate mixes <= k experts.
            assert fractions[c] == 1.0
            np.testing.assert_array_equal(selectors.sum(-1), 1.0)
            assert (weights > 0).sum(-1).max() <= 2
            np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
        else:
            # The same training without the regulariser leaves dense gates.
            assert (weights > 0).sum(-1).max() > 2
    assert fractions[0.0] < 0.9


# --- Keras contract ----------------------------------------------------------


def _one_step_weights(model, x, y, initial, **compile_kwargs):
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSSES, **compile_kwargs)
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    return history.history["loss"][0], [np.array(v) for v in model.weights]


@pytest.mark.slow
def test_one_fit_step_under_xla_equals_eager():
    layer = DSelectK(
        num_tasks=2,
        num_experts=3,  # both regularisers are on
        expert_units=[4, 3],
        entropy_reg=0.01,
    )
    model = _model(layer)
    x, y = _data()
    _randomize_gates(layer, 0.3)
    initial = model.get_weights()
    loss_xla, xla = _one_step_weights(model, x, y, initial, jit_compile=True)
    loss_eager, eager = _one_step_weights(model, x, y, initial, run_eagerly=True)
    assert np.isfinite(loss_xla)
    np.testing.assert_allclose(loss_xla, loss_eager, rtol=1e-5)
    moved = [not np.array_equal(a, b) for a, b in zip(initial, xla)]
    assert all(moved)  # experts, gates and heads all train
    for a, b in zip(xla, eager):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.both_backends
@pytest.mark.parametrize("routing", ["example", "static"])
def test_eager_equals_xla(routing):
    layer = DSelectK(num_tasks=2, num_experts=4, expert_units=[4, 2], routing=routing)
    x, _ = _data()
    layer(x)
    _randomize_gates(layer, 0.5)
    assert_eager_equals_xla(lambda v: layer(v), x)


@pytest.mark.both_backends
def test_save_load_and_config_round_trip(tmp_path):
    layer = DSelectK(
        num_tasks=2,
        num_experts=5,
        expert_units=(4, 3),
        num_nonzeros=3,
        gamma=2.0,
        entropy_reg=1e-3,
        expert_activation="tanh",
        kernel_regularizer=keras.regularizers.L2(1e-4),
        z_initializer=keras.initializers.RandomUniform(-0.3, 0.3, seed=1),
        name="dselect",
    )
    model = _model(layer)
    x, _ = _data()
    clone = assert_config_round_trip(layer)
    config = clone.get_config()
    assert config["num_nonzeros"] == 3 and config["gamma"] == 2.0
    assert config["w_initializer"] is None and "gate_use_bias" not in config
    loaded = assert_save_load_equal(model, x, tmp_path)
    for task, want in model.predict(x, verbose=0).items():  # bit for bit
        np.testing.assert_array_equal(loaded.predict(x, verbose=0)[task], want)
    assert isinstance(loaded.get_layer("dselect"), DSelectK)
    np.testing.assert_array_equal(
        np.array(loaded.get_layer("dselect").gate_weights(x)),
        np.array(layer.gate_weights(x)),
    )


@pytest.mark.both_backends
def test_seeded_initializers_are_reproducible_and_distinct_per_gate():
    x, _ = _data()
    twins = []
    for _ in range(2):
        layer = DSelectK(
            num_tasks=2,
            num_experts=4,
            expert_units=2,
            kernel_initializer=keras.initializers.GlorotUniform(seed=2),
            z_initializer=keras.initializers.RandomUniform(-1, 1, seed=3),
        )
        layer(x)
        twins.append(layer)
    seeded = [
        layer.experts.weights + [v for g in layer.gates for v in (g.z_kernel, g.z_bias)]
        for layer in twins
    ]
    for a, b in zip(*seeded):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    gates = twins[0].gates
    assert not np.allclose(np.array(gates[0].z_kernel), np.array(gates[1].z_kernel))
    # Unseeded default w: the authors' range U(-0.05, 0.05), new per gate.
    w = [np.array(g.w_kernel) for g in gates]
    assert np.abs(w[0]).max() <= 0.05 and np.abs(w[0]).max() > 0.01
    assert not np.allclose(w[0], w[1])


@pytest.mark.both_backends
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_experts=1), "num_experts"),
        (dict(num_nonzeros=0), "num_nonzeros"),
        (dict(num_nonzeros=5), "num_nonzeros"),
        (dict(gamma=0.0), "gamma"),
        (dict(entropy_reg=-1.0), "entropy_reg"),
        (dict(routing="task"), "routing"),
        (dict(expert_units=[3, 0]), "expert_units"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    base = dict(num_tasks=2, num_experts=4, expert_units=3)
    with pytest.raises(ValueError, match=match):
        DSelectK(**{**base, **kwargs})
