"""Contract tests run over every registered strategy.

`STRATEGY_TABLE` lists each registered strategy with constructor arguments
for a two-task model; a test fails when a registered name is missing, so a
new strategy cannot skip these checks. Each entry is exercised in a real
`MultiTaskModel` (`test_strategy_contract_in_a_model`, one test per
strategy that reports every failing check):

- config and registry-name round trips (`test_config_and_name_round_trip`);
- finite weights and losses in the logs;
- the same model and strategy state after training with and without XLA;
- identical strategy state (and predictions) after `save` / `load_model`;
- `reset_state` restores the state of a freshly built strategy;
- under XLA, a batch without labels for one task leaves that task's
  per-task strategy state as it was and trains finitely; a strategy
  without support for missing labels is refused at compile time.

An XLA compile costs several times the steps it runs (measured: 5 to 7 s
against 0.5 s for six steps, on TensorFlow and on JAX), and Keras compiles
`fit` and `train_on_batch` separately, so each strategy gets one
XLA-compiled model and every step on it goes through `fit`: the model is
compiled with `missing_labels` (when the strategy supports them), trained
with every label present for the comparison with graph mode, then given
the batches with missing labels. Graph mode trains without
`missing_labels`, so the comparison also holds the masked step with every
task present to the plain one.

The module runs on both backends. On JAX, which has no graph mode, the
one training is XLA's, and `tests/models/test_cross_backend.py` holds
(eager) JAX training to TensorFlow's instead.
"""

import os

import keras
import numpy as np
import pytest
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp
from strategy_table import NEEDS_MORE_TASKS, STRATEGY_TABLE, make_strategy

import keras_mtl

pytestmark = pytest.mark.both_backends

MISSING_LABELS = {"cls": -1, "reg": float("nan")}
LOG_KEYS = ["loss", "cls_weight", "reg_weight", "cls_loss", "reg_loss"]


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


def _model(name, jit_compile, missing_labels=None):
    """The table's two-task model compiled with strategy `name`."""
    keras.utils.set_random_seed(7)
    _, compile_kwargs = STRATEGY_TABLE[name]
    if missing_labels is not None:
        compile_kwargs = {**compile_kwargs, "missing_labels": missing_labels}
    model = two_task_mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=TWO_TASK_LOSSES,
        loss_weighting=make_strategy(name),
        jit_compile=jit_compile,
        **compile_kwargs,
    )
    return model


def _fit(model, x, y, epochs=1, **kwargs):
    """`fit` in batches of 8, in order: every step on a model goes through
    `fit`, so that its first call compiles the one train function of the
    model. On TensorFlow the batches come as a `tf.data` data set with the
    static batch shape Keras gives arrays (Keras turns arrays into a data
    set through a pipeline that costs about 0.1 s a call); every call on a
    model passes the same kind of input, so that none traces the train
    function again."""
    assert len(x) % 8 == 0
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        batches = tf.data.Dataset.from_tensor_slices((x, y))
        history = model.fit(
            batches.batch(8, drop_remainder=True),
            epochs=epochs,
            shuffle=False,
            verbose=0,
            **kwargs,
        )
    else:
        history = model.fit(
            x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, **kwargs
        )
    return history.history


def _train(model, steps=3, epochs=2):
    x, y = two_task_data(n=8 * steps)
    history = _fit(model, x, y, epochs=epochs)
    state = model.weights + model.loss_weighting.weights
    return history, [(v.path, v.numpy()) for v in state]


def _xla_model(name):
    """`name`'s model under XLA, with `missing_labels` where the strategy
    supports them; else None, after checking that compile refuses them."""
    supported = type(make_strategy(name)).supports_missing_tasks
    if not supported:
        with pytest.raises(ValueError, match="does not support missing_labels"):
            _model(name, jit_compile=True, missing_labels=MISSING_LABELS)
    return _model(name, True, MISSING_LABELS if supported else None), supported


def check_finite_logs(history):
    for key in LOG_KEYS:
        assert np.all(np.isfinite(history[key])), (key, history)


def check_xla_matches_graph_mode(graph_state, xla_state):
    assert len(xla_state) == len(graph_state)
    for (path, a), (_, b) in zip(graph_state, xla_state):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=path)


