"""Tests of CustomizedGateControl (CGC, the one-level PLE)."""

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

from keras_mtl.layers import CustomizedGateControl, ProgressiveLayeredExtraction

LOSSES = tower_losses(2)


def _data(n=8, dim=5, seed=0):
    return tower_data(2, n, dim, seed)


def _model(layer, dim=5):
    return tower_model(layer, 2, dim)


def _np_experts(bank, x):
    """(B, D) -> (B, E, U) from an ExpertBank's weights (ReLU experts)."""
    h = np.repeat(x[:, None, :], bank.num_experts, axis=1)
    for kernel, bias in zip(bank.kernels, bank.biases):
        h = np.maximum(np.einsum("bed,edu->beu", h, np.array(kernel)) + bias, 0.0)
    return h


def _stacked_experts(layer, x):
    """Per task, its experts' outputs (B, m_k + m_s, U): own, then shared."""
    level = layer.levels[0]
    shared = _np_experts(level.shared_experts[0], x)
    own = [_np_experts(bank, x) for bank in level.task_experts]
    return [np.concatenate([mine, shared], axis=1) for mine in own]


@pytest.mark.both_backends
def test_shapes_and_closed_form():
    layer = CustomizedGateControl(
        num_tasks=2, expert_units=[6, 4], num_shared_experts=2, num_task_experts=[1, 3]
    )
    x, _ = _data()
    outputs = layer(x)
    assert [tuple(o.shape) for o in outputs] == [(8, 4), (8, 4)]
    assert layer.compute_output_shape((None, 5)) == [(None, 4), (None, 4)]
    level = layer.levels[0]
    assert len(layer.levels) == 1 and level.shared_gates == []
    assert [g.num_experts for g in level.task_gates] == [1 + 2, 3 + 2]
    for task, (got, stacked) in enumerate(zip(outputs, _stacked_experts(layer, x))):
        logits = x @ np.array(level.task_gates[task].kernel)
        gate = np.exp(logits - logits.max(-1, keepdims=True))
        gate /= gate.sum(-1, keepdims=True)
        want = np.einsum("be,beu->bu", gate, stacked)
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.both_backends
def test_is_a_one_level_ple_with_the_same_weights():
    kwargs = dict(num_tasks=2, expert_units=3, num_shared_experts=2, num_task_experts=1)
    cgc = CustomizedGateControl(**kwargs)
    ple = ProgressiveLayeredExtraction(num_levels=1, **kwargs)
    x, _ = _data()
    cgc(x)
    ple(x)
    assert [w.shape for w in cgc.weights] == [w.shape for w in ple.weights]
    ple.set_weights(cgc.get_weights())
    for got, want in zip(cgc(x), ple(x)):
        np.testing.assert_array_equal(np.array(got), np.array(want))


@pytest.mark.both_backends
def test_gates_are_distributions_and_zero_gates_average_the_experts():
    layer = CustomizedGateControl(
        num_tasks=2, expert_units=3, num_shared_experts=2, num_task_experts=[1, 2]
    )
    x, _ = _data()
    gates = [np.array(g) for g in layer.gate_weights(x)]
    assert [g.shape for g in gates] == [(8, 3), (8, 4)]
    for g in gates:
        assert np.all(g >= 0)
        np.testing.assert_allclose(g.sum(-1), 1.0, atol=1e-6)
    for gate in layer.levels[0].task_gates:
        gate.kernel.assign(np.zeros(gate.kernel.shape, "float32"))
    for got, stacked in zip(layer(x), _stacked_experts(layer, x)):
        np.testing.assert_allclose(
            np.array(got), stacked.mean(axis=1), rtol=1e-5, atol=1e-6
        )


@pytest.mark.both_backends
def test_a_task_reaches_only_its_own_and_the_shared_experts():
    layer = CustomizedGateControl(num_tasks=2, expert_units=3, num_shared_experts=1)
    model = _model(layer)
    x, _ = _data()
    level = layer.levels[0]
    shared = level.shared_experts[0].weights
    for task, own, other in [("a", 0, 1), ("b", 1, 0)]:
        foreign = level.task_experts[other].weights + level.task_gates[other].weights
        for grad in task_gradients(model, x, task, foreign):
            assert grad is None or np.abs(np.array(grad)).sum() == 0
        mine = level.task_experts[own].weights + level.task_gates[own].weights
        for grad in task_gradients(model, x, task, mine + shared):
            assert grad is not None and np.abs(np.array(grad)).sum() > 0


@pytest.mark.slow
def test_one_fit_step_under_xla_in_a_multi_task_model():
    layer = CustomizedGateControl(
        num_tasks=2, expert_units=[4, 3], num_shared_experts=1, num_task_experts=[1, 2]
    )
    model = _model(layer)
    x, y = _data()
    changed = assert_one_fit_step_trains(model, x, y, LOSSES, jit_compile=True)
    assert [path for path, moved in changed.items() if not moved] == []


@pytest.mark.both_backends
def test_eager_equals_xla():
    layer = CustomizedGateControl(num_tasks=2, expert_units=3, num_shared_experts=2)
    x, _ = _data()
    layer(x)
    assert_eager_equals_xla(lambda v: layer(v), x)


@pytest.mark.both_backends
def test_save_load_and_config_round_trip(tmp_path):
    layer = CustomizedGateControl(
        num_tasks=2,
        expert_units=(4, 3),
        num_shared_experts=2,
        num_task_experts=(2, 1),
        gate_use_bias=True,
        expert_activation="tanh",
        name="cgc",
    )
    model = _model(layer)
    x, _ = _data()
    clone = assert_config_round_trip(layer)
    assert "num_levels" not in clone.get_config()
    assert clone.get_config()["num_task_experts"] == [2, 1]
    loaded = assert_save_load_equal(model, x, tmp_path)
    for task, want in model.predict(x, verbose=0).items():  # bit for bit
        np.testing.assert_array_equal(loaded.predict(x, verbose=0)[task], want)
    assert isinstance(loaded.get_layer("cgc"), CustomizedGateControl)


@pytest.mark.both_backends
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_tasks=0), "num_tasks"),
        (dict(num_shared_experts=-1), "num_shared_experts"),
        (dict(num_task_experts=[1]), "num_task_experts"),
        (dict(num_shared_experts=0, num_task_experts=[1, 0]), "at least one expert"),
        (dict(expert_units=[]), "expert_units"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    base = dict(num_tasks=2, expert_units=3)
    with pytest.raises(ValueError, match=match):
        CustomizedGateControl(**{**base, **kwargs})
