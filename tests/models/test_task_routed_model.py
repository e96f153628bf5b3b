"""Tests of `task_routed_model` (Task Routing, methods.md A6 and C6)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.layers.task_routing_layer import TaskRoutingLayer
from keras_mtl.models.task_routed_model import task_routed_model

L = keras.layers


def _conv_model(num_tasks=3, sigma=0.5, seed=0):
    blocks = [
        [L.Conv2D(8, 3, padding="same", name="conv_1"), L.BatchNormalization()],
        [L.MaxPooling2D(), L.Conv2D(6, 3, padding="same", name="conv_2")],
    ]
    heads = {f"attr_{t}": L.Dense(1, name=f"head_{t}") for t in range(num_tasks)}
    model = task_routed_model(
        keras.Input((6, 6, 2)),
        blocks,
        heads,
        sigma=sigma,
        seed=seed,
        top=[L.GlobalAveragePooling2D()],
    )
    return model, blocks, heads


def _routing_layers(model):
    return [layer for layer in model.layers if isinstance(layer, TaskRoutingLayer)]


def _images(n=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 6, 6, 2)).astype("float32")


def test_structure_one_routing_layer_per_block_with_its_own_masks():
    model, _, _ = _conv_model()
    assert isinstance(model, keras_mtl.MultiTaskModel)
    assert model.task_names == ("attr_0", "attr_1", "attr_2")
    routing = _routing_layers(model)
    assert [r.seed for r in routing] == [0, 1]
    assert all(r.mode == "fold" and r.num_tasks == 3 for r in routing)
    assert [tuple(r.routing_masks.shape) for r in routing] == [(3, 8), (3, 6)]
    # The trunk is shared by every task, each head belongs to one task.
    shared = {v.path.split("/")[0] for v in model.shared_variables}
    assert shared == {"conv_1", "conv_2", "batch_normalization"}
    for t, task in enumerate(model.task_names):
        assert {v.path for v in model.task_variables[task]} == {
            f"head_{t}/kernel",
            f"head_{t}/bias",
        }


def test_sigma_zero_equals_the_unrouted_network():
    model, blocks, heads = _conv_model(sigma=0.0)
    # The same layers (same weights) wired without routing.
    inputs = keras.Input((6, 6, 2))
    x = inputs
    for block in blocks:
        for layer in block:
            x = layer(x)
        x = L.Activation("relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    plain = keras.Model(inputs, {task: head(x) for task, head in heads.items()})
    images = _images()
    routed, expected = (
        model.predict(images, verbose=0),
        plain.predict(images, verbose=0),
    )
    for task in model.task_names:
        np.testing.assert_allclose(routed[task], expected[task], rtol=1e-5, atol=1e-6)


def test_each_task_only_trains_the_units_its_masks_keep():
    model, _, _ = _conv_model(sigma=0.5)
    first, second = (
        keras.ops.convert_to_numpy(r.routing_masks) for r in _routing_layers(model)
    )
    conv_1 = model.get_layer("conv_1").kernel  # (3, 3, 2, 8)
    conv_2 = model.get_layer("conv_2").kernel  # (3, 3, 8, 6)
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(_images(), training=False)
        losses = [tf.reduce_sum(outputs[task] ** 2) for task in model.task_names]
    for t, loss in enumerate(losses):
        g1, g2 = tape.gradient(loss, [conv_1, conv_2])
        g1, g2 = g1.numpy(), g2.numpy()
        off_1, off_2 = first[t] == 0, second[t] == 0
        assert np.all(g1[..., off_1] == 0.0)
        assert np.all(g2[:, :, off_1, :] == 0.0)  # switched-off inputs
        assert np.all(g2[..., off_2] == 0.0)  # switched-off outputs
        kept = g2[:, :, ~off_1, :][..., ~off_2]
        assert np.count_nonzero(kept) > 0.5 * kept.size


def test_save_load_gives_the_same_predictions_and_masks(tmp_path):
    model, _, _ = _conv_model(seed=None)
    rng = np.random.default_rng(1)
    images = _images(8, seed=1)
    targets = {
        t: rng.integers(0, 2, (8, 1)).astype("float32") for t in model.task_names
    }
    model.compile("adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    history = model.fit(images, targets, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = str(tmp_path / "routed.keras")
    model.save(path)
    keras.utils.set_random_seed(77)  # rebuilt layers would draw other masks
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_mtl.MultiTaskModel)
    for old, new in zip(_routing_layers(model), _routing_layers(loaded)):
        np.testing.assert_array_equal(
            old.routing_masks.numpy(), new.routing_masks.numpy()
        )
    expected, got = model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    for task in model.task_names:
        np.testing.assert_array_equal(expected[task], got[task])


def test_xla_forward_and_fit():
    model, _, _ = _conv_model()
    images = _images(4)
    eager = model(images, training=False)
    compiled = tf.function(lambda x: model(x, training=False), jit_compile=True)(images)
    for task in model.task_names:
        np.testing.assert_allclose(eager[task], compiled[task], rtol=1e-5, atol=1e-6)
    dense = task_routed_model(
        keras.Input((5,)),
        [L.Dense(8), L.Dense(8)],
        {"a": L.Dense(1), "b": L.Dense(1)},
        seed=0,
    )
    dense.compile("sgd", loss="mse", jit_compile=True)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = {t: rng.normal(size=(8, 1)).astype("float32") for t in ("a", "b")}
    before = dense.predict(x, verbose=0)["a"]
    history = dense.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(before, dense.predict(x, verbose=0)["a"])


@pytest.mark.slow
def test_forty_binary_tasks_train_in_one_model():
    # methods.md C6: many binary tasks, random linear attributes of a latent.
    num_tasks, dim, n_train, n_test = 40, 8, 384, 128
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(n_train + n_test, dim)).astype("float32")
    labels = (latent @ rng.normal(size=(dim, num_tasks)) > 0).astype("float32")
    names = [f"attribute_{t:02d}" for t in range(num_tasks)]
    model = task_routed_model(
        keras.Input((dim,)),
        blocks=[L.Dense(64), L.Dense(64)],
        heads={name: L.Dense(1) for name in names},
        sigma=0.5,
        seed=0,
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    model.optimizer.build(model.trainable_variables)  # one trace, not two
    targets = {name: labels[:n_train, t : t + 1] for t, name in enumerate(names)}
    history = model.fit(latent[:n_train], targets, batch_size=32, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    scores = model.predict(latent[n_train:], batch_size=n_test, verbose=0)
    accuracy = [
        np.mean((scores[name][:, 0] > 0) == labels[n_train:, t])
        for t, name in enumerate(names)
    ]
    assert np.mean(accuracy) > 0.7  # chance is about 0.5
    assert min(accuracy) > 0.5


def test_bad_arguments_raise():
    inputs = keras.Input((4,))
    heads = {"a": L.Dense(1), "b": L.Dense(1)}
    with pytest.raises(ValueError, match="heads"):
        task_routed_model(inputs, [L.Dense(4)], {})
    with pytest.raises(ValueError, match="blocks"):
        task_routed_model(inputs, [], heads)
    with pytest.raises(ValueError, match="empty"):
        task_routed_model(inputs, [[]], heads)
    with pytest.raises(ValueError, match="seed"):
        task_routed_model(inputs, [L.Dense(4)], heads, seed=1.5)
    with pytest.raises(ValueError, match="sigma"):
        task_routed_model(inputs, [L.Dense(4)], heads, sigma=1.0)


def test_one_sampled_task_per_step_trains_only_its_masked_units():
    """The reference's schedule: each step one task (uniformly drawn) trains,
    through its own routing masks."""
    model, _, heads = _conv_model(num_tasks=3)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        task_sampling="uniform",
    )
    x = _images(n=8)
    y = {f"attr_{t}": (x[:, 0, 0, :1] > 0).astype("float32") for t in range(3)}
    drawn = set()
    for _ in range(15):
        before = [heads[f"attr_{t}"].kernel.numpy() for t in range(3)]
        model.train_on_batch(x, y)
        moved = [
            not np.array_equal(b, heads[f"attr_{t}"].kernel.numpy())
            for t, b in enumerate(before)
        ]
        assert sum(moved) == 1, moved
        drawn.add(moved.index(True))
    assert drawn == {0, 1, 2}
