"""Tests of CrossStitch units and cross_stitch_network."""

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
)

import keras_mtl
from keras_mtl.layers.cross_stitch import CrossStitch
from keras_mtl.models.cross_stitch_network import cross_stitch_network

LOSSES = tower_losses(2)


def _data(n=8, dim=6, seed=0):
    return tower_data(2, n, dim, seed)


def _block(task, index):
    return keras.layers.Dense(4, activation="tanh", name=f"{task}_block{index}")


def _network(num_blocks=2, **kwargs):
    return cross_stitch_network(
        keras.Input((6,)),
        ["a", "b"],
        _block,
        num_blocks,
        heads={
            "a": keras.layers.Dense(3, name="head_a"),
            "b": keras.layers.Dense(1, name="head_b"),
        },
        **kwargs,
    )


def _activations(tasks=3, shape=(2, 5, 5, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype("float32") for _ in range(tasks)]


@pytest.mark.both_backends
@pytest.mark.parametrize("tasks", [1, 2, 3, 4])
def test_initial_alpha_follows_the_paper(tasks):
    unit = CrossStitch()
    unit(_activations(tasks))
    alpha = np.array(unit.alpha)
    assert alpha.shape == (4, tasks, tasks)
    other = 0.1 / (tasks - 1) if tasks > 1 else 0.0
    want = np.where(np.eye(tasks) == 1, 0.9 if tasks > 1 else 1.0, other)
    np.testing.assert_allclose(alpha, np.broadcast_to(want, alpha.shape), atol=1e-7)
    np.testing.assert_allclose(alpha.sum(-1), 1.0, atol=1e-6)


@pytest.mark.both_backends
def test_outputs_are_per_channel_linear_combinations():
    unit = CrossStitch()
    xs = _activations(3)
    unit(xs)
    rng = np.random.default_rng(1)
    alpha = rng.normal(size=(4, 3, 3)).astype("float32")
    unit.alpha.assign(alpha)
    outputs = [np.array(o) for o in unit(xs)]
    assert [o.shape for o in outputs] == [(2, 5, 5, 4)] * 3
    for i in range(3):
        want = sum(alpha[:, i, j] * xs[j] for j in range(3))  # broadcast over C
        np.testing.assert_allclose(outputs[i], want, rtol=1e-5, atol=1e-5)


@pytest.mark.both_backends
def test_layer_granularity_uses_one_matrix_for_all_channels():
    unit = CrossStitch(granularity="layer", alpha_self=0.7)
    xs = _activations(2)
    outputs = [np.array(o) for o in unit(xs)]
    assert unit.alpha.shape == (2, 2)
    np.testing.assert_allclose(outputs[0], 0.7 * xs[0] + 0.3 * xs[1], atol=1e-5)
    np.testing.assert_allclose(outputs[1], 0.3 * xs[0] + 0.7 * xs[1], atol=1e-5)


@pytest.mark.both_backends
def test_uniform_alpha_gives_every_task_the_same_representation():
    unit = CrossStitch(alpha_self=0.5)  # T = 2: all weights 1/2
    a, b = unit(_activations(2))
    np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-7)


@pytest.mark.both_backends
def test_identity_alpha_equals_separate_towers():
    model = _network(alpha_self=1.0)
    x, _ = _data()
    outputs = model(x)
    for task in ["a", "b"]:
        tower = x
        for index in range(2):
            tower = model.get_layer(f"{task}_block{index}")(tower)
        tower = model.get_layer(f"head_{task}")(tower)
        np.testing.assert_allclose(np.array(outputs[task]), np.array(tower), atol=1e-6)
    # No gradient crosses towers (alphas excepted: they are shared).
    other_tower = (
        model.get_layer("b_block0").weights + model.get_layer("head_b").weights
    )
    for grad in task_gradients(model, x, "a", other_tower):
        assert grad is None or np.abs(np.array(grad)).sum() == 0


@pytest.mark.both_backends
def test_network_structure_and_shared_alphas():
    model = _network(num_blocks=3)
    units = [layer for layer in model.layers if isinstance(layer, CrossStitch)]
    assert [u.name for u in units] == [f"cross_stitch_{i}" for i in range(3)]
    shared = {v.path for v in model.shared_variables}
    assert all(u.alpha.path in shared for u in units)
    # With the paper's 0.9/0.1 mixing, task a depends on tower b.
    x, _ = _data()
    grads = task_gradients(model, x, "a", model.get_layer("b_block0").weights)
    assert np.abs(np.array(grads[0])).sum() > 0
    # Every alpha gets a gradient from each task.
    for task in ["a", "b"]:
        for grad in task_gradients(model, x, task, [u.alpha for u in units]):
            assert np.abs(np.array(grad)).sum() > 0


@pytest.mark.slow
def test_one_fit_step_under_xla():
    model = _network(num_blocks=2)
    x, y = _data()
    changed = assert_one_fit_step_trains(model, x, y, LOSSES, jit_compile=True)
    assert [path for path, moved in changed.items() if not moved] == []


@pytest.mark.both_backends
def test_eager_equals_xla():
    unit = CrossStitch()
    xs = _activations(3)
    unit(xs)
    assert_eager_equals_xla(lambda *v: unit(list(v)), *xs)


@pytest.mark.both_backends
def test_save_load_and_config_round_trip(tmp_path):
    model = _network(num_blocks=2, granularity="layer", alpha_self=0.8)
    x, _ = _data()
    unit = model.get_layer("cross_stitch_1")
    unit.alpha.assign(np.array([[0.6, 0.4], [0.2, 0.8]], "float32"))
    clone = assert_config_round_trip(unit)
    assert clone.granularity == "layer" and clone.alpha_self == 0.8
    loaded = assert_save_load_equal(model, x, tmp_path)
    np.testing.assert_allclose(
        np.array(loaded.get_layer("cross_stitch_1").alpha), np.array(unit.alpha)
    )


@pytest.mark.both_backends
def test_invalid_inputs_and_arguments_are_rejected():
    with pytest.raises(ValueError, match="granularity"):
        CrossStitch(granularity="pixel")
    with pytest.raises(ValueError, match="alpha_self"):
        CrossStitch(alpha_self=1.5)
    with pytest.raises(ValueError, match="identical shapes"):
        CrossStitch()([np.zeros((2, 3), "float32"), np.zeros((2, 4), "float32")])
    with pytest.raises(ValueError, match="list of T"):
        CrossStitch().build((2, 3))
    with pytest.raises(ValueError, match="heads"):
        cross_stitch_network(
            keras.Input((6,)), ["a", "b"], _block, 1, {"a": keras.layers.Dense(1)}
        )
    with pytest.raises(ValueError, match="num_blocks"):
        _network(num_blocks=0)
    with pytest.raises(ValueError, match="tasks"):
        cross_stitch_network(keras.Input((6,)), ["a", "a"], _block, 1, {})


@pytest.mark.both_backends
def test_builder_returns_a_multi_task_model():
    model = _network()
    assert isinstance(model, keras_mtl.MultiTaskModel)
    assert model.task_names == ("a", "b")
