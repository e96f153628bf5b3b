"""Tests of ProgressiveLayeredExtraction (PLE)."""

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
from keras_mtl.layers.ple import ProgressiveLayeredExtraction

LOSSES = tower_losses(2)


def _data(n=8, dim=5, seed=0):
    return tower_data(2, n, dim, seed)


def _model(layer, dim=5):
    return tower_model(layer, 2, dim)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_experts(bank, x):
    """(B, D) -> (B, E, U) from an ExpertBank's weights (ReLU experts)."""
    h = np.repeat(x[:, None, :], bank.num_experts, axis=1)
    for kernel, bias in zip(bank.kernels, bank.biases):
        h = np.maximum(np.einsum("bed,edu->beu", h, np.array(kernel)) + bias, 0.0)
    return h


def _numpy_ple(layer, x):
    """Independent re-derivation of PLE's forward pass (paper's equations)."""
    tasks = [x] * layer.num_tasks
    shared = x
    for cgc in layer.levels:
        banks = iter(cgc.task_experts)
        own = [
            _np_experts(next(banks), tasks[t]) if m > 0 else None
            for t, m in enumerate(cgc.task_counts)
        ]
        shared_experts = (
            _np_experts(cgc.shared_experts[0], shared) if cgc.shared_experts else None
        )
        new_tasks = []
        for t in range(layer.num_tasks):
            parts = [p for p in (own[t], shared_experts) if p is not None]
            stacked = np.concatenate(parts, axis=1)
            gate = _softmax(tasks[t] @ np.array(cgc.task_gates[t].kernel))
            new_tasks.append(np.einsum("be,beu->bu", gate, stacked))
        if cgc.shared_gates:
            parts = [p for p in own if p is not None] + [shared_experts]
            stacked = np.concatenate(parts, axis=1)
            gate = _softmax(shared @ np.array(cgc.shared_gates[0].kernel))
            shared = np.einsum("be,beu->bu", gate, stacked)
        tasks = new_tasks
    return tasks


@pytest.mark.both_backends
def test_shapes_and_closed_form_of_a_three_level_ple():
    layer = ProgressiveLayeredExtraction(
        num_tasks=2,
        expert_units=[6, 4],
        num_levels=3,
        num_shared_experts=2,
        num_task_experts=[1, 3],
    )
    x, _ = _data()
    outputs = layer(x)
    assert [tuple(o.shape) for o in outputs] == [(8, 4), (8, 4)]
    assert layer.compute_output_shape((None, 5)) == [(None, 4), (None, 4)]
    assert len(layer.levels) == 3
    # Shared gates in the intermediate levels only, over all their experts.
    assert [len(c.shared_gates) for c in layer.levels] == [1, 1, 0]
    assert layer.levels[0].shared_gates[0].num_experts == 1 + 3 + 2
    for got, want in zip(outputs, _numpy_ple(layer, x)):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.both_backends
def test_single_level_without_task_experts_is_mmoe():
    x, _ = _data()
    ple = ProgressiveLayeredExtraction(
        num_tasks=2,
        expert_units=[4, 3],
        num_levels=1,
        num_shared_experts=3,
        num_task_experts=0,
    )
    mmoe = MMoE(num_tasks=2, num_experts=3, expert_units=[4, 3])
    ple(x)
    mmoe(x)
    cgc = ple.levels[0]
    mmoe.experts.set_weights(cgc.shared_experts[0].get_weights())
    for gate, ple_gate in zip(mmoe.gates, cgc.task_gates):
        gate.set_weights(ple_gate.get_weights())
    for got, want in zip(ple(x), mmoe(x)):
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-6)


@pytest.mark.both_backends
def test_without_shared_experts_tasks_are_fully_separated():
    layer = ProgressiveLayeredExtraction(
        num_tasks=2, expert_units=3, num_levels=2, num_shared_experts=0
    )
    model = _model(layer)
    x, _ = _data()
    assert all(not cgc.shared_gates and not cgc.shared_experts for cgc in layer.levels)
    for task, own, other in [("a", 0, 1), ("b", 1, 0)]:
        own_vars = [v for cgc in layer.levels for v in cgc.task_experts[own].weights]
        other_vars = [
            v for cgc in layer.levels for v in cgc.task_experts[other].weights
        ]
        other_vars += [v for cgc in layer.levels for v in cgc.task_gates[other].weights]
        for grad in task_gradients(model, x, task, other_vars):
            assert grad is None or np.abs(np.array(grad)).sum() == 0
        assert any(
            g is not None and np.abs(np.array(g)).sum() > 0
            for g in task_gradients(model, x, task, own_vars)
        )


@pytest.mark.both_backends
def test_other_tasks_experts_reach_a_task_only_through_the_shared_gate():
    layer = ProgressiveLayeredExtraction(
        num_tasks=2, expert_units=3, num_levels=2, num_shared_experts=1
    )
    model = _model(layer)
    x, _ = _data()
    first, last = layer.levels
    # Last level: task b's experts are not in task a's gate.
    for grad in task_gradients(model, x, "a", last.task_experts[1].weights):
        assert grad is None or np.abs(np.array(grad)).sum() == 0
    # First level: they feed the shared gate, hence task a's next level.
    grads = task_gradients(model, x, "a", first.task_experts[1].weights)
    assert np.abs(np.array(grads[0])).sum() > 0


@pytest.mark.slow
def test_one_fit_step_under_xla():
    layer = ProgressiveLayeredExtraction(
        num_tasks=2, expert_units=[4, 3], num_levels=2, num_task_experts=[1, 2]
    )
    model = _model(layer)
    x, y = _data()
    changed = assert_one_fit_step_trains(model, x, y, LOSSES, jit_compile=True)
    # Every variable lies on some task's path, so one step changes each.
    assert [path for path, moved in changed.items() if not moved] == []


@pytest.mark.both_backends
def test_eager_equals_xla():
    layer = ProgressiveLayeredExtraction(num_tasks=2, expert_units=3, num_levels=2)
    x, _ = _data()
    layer(x)
    assert_eager_equals_xla(lambda v: layer(v), x)


@pytest.mark.both_backends
def test_save_load_and_config_round_trip(tmp_path):
    layer = ProgressiveLayeredExtraction(
        num_tasks=2,
        expert_units=(4, 3),
        num_levels=2,
        num_shared_experts=2,
        num_task_experts=(2, 1),
        gate_use_bias=True,
        expert_activation="tanh",
        name="ple",
    )
    model = _model(layer)
    x, _ = _data()
    clone = assert_config_round_trip(layer)
    assert clone.get_config()["num_task_experts"] == [2, 1]
    loaded = assert_save_load_equal(model, x, tmp_path)
    assert isinstance(loaded.get_layer("ple"), ProgressiveLayeredExtraction)


@pytest.mark.both_backends
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_levels=0), "num_levels"),
        (dict(num_shared_experts=-1), "num_shared_experts"),
        (dict(num_task_experts=[1]), "num_task_experts"),
        (dict(num_shared_experts=0, num_task_experts=[1, 0]), "at least one expert"),
        (dict(expert_units=0), "expert_units"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    base = dict(num_tasks=2, expert_units=3)
    with pytest.raises(ValueError, match=match):
        ProgressiveLayeredExtraction(**{**base, **kwargs})
