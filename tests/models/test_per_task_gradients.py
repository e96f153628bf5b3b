"""MultiTaskModel's `compile(per_task_gradients=...)`: the (T, P) matrix of
per-task gradients, or the Gramian summed variable by variable."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_mtl
from keras_mtl.weighting.registry import registered_strategies

TASKS = ("a", "b", "c")
INPUT_DIM = 6


def three_task_model(seed=0):
    """Two shared Dense layers (four shared variables), three heads."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((INPUT_DIM,))
    h = keras.layers.Dense(10, activation="tanh", kernel_initializer=init)(inputs)
    h = keras.layers.Dense(7, activation="tanh", kernel_initializer=init)(h)
    outputs = {
        "a": keras.layers.Dense(3, kernel_initializer=init, name="a")(h),
        "b": keras.layers.Dense(1, kernel_initializer=init, name="b")(h),
        "c": keras.layers.Dense(2, kernel_initializer=init, name="c")(h),
    }
    return keras_mtl.MultiTaskModel(inputs, outputs)


LOSSES = {
    "a": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "b": "mse",
    "c": "mse",
}


def data(n=32, seed=0, missing_c=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, INPUT_DIM)).astype("float32")
    y = {
        "a": rng.integers(0, 3, size=(n,)).astype("int32"),
        # Different scales, so that scale-sensitive weights are not uniform.
        "b": 5.0 * rng.normal(size=(n, 1)).astype("float32"),
        "c": 0.3 * rng.normal(size=(n, 2)).astype("float32"),
    }
    if missing_c:
        y["c"][:16] = -1.0  # the first batch (of 16) has no label of task c
    return x, y


GRAMIAN_STRATEGIES = sorted(
    name for name, cls in registered_strategies().items() if cls.requires == "gramian"
)


def train(strategy, mode, jit_compile=False, steps=3, optimizer=None, **compile_kw):
    keras.utils.set_random_seed(1)
    model = three_task_model()
    model.compile(
        optimizer=optimizer or keras.optimizers.SGD(0.1),
        loss=LOSSES,
        loss_weighting=strategy,
        per_task_gradients=mode,
        jit_compile=jit_compile,
        **compile_kw,
    )
    x, y = data(n=16 * steps, missing_c=bool(compile_kw.get("missing_labels")))
    history = model.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    return model, history.history


_RUNS = {}


def shared_run(name, mode, steps=3, **compile_kw):
    """`train(seeded(name), mode, ...)` with SGD, computed once per
    configuration for the tests of this module that need the same run (the
    model is only read afterwards)."""
    key = (name, mode, steps, tuple(sorted(compile_kw.items())))
    if key not in _RUNS:
        _RUNS[key] = train(seeded(name), mode, steps=steps, **compile_kw)
    return _RUNS[key]


def assert_same_training(reference, other, rtol=2e-5, atol=1e-6):
    (model_a, logs_a), (model_b, logs_b) = reference, other
    for va, vb in zip(model_a.trainable_variables, model_b.trainable_variables):
        np.testing.assert_allclose(vb.numpy(), va.numpy(), rtol, atol, err_msg=va.path)
    for va, vb in zip(
        model_a.loss_weighting.variables, model_b.loss_weighting.variables
    ):
        np.testing.assert_allclose(vb.numpy(), va.numpy(), rtol, atol, err_msg=va.path)
    for task in TASKS:
        key = f"{task}_weight"
        np.testing.assert_allclose(logs_b[key], logs_a[key], rtol, atol, err_msg=key)


def seeded(name):
    """The strategy with a fixed seed where it draws random numbers (Krum
    with no Byzantine task: it needs n_byzantine + 3 tasks, here 3)."""
    cls = registered_strategies()[name]
    if "seed" in cls.__init__.__code__.co_varnames:
        return cls(seed=3)
    if name == "krum":
        return cls(n_byzantine=0)
    return cls()


def test_every_gramian_strategy_is_covered():
    # The parametrisations below use this list; it must not silently shrink.
    assert {"mgda", "pcgrad", "nash_mtl", "imtl", "upgrad", "cagrad"} <= set(
        GRAMIAN_STRATEGIES
    )


@pytest.mark.parametrize("name", GRAMIAN_STRATEGIES)
def test_gramian_path_trains_like_the_matrix_path(name):
    """Three SGD steps: same weights, strategy state and logged task weights."""
    reference = shared_run(name, "matrix")
    gramian = shared_run(name, "gramian")
    assert_same_training(reference, gramian)
    # And the step did move the shared layers.
    fresh = three_task_model()
    assert not np.allclose(
        fresh.shared_variables[0].numpy(), gramian[0].shared_variables[0].numpy()
    )


def test_gramian_path_under_xla_trains_like_the_matrix_path():
    reference = train("mgda", "matrix", jit_compile=True)
    gramian = train("mgda", "gramian", jit_compile=True)
    assert_same_training(reference, gramian)


