"""Two runs with the same seed are identical, random strategies included.

With `keras.utils.set_random_seed` and TensorFlow's deterministic ops, two
trainings of a tiny three-task model (shuffled batches) must end with
bit-identical weights, optimizer variables, strategy weights, random-generator
states and logged task weights, for the strategies that draw random numbers
at every step: "rlw" (random loss weights), "graddrop" (random sign masks, on
parameter and on representation gradients) and "pcgrad" (random task order),
and for a model routed by `TaskRoutingLayer`s (random fixed masks drawn when
the layers are built). So that these checks cannot pass trivially, a run
whose strategy has another seed (same model initialisation) must differ, and
so must the routing masks drawn under another global seed.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

import keras_mtl
from keras_mtl.layers.task_routing_layer import TaskRoutingLayer
from keras_mtl.models.task_routed_model import task_routed_model

LOSSES = {
    "cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "reg": "mse",
    "aux": "mse",
}


@pytest.fixture(autouse=True)
def _deterministic_ops():
    """Enables TF op determinism for one test, then restores the setting."""
    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was_enabled:
        tf_config.disable_op_determinism()


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = {
        "cls": rng.integers(0, 3, size=(n,)).astype("int32"),
        "reg": rng.normal(size=(n, 1)).astype("float32"),
        "aux": rng.normal(size=(n, 2)).astype("float32"),
    }
    return x, y


def _heads():
    return {
        "cls": keras.layers.Dense(3, name="cls_head"),
        "reg": keras.layers.Dense(1, name="reg_head"),
        "aux": keras.layers.Dense(2, name="aux_head"),
    }


def _mlp():
    inputs = keras.Input((8,), name="x")
    shared = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    return keras_mtl.MultiTaskModel(
        inputs, {task: head(shared) for task, head in _heads().items()}
    )


def _rng_states(model):
    """SeedGenerator states (saved as weights of the strategy / model)."""
    return [v.numpy() for v in model.variables if v.name == "seed_generator_state"]


def _train(model, strategy):
    """Compiles with `strategy`, trains 2 shuffled epochs, returns the state."""
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=LOSSES,
        loss_weighting=keras_mtl.weighting.get(strategy),
    )
    initial_rng = _rng_states(model)
    x, y = _data()
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=True, verbose=0)
    return {
        "model weights": [v.numpy() for v in model.weights],
        "optimizer variables": [v.numpy() for v in model.optimizer.variables],
        "strategy weights": [np.asarray(w) for w in model.loss_weighting.get_weights()],
        "random generator states": _rng_states(model),
        "initial random generator states": initial_rng,
        "logged weights": [history.history[f"{t}_weight"] for t in LOSSES],
    }


_SEEDED_RUNS = {}


def _seeded_run(strategy, seed, cached=True):
    """`_train(_mlp(), strategy)` from global seed `seed`. With `cached`, the
    run is made once per (strategy, seed) for every test that needs it (its
    results are only read)."""
    key = (repr(strategy), seed)
    if not cached or key not in _SEEDED_RUNS:
        keras.utils.set_random_seed(seed)
        run = _train(_mlp(), strategy)
        if not cached:
            return run
        _SEEDED_RUNS[key] = run
    return _SEEDED_RUNS[key]


def _assert_identical(a, b):
    for key, values in a.items():
        assert len(b[key]) == len(values), key
        for i, (u, v) in enumerate(zip(values, b[key])):
            np.testing.assert_array_equal(v, u, err_msg=f"{key}[{i}]")


def _with_seed(strategy, seed):
    """The strategy's config with an explicit `seed`."""
    if isinstance(strategy, str):
        strategy = {"class_name": strategy, "config": {}}
    config = dict(strategy["config"], seed=seed)
    return {"class_name": strategy["class_name"], "config": config}


@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param("rlw", id="rlw"),
        pytest.param("graddrop", id="graddrop"),
        pytest.param(
            {"class_name": "graddrop", "config": {"rep_grad": True}},
            id="graddrop-rep_grad",
        ),
        pytest.param("pcgrad", id="pcgrad"),
    ],
)
def test_same_seed_gives_identical_runs_and_another_strategy_seed_does_not(
    strategy,
):
    # Two independent runs from the same seed (the first one also serves
    # test_different_global_seeds_give_different_rlw_runs).
    runs = [_seeded_run(strategy, 3), _seeded_run(strategy, 3, cached=False)]
    _assert_identical(runs[0], runs[1])
    # The strategy really drew random numbers: its generator advanced.
    rng_before = runs[0]["initial random generator states"]
    rng_after = runs[0]["random generator states"]
    assert rng_before and any(
        not np.array_equal(a, b) for a, b in zip(rng_before, rng_after)
    )

    # Same model initialisation and data order, another strategy seed.
    keras.utils.set_random_seed(3)
    other = _train(_mlp(), _with_seed(strategy, 12345))
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(runs[0]["model weights"], other["model weights"])
    ), "a different strategy seed left the trained weights unchanged"


def test_different_global_seeds_give_different_rlw_runs():
    """Only the global seed differs (it seeds the model and the strategy).
    Seed 3 is the run of the same-seed test above."""
    results = [_seeded_run("rlw", seed) for seed in (3, 4)]
    weights = [r["logged weights"] for r in results]
    assert not np.array_equal(np.asarray(weights[0]), np.asarray(weights[1]))


def _routed_model(seed=None):
    return task_routed_model(
        keras.Input((8,), name="x"),
        blocks=[keras.layers.Dense(16, name="block_1"), keras.layers.Dense(16)],
        heads=_heads(),
        sigma=0.5,
        seed=seed,
        activation="tanh",
    )


def _routing_masks(model):
    layers = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, TaskRoutingLayer)
    ]
    assert len(layers) == 2
    return [layer.routing_masks.numpy() for layer in layers]


def test_task_routing_masks_and_training_follow_the_global_seed():
    runs, masks = [], []
    for _ in range(2):
        keras.utils.set_random_seed(5)
        model = _routed_model()
        masks.append(_routing_masks(model))
        runs.append(_train(model, "ew"))
    for a, b in zip(*masks):
        np.testing.assert_array_equal(a, b)
        # sigma = 0.5 of 16 units switched off in each task's row.
        np.testing.assert_array_equal(a.sum(axis=1), [8.0, 8.0, 8.0])
    _assert_identical(runs[0], runs[1])

    keras.utils.set_random_seed(6)
    other = _routing_masks(_routed_model())
    assert any(not np.array_equal(a, b) for a, b in zip(masks[0], other))


def test_explicitly_seeded_routing_masks_ignore_the_global_seed():
    masks = []
    for global_seed in (5, 6):
        keras.utils.set_random_seed(global_seed)
        masks.append(_routing_masks(_routed_model(seed=0)))
    for a, b in zip(*masks):
        np.testing.assert_array_equal(a, b)
