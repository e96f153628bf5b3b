"""Contract tests run over every registered strategy.

`STRATEGY_TABLE` lists each registered strategy with constructor arguments
for a two-task model; a test fails when a registered name is missing, so a
new strategy cannot skip these checks. Each entry is exercised in a real
`MultiTaskModel` training step:

- config and registry-name round trips;
- finite weights and losses in the logs;
- the same model and strategy state after training with and without XLA;
- identical strategy state (and predictions) after `save` / `load_model`;
- `reset_state` restores the state of a freshly built strategy.

The graph-mode training of each strategy runs once (`graph_run`, a
module-scoped fixture over the table's names) and serves both the XLA
comparison and the save/load checks; `scope="module"` on their `name`
parameter makes pytest run each strategy's checks one after the other.

The module runs on both backends. On JAX, which has no graph mode, the
one training is XLA's, and `tests/models/test_cross_backend.py` holds it
to TensorFlow's instead.
"""

import os

import keras
import numpy as np
import pytest
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp
from strategy_table import NEEDS_MORE_TASKS, STRATEGY_TABLE, make_strategy

import keras_mtl

pytestmark = pytest.mark.both_backends


def _train(name, jit_compile, steps=3, epochs=2):
    keras.utils.set_random_seed(7)
    _, compile_kwargs = STRATEGY_TABLE[name]
    model = two_task_mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=TWO_TASK_LOSSES,
        loss_weighting=make_strategy(name),
        jit_compile=jit_compile,
        **compile_kwargs,
    )
    x, y = two_task_data(n=8 * steps)
    history = model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)
    return model, history


def test_every_registered_strategy_is_in_the_table():
    missing = sorted(set(keras_mtl.weighting.available()) - set(STRATEGY_TABLE))
    assert not missing, f"add these strategies to STRATEGY_TABLE: {missing}"


@pytest.mark.parametrize("name", sorted(STRATEGY_TABLE))
def test_config_and_name_round_trip(name):
    strategy = make_strategy(name)
    cls = type(strategy)
    assert cls.registry_name == name
    if not STRATEGY_TABLE[name][0]:
        assert isinstance(keras_mtl.weighting.get(name), cls)
    config = strategy.get_config()
    assert cls.from_config(config).get_config() == config
    rebuilt = keras_mtl.weighting.deserialize(keras_mtl.weighting.serialize(strategy))
    assert type(rebuilt) is cls and rebuilt.get_config() == config


@pytest.fixture(scope="module")
def graph_run(name):
    """`_train(name, jit_compile=False)` once per strategy: the model, its
    history and the values of its and its strategy's variables right after
    training (later checks may change the live variables)."""
    if name in NEEDS_MORE_TASKS:
        pytest.skip("needs more than two tasks (tested in its own file)")
    # JAX has no graph mode; there the run is XLA's (eager JAX would take
    # a minute per strategy), and test_cross_backend.py compares it with
    # TensorFlow's.
    model, history = _train(name, jit_compile=keras.backend.backend() == "jax")
    state = model.weights + model.loss_weighting.weights
    return model, history, [(v.path, v.numpy()) for v in state]


@pytest.mark.parametrize("name", sorted(STRATEGY_TABLE), scope="module")
def test_training_is_finite_and_xla_matches_graph_mode(name, graph_run):
    _, history, graph_state = graph_run
    for key in ["loss", "cls_weight", "reg_weight", "cls_loss", "reg_loss"]:
        assert np.all(np.isfinite(history.history[key])), (key, history.history)
    if keras.backend.backend() == "jax":
        return  # graph_run was XLA's
    xla_model, _ = _train(name, jit_compile=True)
    xla_state = xla_model.weights + xla_model.loss_weighting.weights
    assert len(xla_state) == len(graph_state)
    for (path, a), b in zip(graph_state, xla_state):
        np.testing.assert_allclose(a, b.numpy(), rtol=2e-4, atol=2e-5, err_msg=path)


@pytest.mark.parametrize("name", sorted(STRATEGY_TABLE), scope="module")
def test_save_load_restores_strategy_state_and_reset_state(name, graph_run, tmp_path):
    model, _, _ = graph_run
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    strategy, restored = model.loss_weighting, loaded.loss_weighting
    assert type(restored) is type(strategy)
    assert restored.get_config() == strategy.get_config()
    assert len(restored.weights) == len(strategy.weights)
    for a, b in zip(strategy.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    x, _ = two_task_data(n=8)
    for a, b in zip(
        model.predict(x, verbose=0).values(), loaded.predict(x, verbose=0).values()
    ):
        np.testing.assert_array_equal(a, b)

    fresh = make_strategy(name)
    fresh.set_task_names(model.task_names)
    fresh.build(strategy._build_shapes_dict["input_shape"])
    strategy.reset_state()
    for a, b in zip(strategy.non_trainable_weights, fresh.non_trainable_weights):
        if "seed_generator" in a.path:
            continue
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


@pytest.mark.parametrize("name", sorted(STRATEGY_TABLE))
def test_missing_tasks_keep_their_state_or_the_strategy_is_refused(name):
    """In a real model under XLA: a batch without labels for one task leaves
    that task's per-task strategy state as it was and trains finitely;
    strategies without support are refused at compile time."""
    if name in NEEDS_MORE_TASKS:
        pytest.skip("needs more than two tasks (tested in its own file)")
    _, compile_kwargs = STRATEGY_TABLE[name]
    model = two_task_mlp()
    strategy = make_strategy(name)
    kwargs = dict(
        optimizer=keras.optimizers.Adam(0.01),
        loss=TWO_TASK_LOSSES,
        loss_weighting=strategy,
        missing_labels={"cls": -1, "reg": float("nan")},
        jit_compile=True,
        **compile_kwargs,
    )
    if not type(strategy).supports_missing_tasks:
        with pytest.raises(ValueError, match="does not support missing_labels"):
            model.compile(**kwargs)
        return
    model.compile(**kwargs)
    keras.utils.set_random_seed(7)
    x, y = two_task_data(n=8)
    model.train_on_batch(x, y)  # every task present
    for absent, fill in (("cls", -1), ("reg", np.nan), ("cls", -1)):
        masked = dict(y)
        masked[absent] = np.full_like(y[absent], fill)
        t = model.task_names.index(absent)
        before = [
            (variable.path, axis, np.take(variable.numpy(), t, axis=axis))
            for variable, axis in strategy.per_task_state()
        ]
        logs = model.train_on_batch(x, masked, return_dict=True)
        assert logs[f"{absent}_loss"] == 0.0
        assert all(np.isfinite(v) for v in logs.values()), logs
        for path, axis, value in before:
            variable = next(v for v in strategy.variables if v.path == path)
            np.testing.assert_array_equal(
                np.take(variable.numpy(), t, axis=axis), value, err_msg=path
            )
    for variable in model.weights + strategy.weights:
        assert np.all(np.isfinite(variable.numpy())), variable.path