def check_save_load_and_reset_state(name, model, tmp_path):
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
    # Called directly: `predict` would trace a function per model (0.1 s
    # each) to compute the same outputs.
    predictions = model(x, training=False), loaded(x, training=False)
    assert list(predictions[0]) == list(predictions[1])
    for a, b in zip(*(p.values() for p in predictions)):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )

    fresh = make_strategy(name)
    fresh.set_task_names(model.task_names)
    fresh.build(strategy._build_shapes_dict["input_shape"])
    strategy.reset_state()
    for a, b in zip(strategy.non_trainable_weights, fresh.non_trainable_weights):
        if "seed_generator" in a.path:
            continue
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


class _PerTaskState(keras.callbacks.Callback):
    """Reads the strategy's per-task state at each epoch's start and end."""

    def __init__(self, strategy):
        super().__init__()
        self._strategy = strategy
        self.begin, self.end = [], []

    def _read(self):
        self.model  # noqa: B018 (on JAX, attaches the trainer's state)
        return {
            variable.path: (axis, variable.numpy())
            for variable, axis in self._strategy.per_task_state()
        }

    def on_epoch_begin(self, epoch, logs=None):
        self.begin.append(self._read())

    def on_epoch_end(self, epoch, logs=None):
        self.end.append(self._read())


def check_missing_tasks_keep_their_state(model, monkeypatch):
    """A batch without labels for one task leaves that task's per-task
    strategy state as it was and trains finitely. The four batches (every
    task present, then without cls, reg, cls) go through one `fit` (the
    train function compiled already) as four one-step epochs, so that the
    logs of each epoch are those of its batch; the strategy's epoch hook is
    off, as under `train_on_batch`, so that only the step is checked."""
    strategy = model.loss_weighting
    monkeypatch.setattr(strategy, "on_epoch_end", lambda: None)
    x, y = two_task_data(n=8)
    cases = (("cls", -1), ("reg", np.nan), ("cls", -1))
    xs, ys = [x], [y]
    for absent, fill in cases:
        masked = dict(y)
        masked[absent] = np.full_like(y[absent], fill)
        xs.append(x)
        ys.append(masked)
    x_all = np.concatenate(xs)
    y_all = {key: np.concatenate([batch[key] for batch in ys]) for key in y}
    state = _PerTaskState(strategy)
    history = _fit(
        model, x_all, y_all, epochs=len(xs), steps_per_epoch=1, callbacks=[state]
    )
    assert len(state.end) == len(xs), (len(state.end), history)
    for epoch, (absent, _) in enumerate(cases, start=1):
        logs = {key: values[epoch] for key, values in history.items()}
        assert logs[f"{absent}_loss"] == 0.0
        assert all(np.isfinite(v) for v in logs.values()), logs
        t = model.task_names.index(absent)
        for path, (axis, before) in state.begin[epoch].items():
            after = state.end[epoch][path][1]
            np.testing.assert_array_equal(
                np.take(after, t, axis=axis),
                np.take(before, t, axis=axis),
                err_msg=path,
            )
    for variable in model.weights + strategy.weights:
        assert np.all(np.isfinite(variable.numpy())), variable.path


@pytest.mark.parametrize("name", sorted(STRATEGY_TABLE))
def test_strategy_contract_in_a_model(name, tmp_path, monkeypatch):
    """Every check of the module docstring's list but the round trips, in
    a real model; each failing check is reported."""
    if name in NEEDS_MORE_TASKS:
        pytest.skip("needs more than two tasks (tested in its own file)")
    xla_model, supported = _xla_model(name)
    xla_history, xla_state = _train(xla_model)
    checks = {"XLA training is finite": lambda: check_finite_logs(xla_history)}
    if keras.backend.backend() == "jax":
        saved = xla_model  # JAX has no graph mode
    else:
        saved = _model(name, jit_compile=False)
        graph_history, graph_state = _train(saved)
        checks["graph-mode training is finite"] = lambda: check_finite_logs(
            graph_history
        )
        checks["XLA matches graph mode"] = lambda: check_xla_matches_graph_mode(
            graph_state, xla_state
        )
    checks["save/load and reset_state"] = lambda: check_save_load_and_reset_state(
        name, saved, tmp_path
    )
    if supported:
        checks["missing tasks"] = lambda: check_missing_tasks_keep_their_state(
            xla_model, monkeypatch
        )
    failures = []
    for what, check in checks.items():
        try:
            check()
        except AssertionError as error:
            failures.append(f"{what}: {error}")
    assert not failures, "\n\n".join(failures)
