"""Tests of `DefaultArchitecture`: the MLP / CNN the tuner builds by default."""

import keras
import numpy as np
import pytest

import keras_mtl
from keras_mtl.layers.task_routing_layer import TaskRoutingLayer
from keras_mtl.tuner.default_architecture import DefaultArchitecture

HEADS = {"digit": 10, "parity": (1, "sigmoid")}


def _shared_layer_names(model):
    return sorted({v.path.split("/")[0] for v in model.shared_variables})


def test_mlp_sharing_depth_and_head_width():
    architecture = DefaultArchitecture((64,), HEADS, units=8)
    assert architecture.kind == "mlp"
    assert architecture.choices == ("shared_layers", "head_units")
    for depth in (1, 3):
        model = architecture(shared_layers=depth, head_units=5)
        assert isinstance(model, keras_mtl.MultiTaskModel)
        assert model.task_names == ("digit", "parity")
        # Exactly `depth` Dense layers are shared by both tasks.
        assert _shared_layer_names(model) == [f"shared_{i}" for i in range(depth)]
        for task in model.task_names:
            kernels = [v for v in model.task_variables[task] if "kernel" in v.path]
            assert kernels[0].shape == (8, 5)  # the head's hidden layer
        out = model(np.zeros((3, 64), "float32"))
        assert out["digit"].shape == (3, 10) and out["parity"].shape == (3, 1)
        assert np.all((out["parity"] > 0) & (out["parity"] < 1))  # sigmoid


def test_cnn_for_image_inputs():
    architecture = DefaultArchitecture((8, 8, 1), {"a": 3, "b": 2}, filters=4)
    assert architecture.kind == "cnn"
    model = architecture(shared_layers=3, head_units=4)
    assert _shared_layer_names(model) == ["shared_0", "shared_1", "shared_2"]
    convs = [model.get_layer(f"shared_{i}") for i in range(3)]
    assert [c.filters for c in convs] == [4, 8, 16]
    # Pooling halves 8 -> 4 -> 2 and then stops (maps narrower than 4).
    assert [c.output.shape[1] for c in convs] == [8, 4, 2]
    out = model(np.zeros((2, 8, 8, 1), "float32"))
    assert out["a"].shape == (2, 3) and out["b"].shape == (2, 2)


def test_flattens_other_inputs_and_checks_kind():
    model = DefaultArchitecture((4, 4), {"a": 1, "b": 1}, units=6)(1, 2)
    assert model(np.zeros((2, 4, 4), "float32"))["a"].shape == (2, 1)
    with pytest.raises(ValueError, match="cnn"):
        DefaultArchitecture((4, 4), {"a": 1}, kind="cnn")


def test_routing_adds_sigma_and_one_routing_layer_per_shared_block():
    architecture = DefaultArchitecture((6,), {"a": 1, "b": 1}, routing=True, seed=3)
    assert architecture.choices == ("shared_layers", "head_units", "routing_sigma")
    model = architecture(shared_layers=2, head_units=4, routing_sigma=0.25)
    routing = [layer for layer in model.layers if isinstance(layer, TaskRoutingLayer)]
    assert [(r.sigma, r.seed) for r in routing] == [(0.25, 3), (0.25, 4)]
    out = model(np.ones((3, 6), "float32"))
    assert out["a"].shape == (3, 1)


def test_auxiliary_adds_aux_weight_and_training_only_heads():
    architecture = DefaultArchitecture((6,), {"a": 2, "b": 1}, auxiliary=True)
    assert architecture.choices == ("shared_layers", "head_units", "aux_weight")
    model = architecture(shared_layers=2, head_units=4, aux_weight=0.3)
    assert model.auxiliary_tasks == ("a", "b")
    assert model.aux_weight == pytest.approx(0.3)
    inference = model.inference_model()
    assert inference.task_names == ("a", "b") and not inference.auxiliary_tasks
    assert inference.count_params() < model.count_params()


def test_one_training_step_of_each_variant_is_finite():
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    y = {"a": np.zeros((16, 2), "float32"), "b": np.ones((16, 1), "float32")}
    for kwargs in ({}, {"routing": True, "seed": 0}, {"auxiliary": True}):
        keras.backend.clear_session()
        model = DefaultArchitecture((6,), {"a": 2, "b": 1}, units=4, **kwargs)(1, 3)
        model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
        logs = model.train_on_batch(x, y, return_dict=True)
        assert np.isfinite(logs["loss"]), kwargs


def test_invalid_arguments():
    with pytest.raises(ValueError, match="cannot be combined"):
        DefaultArchitecture((4,), {"a": 1}, routing=True, auxiliary=True)
    with pytest.raises(ValueError, match="heads"):
        DefaultArchitecture((4,), {})
    with pytest.raises(ValueError, match="units"):
        DefaultArchitecture((4,), {"a": 0})
    with pytest.raises(ValueError, match="kind"):
        DefaultArchitecture((4,), {"a": 1}, kind="rnn")
    with pytest.raises(ValueError, match="shared_layers"):
        DefaultArchitecture((4,), {"a": 1})(shared_layers=0)
