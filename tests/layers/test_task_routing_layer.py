"""Tests of `TaskRoutingLayer` (Strezoski et al., ICCV 2019; methods.md A6)."""

import keras
import numpy as np
import pytest
from backends import compiled
from soft_sharing_checks import gradients

import keras_mtl
from keras_mtl.layers.task_routing_layer import TaskRoutingLayer


def _masks(layer):
    return keras.ops.convert_to_numpy(layer.routing_masks)


def _built(num_tasks=3, channels=8, **kwargs):
    layer = TaskRoutingLayer(num_tasks, **kwargs)
    layer.build((None, channels))
    return layer


@pytest.mark.both_backends
def test_every_mask_row_keeps_c_minus_int_sigma_c_units():
    # k = int(sigma * C) units off per row, as the reference `int(v * sigma)`.
    cases = [(0.5, 8, 4), (0.5, 7, 4), (0.3, 10, 7), (0.25, 64, 48), (0.9, 5, 1)]
    for sigma, channels, kept in cases + [(0.0, 6, 6)]:
        masks = _masks(_built(num_tasks=6, channels=channels, sigma=sigma, seed=3))
        assert masks.shape == (6, channels)
        assert set(np.unique(masks)) <= {0.0, 1.0}
        np.testing.assert_array_equal(masks.sum(axis=1), np.full(6, kept))


@pytest.mark.both_backends
def test_sigma_zero_is_no_routing():
    layer = _built(num_tasks=4, channels=5, sigma=0.0, seed=0)
    np.testing.assert_array_equal(_masks(layer), np.ones((4, 5)))
    x = np.random.default_rng(0).normal(size=(3, 2, 2, 5)).astype("float32")
    for output in layer(x):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(output), x)


@pytest.mark.both_backends
def test_tasks_get_different_masks_and_layers_with_different_seeds_too():
    masks = _masks(_built(num_tasks=8, channels=32, seed=1))
    rows = {tuple(row) for row in masks}
    assert len(rows) == 8
    other = _masks(_built(num_tasks=8, channels=32, seed=2))
    assert not np.array_equal(masks, other)


@pytest.mark.both_backends
def test_masks_are_reproducible_from_the_seed_and_from_the_global_seed():
    np.testing.assert_array_equal(
        _masks(_built(seed=11, channels=16)), _masks(_built(seed=11, channels=16))
    )
    keras.utils.set_random_seed(5)
    first = _masks(_built(channels=16))
    keras.utils.set_random_seed(5)
    np.testing.assert_array_equal(first, _masks(_built(channels=16)))


@pytest.mark.both_backends
def test_masks_are_not_trainable():
    layer = _built(seed=0)
    assert layer.trainable_weights == []
    assert [w.path for w in layer.non_trainable_weights] == [layer.routing_masks.path]


@pytest.mark.both_backends
def test_split_mode_gives_x_times_each_mask_for_dense_and_conv_inputs():
    rng = np.random.default_rng(0)
    for shape in [(4, 8), (2, 3, 3, 8)]:
        layer = TaskRoutingLayer(3, sigma=0.5, seed=7)
        x = rng.normal(size=shape).astype("float32")
        outputs = layer(x)
        masks = _masks(layer)
        assert len(outputs) == 3
        for t, output in enumerate(outputs):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(output), x * masks[t]
            )


@pytest.mark.both_backends
def test_fold_mode_masks_block_t_with_task_t():
    layer = TaskRoutingLayer(3, sigma=0.5, seed=4, mode="fold")
    x = np.random.default_rng(1).normal(size=(3 * 2, 4, 4, 8)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    masks = _masks(layer)
    for t in range(3):
        np.testing.assert_array_equal(
            y[2 * t : 2 * t + 2], x[2 * t : 2 * t + 2] * masks[t]
        )


@pytest.mark.both_backends
def test_active_mode_and_task_argument():
    layer = TaskRoutingLayer(4, sigma=0.5, seed=2, mode="active", active_task=2)
    x = np.random.default_rng(2).normal(size=(5, 6)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    masks = _masks(layer)
    np.testing.assert_array_equal(y, x * masks[2])

    # The active task is a variable: a compiled function follows it.
    run = compiled(lambda v: layer(v), jit_compile=True, layers=[layer])
    np.testing.assert_array_equal(np.array(run(x)), x * masks[2])
    layer.active_task = 0
    assert layer.active_task == 0
    np.testing.assert_array_equal(np.array(run(x)), x * masks[0])

    # `task=` works in every mode: int, scalar tensor, one task per sample.
    split = TaskRoutingLayer(4, sigma=0.5, seed=2)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(split(x, task=3)), x * masks[3]
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(split(x, task=keras.ops.convert_to_tensor(1))),
        x * masks[1],
    )
    per_sample = np.array([0, 1, 2, 3, 1])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(split(x, task=per_sample)), x * masks[per_sample]
    )
    conv = np.ones((2, 3, 3, 6), "float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(split(conv, task=np.array([3, 0]))),
        conv * masks[[3, 0]][:, None, None, :],
    )


def _routed_mlp(sigma=0.5, seed=0, num_tasks=3):
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, name="shared")(inputs)
    routed = TaskRoutingLayer(num_tasks, sigma=sigma, seed=seed, name="routing")(hidden)
    outputs = {
        f"task_{t}": keras.layers.Dense(1, name=f"head_{t}")(
            keras.layers.Activation("relu")(routed[t])
        )
        for t in range(num_tasks)
    }
    return keras_mtl.MultiTaskModel(inputs, outputs)


