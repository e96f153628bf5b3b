"""Tests of add_auxiliary_module and MultiTaskModel's auxiliary outputs."""

import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import TWO_TASK_LOSSES, SumOfGradients, two_task_data

import keras_mtl


def _base_model():
    inputs = keras.Input((8,))
    h1 = keras.layers.Dense(12, activation="relu", name="h1")(inputs)
    h2 = keras.layers.Dense(10, activation="relu", name="h2")(h1)
    return keras_mtl.MultiTaskModel(
        inputs,
        {
            "cls": keras.layers.Dense(3, name="cls_head")(h2),
            "reg": keras.layers.Dense(1, name="reg_head")(h2),
        },
        name="base",
    )


def _with_aux(base, aux_weight=1.0):
    return keras_mtl.models.add_auxiliary_module(
        base,
        ["h1", "h2"],
        {"cls": keras.layers.Dense(3), "reg": keras.layers.Dense(1)},
        units=6,
        aux_weight=aux_weight,
    )


def test_inference_model_equals_the_hard_sharing_network():
    base = _base_model()
    model = _with_aux(base)
    assert model.auxiliary_tasks == ("cls", "reg")
    assert model.count_params() > base.count_params()
    inference = model.inference_model()
    assert inference.count_params() == base.count_params()
    x, _ = two_task_data(n=8)
    out, ref = inference.predict(x, verbose=0), base.predict(x, verbose=0)
    assert list(out) == ["cls", "reg"]
    for task in out:
        np.testing.assert_array_equal(out[task], ref[task])


def test_auxiliary_losses_train_and_change_the_shared_gradients():
    x, y = two_task_data(n=16)
    kernels = []
    for aux in [False, True]:
        keras.utils.set_random_seed(1)
        base = _base_model()
        model = _with_aux(base) if aux else base
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=TWO_TASK_LOSSES)
        start = model.get_layer("h1").kernel.numpy()
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        kernels.append(model.get_layer("h1").kernel.numpy() - start)
        if aux:
            assert np.isfinite(history.history["cls_aux_loss"][0])
            assert history.history["reg_aux_loss"][0] > 0
    assert np.abs(kernels[0] - kernels[1]).max() > 1e-5


@pytest.mark.parametrize("strategy", ["ew", "sum"])
def test_update_is_task_objective_plus_weighted_auxiliary_losses(strategy):
    keras.utils.set_random_seed(2)
    model = _with_aux(_base_model(), aux_weight=0.3)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=TWO_TASK_LOSSES,
        loss_weighting="ew" if strategy == "ew" else SumOfGradients(),
    )
    x, y = two_task_data(n=8)
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    mse = keras.losses.MeanSquaredError()
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        total = TWO_TASK_LOSSES["cls"](y["cls"], pred["cls"]) + mse(
            y["reg"], pred["reg"]
        )
        total += 0.3 * (
            TWO_TASK_LOSSES["cls"](y["cls"], pred["cls_aux"])
            + mse(y["reg"], pred["reg_aux"])
        )
    grads = tape.gradient(total, variables)
    model.train_on_batch(x, y)
    for b, g, v in zip(before, grads, variables):
        np.testing.assert_allclose(v.numpy(), b - 0.1 * g.numpy(), atol=1e-6)


def test_saved_inference_model_holds_no_auxiliary_weights(tmp_path):
    model = _with_aux(_base_model())
    model.compile(optimizer="adam", loss=TWO_TASK_LOSSES)
    x, y = two_task_data(n=16)
    model.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(tmp_path, "inference.weights.h5")
    inference = model.inference_model()
    inference.save_weights(path)
    names = []
    with h5py.File(path, "r") as f:
        f.visit(names.append)
    assert not any("aux" in n for n in names), names
    full = os.path.join(tmp_path, "full.keras")
    model.save(full)
    loaded = keras.models.load_model(full)
    assert loaded.auxiliary_tasks == ("cls", "reg") and loaded.aux_weight == 1.0
    out, ref = loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    for key in ref:
        np.testing.assert_array_equal(out[key], ref[key])
    small = os.path.join(tmp_path, "inference.keras")
    inference.save(small)
    reloaded = keras.models.load_model(small)
    assert reloaded.count_params() == inference.count_params()
    assert not reloaded.auxiliary_tasks


def test_bad_arguments_are_named():
    base = _base_model()
    with pytest.raises(ValueError, match=r"missing \['reg'\]"):
        keras_mtl.models.add_auxiliary_module(
            base, ["h1"], {"cls": keras.layers.Dense(3)}
        )
    with pytest.raises(ValueError, match="not a shared layer"):
        keras_mtl.models.add_auxiliary_module(
            base,
            ["cls_head"],
            {"cls": keras.layers.Dense(3), "reg": keras.layers.Dense(1)},
        )
    with pytest.raises(ValueError, match="aux_weight"):
        _with_aux(base, aux_weight=-1.0)