def test_gramian_path_keeps_heads_and_the_strategy_own_variables():
    """IMTL with loss scaling: heads get their own gradients and the loss
    scales train as on the matrix path, with Adam."""

    def imtl():
        return registered_strategies()["imtl"](loss_scaling=True)

    adam = keras.optimizers.Adam
    reference = train(imtl(), "matrix", optimizer=adam(0.01))
    gramian = train(imtl(), "gramian", optimizer=adam(0.01))
    assert gramian[0].loss_weighting.trainable_variables
    assert_same_training(reference, gramian, rtol=1e-4, atol=1e-5)


def test_gramian_path_with_a_missing_task_drops_its_row():
    """The first batch has no label of task c: its weight is 0 there; the
    second has. Each path trains the two batches in two one-step fits (one
    trace each, not one per number of steps), so that the weights and the
    logs are compared after either step."""
    x, y = data(n=32, missing_c=True)
    models = {}
    for mode in ("matrix", "gramian"):
        keras.utils.set_random_seed(1)
        models[mode] = three_task_model()
        models[mode].compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=LOSSES,
            loss_weighting="upgrad",
            per_task_gradients=mode,
            missing_labels=-1.0,
        )
    for step in (0, 1):
        batch = slice(16 * step, 16 * (step + 1))
        logs = {
            mode: model.fit(
                x[batch],
                {task: labels[batch] for task, labels in y.items()},
                batch_size=16,
                shuffle=False,
                verbose=0,
            ).history
            for mode, model in models.items()
        }
        if step == 0:
            assert logs["gramian"]["c_weight"] == [0.0]
        else:
            assert logs["gramian"]["c_weight"][0] > 0.0
        assert_same_training(
            (models["matrix"], logs["matrix"]), (models["gramian"], logs["gramian"])
        )


def test_gramian_path_under_loss_scaling_matches_the_matrix_path():
    """A LossScaleOptimizer scales every objective: the Gramian is unscaled
    by the square of the scale, the update keeps the scale for the
    optimizer to remove."""

    def optimizer():
        return keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.1), initial_scale=2.0**10
        )

    reference = train("mgda", "matrix", optimizer=optimizer())
    gramian = train("mgda", "gramian", optimizer=optimizer())
    assert_same_training(reference, gramian)
    # The same run as test_gramian_path_trains_like_the_matrix_path[mgda].
    unscaled = shared_run("mgda", "gramian")
    assert_same_training(unscaled, gramian, rtol=1e-4, atol=1e-5)


def _largest_float_tensor(model, x, y):
    """The number of elements of the largest float tensor of the traced
    training step."""
    specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), (x, y))
    graph = tf.function(model.train_step).get_concrete_function(specs).graph
    largest = 0
    for op in graph.get_operations():
        for tensor in op.outputs:
            if tensor.dtype.is_floating and tensor.shape.is_fully_defined():
                largest = max(largest, tensor.shape.num_elements())
    return largest


def test_gramian_path_never_forms_the_task_by_parameter_matrix():
    """The memory claim, on the traced step: with "matrix" the (T, P) matrix
    is a tensor of the graph; with "gramian" no float tensor holds more than
    T times the largest shared variable."""
    x, y = data(n=4)
    sizes = {}
    for mode in ("matrix", "gramian"):
        model = three_task_model()
        model.compile(
            optimizer="sgd", loss=LOSSES, loss_weighting="mgda", per_task_gradients=mode
        )
        sizes[mode] = _largest_float_tensor(model, x, y)
    shared = [int(np.prod(v.shape)) for v in model.shared_variables]
    num_shared = sum(shared)
    assert sizes["matrix"] >= len(TASKS) * num_shared
    assert sizes["gramian"] <= len(TASKS) * max(shared) < len(TASKS) * num_shared


def test_per_task_gradients_is_saved_with_the_compile_config(tmp_path):
    # A trained Gramian-path model (the one of the checks above; the number
    # of steps it took does not matter to its compile config).
    model, _ = shared_run("mgda", "gramian")
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_compile_config()["per_task_gradients"] == "gramian"
    assert loaded._per_task_gradients == "gramian"


@pytest.mark.parametrize(
    "strategy, message",
    [
        ("graddrop", "requires='gradients'"),
        ("dwa", "requires='losses'"),
        (
            keras_mtl.weighting.get(
                {"class_name": "mgda", "config": {"rep_grad": True}}
            ),
            "rep_grad=True",
        ),
    ],
)
def test_gramian_path_refuses_strategies_that_need_more(strategy, message):
    model = three_task_model()
    with pytest.raises(ValueError, match="per_task_gradients='gramian'") as error:
        model.compile(
            optimizer="sgd",
            loss=LOSSES,
            loss_weighting=strategy,
            per_task_gradients="gramian",
        )
    assert message in str(error.value)
    assert "'upgrad'" in str(error.value)  # lists the strategies that can


def test_unknown_per_task_gradients_names_the_argument():
    model = three_task_model()
    with pytest.raises(ValueError, match="per_task_gradients must be one of"):
        model.compile(loss=LOSSES, loss_weighting="mgda", per_task_gradients="gram")
