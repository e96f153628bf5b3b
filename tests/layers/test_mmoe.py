"""Tests of MMoE (multi-gate mixture-of-experts)."""

import keras
import numpy as np
import pytest
from soft_sharing_checks import (
    assert_config_round_trip,
    assert_eager_equals_xla,
    assert_one_fit_step_trains,
    assert_save_load_equal,
    task_gradients,
    tower_data,
    tower_losses,
    tower_model,
)

from keras_mtl.layers.mmoe import MMoE

LOSSES = tower_losses(3)


def _data(n=8, dim=5, seed=0):
    return tower_data(3, n, dim, seed)


def _model(layer, dim=5):
    return tower_model(layer, 3, dim)


def _numpy_mmoe(layer, x):
    """Independent re-derivation of the forward pass from the weights."""
    h = np.repeat(x[:, None, :], layer.num_experts, axis=1)  # (B, E, D)
    for kernel, bias in zip(layer.experts.kernels, layer.experts.biases):
        h = np.maximum(np.einsum("bed,edu->beu", h, np.array(kernel)) + bias, 0.0)
    outputs = []
    for gate in layer.gates:
        logits = x @ np.array(gate.kernel)
        g = np.exp(logits - logits.max(-1, keepdims=True))
        g /= g.sum(-1, keepdims=True)
        outputs.append(np.einsum("be,beu->bu", g, h))
    return outputs


@pytest.mark.both_backends
def test_output_shapes_and_closed_form():
    layer = MMoE(num_tasks=3, num_experts=4, expert_units=[6, 2])
    x, _ = _data()
    outputs = layer(x)
    assert len(outputs) == 3
    assert [tuple(o.shape) for o in outputs] == [(8, 2)] * 3
    assert layer.compute_output_shape((None, 5)) == [(None, 2)] * 3
    for got, want in zip(outputs, _numpy_mmoe(layer, x)):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.both_backends
def test_higher_rank_inputs_mix_along_last_axis():
    layer = MMoE(num_tasks=2, num_experts=3, expert_units=4)
    x = np.random.default_rng(1).normal(size=(2, 7, 5)).astype("float32")
    outputs = layer(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 7, 4)] * 2
    # Each position is mixed independently: same as the flattened batch.
    flat = layer(x.reshape(14, 5))
    np.testing.assert_allclose(
        np.array(outputs[1]).reshape(14, 4), np.array(flat[1]), rtol=1e-5, atol=1e-6
    )


@pytest.mark.both_backends
def test_gates_are_distributions_and_differ_per_task():
    layer = MMoE(num_tasks=3, num_experts=4, expert_units=2)
    x, _ = _data()
    gates = np.array(layer.gate_weights(x))
    assert gates.shape == (8, 3, 4)
    assert np.all(gates >= 0)
    np.testing.assert_allclose(gates.sum(-1), 1.0, atol=1e-6)
    assert not np.allclose(gates[:, 0], gates[:, 1])


@pytest.mark.both_backends
def test_one_expert_is_the_shared_bottom_model():
    # E = 1: every gate is 1, every task gets the same expert output.
    layer = MMoE(num_tasks=3, num_experts=1, expert_units=3)
    x, _ = _data()
    outputs = [np.array(o) for o in layer(x)]
    expert = np.maximum(
        x @ np.array(layer.experts.kernels[0])[0]
        + np.array(layer.experts.biases[0])[0],
        0,
    )
    for output in outputs:
        np.testing.assert_allclose(output, expert, rtol=1e-5, atol=1e-6)


@pytest.mark.both_backends
def test_experts_get_distinct_initial_weights_also_when_seeded():
    x, _ = _data()
    for init in ["glorot_uniform", keras.initializers.GlorotUniform(seed=3)]:
        layer = MMoE(
            num_tasks=2, num_experts=3, expert_units=2, kernel_initializer=init
        )
        layer(x)
        kernel = np.array(layer.experts.kernels[0])
        assert not np.allclose(kernel[0], kernel[1])
        gates = [np.array(g.kernel) for g in layer.gates]
        assert not np.allclose(gates[0], gates[1])
    # A seeded initializer is reproducible.
    twins = []
    for _ in range(2):
        layer = MMoE(
            num_tasks=2,
            num_experts=3,
            expert_units=2,
            kernel_initializer=keras.initializers.GlorotUniform(seed=3),
        )
        layer(x)
        twins.append(layer.get_weights())
    for a, b in zip(*twins):
        np.testing.assert_array_equal(a, b)


@pytest.mark.both_backends
def test_a_gate_only_receives_gradient_from_its_own_task():
    layer = MMoE(num_tasks=3, num_experts=2, expert_units=3)
    model = _model(layer)
    x, _ = _data()
    gate_kernels = [gate.kernel for gate in layer.gates]
    for t, task in enumerate(["a", "b", "c"]):
        grads = task_gradients(model, x, task, gate_kernels)
        for k, grad in enumerate(grads):
            if k == t:
                assert grad is not None and np.abs(np.array(grad)).sum() > 0
            else:
                assert grad is None or np.abs(np.array(grad)).sum() == 0


@pytest.mark.slow
def test_one_fit_step_under_xla_trains_experts_gates_and_heads():
    layer = MMoE(num_tasks=3, num_experts=2, expert_units=[4, 3])
    model = _model(layer)
    x, y = _data()
    changed = assert_one_fit_step_trains(model, x, y, LOSSES, jit_compile=True)
    assert [path for path, moved in changed.items() if not moved] == []


@pytest.mark.both_backends
def test_eager_equals_xla():
    layer = MMoE(num_tasks=2, num_experts=3, expert_units=[4, 2])
    x, _ = _data()
    layer(x)
    assert_eager_equals_xla(lambda v: layer(v), x)


@pytest.mark.both_backends
def test_save_load_and_config_round_trip(tmp_path):
    layer = MMoE(
        num_tasks=3,
        num_experts=2,
        expert_units=(4, 3),
        expert_activation="tanh",
        gate_use_bias=True,
        kernel_regularizer=keras.regularizers.L2(1e-4),
        name="mmoe",
    )
    model = _model(layer)
    x, _ = _data()
    clone = assert_config_round_trip(layer)
    assert clone.expert_units == [4, 3] and clone.gate_use_bias
    loaded = assert_save_load_equal(model, x, tmp_path)
    assert isinstance(loaded.get_layer("mmoe"), MMoE)


@pytest.mark.both_backends
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_tasks=0, num_experts=2, expert_units=2), "num_tasks"),
        (dict(num_tasks=2, num_experts=0, expert_units=2), "num_experts"),
        (dict(num_tasks=2, num_experts=2, expert_units=[]), "expert_units"),
        (dict(num_tasks=2, num_experts=2, expert_units=[3, 0]), "expert_units"),
        (dict(num_tasks=True, num_experts=2, expert_units=2), "num_tasks"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MMoE(**kwargs)