@pytest.mark.both_backends
def test_masked_channels_get_zero_gradient_from_their_task_loss():
    model = _routed_mlp()
    masks = _masks(model.get_layer("routing"))
    kernel = model.get_layer("shared").kernel
    x = np.random.default_rng(3).normal(size=(16, 5)).astype("float32")
    for t, task in enumerate(model.task_names):
        (grad,), _ = gradients(
            lambda task=task: keras.ops.sum(model(x)[task] ** 2), [kernel]
        )
        grad = keras.ops.convert_to_numpy(grad)
        off, on = masks[t] == 0, masks[t] == 1
        assert off.any() and on.any()
        assert np.all(grad[:, off] == 0.0)
        assert np.all(np.abs(grad[:, on]).sum(axis=0) > 0)
    # The routing layer is shared; every trainable variable keeps its role.
    assert [v.path for v in model.shared_variables] == ["shared/kernel", "shared/bias"]


def test_one_fit_step_trains_and_leaves_masks_unchanged():
    model = _routed_mlp()
    masks = _masks(model.get_layer("routing"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = {t: rng.normal(size=(32, 1)).astype("float32") for t in model.task_names}
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    before = model.get_layer("shared").kernel.numpy()
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(before, model.get_layer("shared").kernel.numpy())
    np.testing.assert_array_equal(masks, _masks(model.get_layer("routing")))


@pytest.mark.both_backends
def test_masks_survive_save_and_load(tmp_path):
    model = _routed_mlp(seed=None)
    x = np.random.default_rng(4).normal(size=(6, 5)).astype("float32")
    path = str(tmp_path / "routed.keras")
    model.save(path)
    keras.utils.set_random_seed(999)  # a rebuilt layer would draw other masks
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        _masks(model.get_layer("routing")), _masks(loaded.get_layer("routing"))
    )
    expected, got = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for task in model.task_names:
        np.testing.assert_array_equal(expected[task], got[task])


@pytest.mark.both_backends
def test_config_round_trip():
    layer = TaskRoutingLayer(5, sigma=0.25, seed=9, mode="active", active_task=3)
    config = layer.get_config()
    for key, value in dict(
        num_tasks=5, sigma=0.25, seed=9, mode="active", active_task=3
    ).items():
        assert config[key] == value
    clone = TaskRoutingLayer.from_config(config)
    assert clone.get_config() == config
    layer.build((None, 12))
    clone.build((None, 12))
    np.testing.assert_array_equal(_masks(layer), _masks(clone))
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert isinstance(restored, TaskRoutingLayer)
    assert restored.get_config() == config


@pytest.mark.both_backends
def test_eager_equals_xla():
    x = np.random.default_rng(5).normal(size=(4, 3, 3, 6)).astype("float32")
    for mode in ["split", "fold", "active"]:
        layer = TaskRoutingLayer(2, sigma=0.5, seed=1, mode=mode, active_task=1)
        eager = keras.tree.map_structure(keras.ops.convert_to_numpy, layer(x))
        xla = compiled(lambda v, layer=layer: layer(v), jit_compile=True)(x)
        assert len(keras.tree.flatten(eager)) == (2 if mode == "split" else 1)
        for a, b in zip(keras.tree.flatten(eager), keras.tree.flatten(xla)):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_fit_under_xla():
    model = _routed_mlp()
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = {t: rng.normal(size=(16, 1)).astype("float32") for t in model.task_names}
    model.compile("sgd", loss="mse", jit_compile=True)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.both_backends
def test_keras_mask_is_passed_on():
    tokens = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    routed = TaskRoutingLayer(2, seed=0)(embedded)
    model = keras.Model(tokens, routed)
    outputs = model(np.array([[1, 2, 0]]))
    for output in outputs:
        mask = keras.ops.convert_to_numpy(output._keras_mask)
        np.testing.assert_array_equal(mask, [[True, True, False]])


@pytest.mark.both_backends
def test_bad_arguments_raise():
    for kwargs, match in [
        (dict(num_tasks=0), "num_tasks"),
        (dict(num_tasks=2.0), "num_tasks"),
        (dict(num_tasks=2, sigma=1.0), "sigma"),
        (dict(num_tasks=2, sigma=-0.1), "sigma"),
        (dict(num_tasks=2, seed=-1), "seed"),
        (dict(num_tasks=2, mode="stack"), "mode"),
        (dict(num_tasks=2, active_task=2), "active_task"),
    ]:
        with pytest.raises(ValueError, match=match):
            TaskRoutingLayer(**kwargs)
    layer = TaskRoutingLayer(2, seed=0, mode="active")
    with pytest.raises(ValueError, match="active_task"):
        layer.active_task = 5
    with pytest.raises(ValueError, match="task"):
        layer(np.ones((1, 4), "float32"), task=2)
    with pytest.raises(ValueError, match="channel"):
        TaskRoutingLayer(2).build((None, None))


@pytest.mark.both_backends
def test_task_input_routes_each_sample_in_a_functional_model(tmp_path):
    # One task id per sample (a batch mixing tasks), saved and reloaded.
    features = keras.Input((6,))
    task_ids = keras.Input((), dtype="int32")
    routing = TaskRoutingLayer(3, seed=0, name="routing")
    model = keras.Model([features, task_ids], routing(features, task=task_ids))
    x = np.random.default_rng(7).normal(size=(4, 6)).astype("float32")
    ids = np.array([0, 1, 2, 0], "int32")
    masks = _masks(routing)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model([x, ids])), x * masks[ids]
    )
    path = str(tmp_path / "per_sample.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded([x, ids])), x * masks[ids]
    )
