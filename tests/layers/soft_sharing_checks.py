"""Small checks shared by the tests of the soft-sharing and fusion layers
(MultiBackbone, CrossStitch, MTANAttention, MMoE, PLE), and the
backend-neutral gradients and compiled runs of every layer test."""

import json

import keras
import numpy as np
from backends import BACKEND, compiled

import keras_mtl


def to_numpy(value):
    """Converts a tensor, or a list/dict of tensors, to numpy."""
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_numpy(v) for v in value]
    return keras.ops.convert_to_numpy(value)


def assert_all_close(a, b, atol=1e-6):
    a, b = to_numpy(a), to_numpy(b)
    if isinstance(a, dict):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=1e-5)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)
    else:
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)


def _as_json(config):
    return json.loads(json.dumps(config))  # tuples become lists


def assert_config_round_trip(layer):
    """get_config -> from_config gives the same config, also through JSON
    and Keras' registered-name (de)serialization."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert _as_json(clone.get_config()) == _as_json(config)
    serialized = _as_json(keras.saving.serialize_keras_object(layer))
    assert serialized["registered_name"] == f"keras_mtl>{type(layer).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    assert _as_json(restored.get_config()) == _as_json(config)
    return clone


def assert_save_load_equal(model, x, tmp_path, atol=1e-6):
    """model.save / load_model keep the predictions (inference mode)."""
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert_all_close(model(x, training=False), loaded(x, training=False), atol)
    return loaded


def assert_eager_equals_xla(fn, *args, atol=1e-5):
    """The function gives the same result eagerly and under XLA."""
    eager = fn(*args)
    assert_all_close(eager, compiled(fn, jit_compile=True)(*args), atol)


def gradients(fn, variables=(), inputs=()):
    """Gradients of the scalar `fn(*inputs)` with respect to `variables`
    (Keras variables) and `inputs` (arrays): `(variable_grads,
    input_grads)`, two lists.

    On TensorFlow a tape gives None for what the result does not depend
    on; on JAX the gradient is then zero (see `assert_no_gradient`).
    """
    variables, inputs = list(variables), list(inputs)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        inputs = [tf.convert_to_tensor(x) for x in inputs]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            total = fn(*inputs)
        return tape.gradient(total, [variables, inputs])
    import jax

    def total(values, xs):
        mapping = list(zip(variables, values))
        with keras.StatelessScope(state_mapping=mapping):
            return fn(*xs)

    values = [v.value for v in variables]
    xs = [keras.ops.convert_to_tensor(x) for x in inputs]
    grads = jax.grad(total, argnums=(0, 1))(values, xs)
    return [list(grads[0]), list(grads[1])]


def is_connected(grad):
    """Whether a result depends on a source, from their gradient: a
    gradient at all on TensorFlow, a nonzero one on JAX."""
    if BACKEND == "tensorflow":
        return grad is not None
    return bool(np.any(keras.ops.convert_to_numpy(grad) != 0))


def assert_no_gradient(grad):
    """The result does not depend on the source: no gradient on
    TensorFlow (None), an exactly zero one on JAX."""
    if BACKEND == "tensorflow":
        assert grad is None
    else:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(grad), 0.0)


def assert_one_fit_step_trains(model, x, y, loss, jit_compile=True, lr=0.05):
    """Compiles and runs one `fit` step of a MultiTaskModel; checks the
    loss is finite and returns {variable path: whether it changed}."""
    model.compile(
        optimizer=keras.optimizers.SGD(lr), loss=loss, jit_compile=jit_compile
    )
    before = [np.array(v) for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [
        not np.array_equal(b, np.array(v))
        for b, v in zip(before, model.trainable_variables)
    ]
    return dict(zip([v.path for v in model.trainable_variables], changed))


def task_gradients(model, x, task, variables):
    """Gradients of the sum of `task`'s output w.r.t. `variables`."""
    grads, _ = gradients(
        lambda: keras.ops.sum(model(x, training=False)[task]), variables
    )
    return grads


def tower_losses(num_tasks=2):
    """The losses of `tower_model`'s tasks: "a" classifies (3 classes,
    logits), "b" and "c" regress."""
    losses = {"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True)}
    losses.update({task: "mse" for task in "bc"[: num_tasks - 1]})
    return losses


def tower_data(num_tasks=2, n=8, dim=5, seed=0):
    """Inputs `(n, dim)` and targets of `tower_losses(num_tasks)`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    y = {"a": rng.integers(0, 3, size=(n,)).astype("int32")}
    for task in "bc"[: num_tasks - 1]:
        y[task] = rng.normal(size=(n, 1)).astype("float32")
    return x, y


def tower_model(layer, num_tasks=2, dim=5):
    """A `MultiTaskModel` with one dense head on each of `layer`'s towers."""
    inputs = keras.Input((dim,))
    towers = layer(inputs)
    outputs = {
        task: keras.layers.Dense(units, name=f"head_{task}")(tower)
        for (task, units), tower in zip(
            [("a", 3), ("b", 1), ("c", 1)][:num_tasks], towers
        )
    }
    return keras_mtl.MultiTaskModel(inputs, outputs)
