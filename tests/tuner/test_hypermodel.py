"""Tests of `MultiTaskHyperModel`: the search space, `build` and `fit`."""

import importlib
import sys

import keras
import keras_tuner
import numpy as np
import pytest

import keras_mtl
from keras_mtl.tuner.hypermodel import MultiTaskHyperModel
from keras_mtl.tuner.objectives import DeltaM, TaskMetric
from keras_mtl.tuner.search_spaces import DEFAULT_STRATEGIES

LOSS = {"a": "mse", "b": "mse"}


def _hypermodel(**kwargs):
    kwargs.setdefault("loss", LOSS)
    if "architecture" not in kwargs:
        kwargs.setdefault("input_shape", (4,))
        kwargs.setdefault("heads", {"a": 1, "b": 1})
    return MultiTaskHyperModel(**kwargs)


def _hp(**values):
    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    return hp


def test_default_build_is_a_compiled_model_with_the_first_strategy():
    hypermodel = _hypermodel()
    assert hypermodel.strategies == DEFAULT_STRATEGIES
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert isinstance(model, keras_mtl.MultiTaskModel) and model.compiled
    assert type(model.loss_weighting).__name__ == "EqualWeighting"
    assert hp.values["strategy"] == "ew"
    assert (hp.values["shared_layers"], hp.values["head_units"]) == (2, 32)
    # The whole space is declared by one build, each strategy's values under
    # its own name scope and conditional on the strategy.
    names = {p.name for p in hp.space}
    assert {"dwa/temperature", "cagrad/c", "nash_mtl/max_norm"} <= names
    condition = next(p for p in hp.space if p.name == "cagrad/c").conditions[0]
    assert condition.name == "strategy" and condition.values == ["cagrad"]
    assert not hp.is_active("cagrad/c")


def test_the_chosen_strategy_gets_its_trial_values():
    hypermodel = _hypermodel(strategies=["ew", "cagrad", "dwa"])
    hp = _hp(strategy="cagrad", **{"cagrad/c": 0.3})
    model = hypermodel.build(hp)
    strategy = model.loss_weighting
    assert type(strategy).__name__ == "CAGrad" and strategy.c == pytest.approx(0.3)
    assert hp.is_active("cagrad/c") and not hp.is_active("dwa/temperature")
    # A nested choice that is inactive leaves the strategy's default.
    hp = _hp(strategy="dwa", **{"dwa/mode": "epoch", "dwa/temperature": 5.0})
    strategy = hypermodel.build(hp).loss_weighting
    assert (strategy.temperature, strategy.mode, strategy.ema_decay) == (
        5.0,
        "epoch",
        0.9,
    )


def test_strategy_names_aliases_all_and_errors():
    assert _hypermodel(strategies=["uncertainty", "uw", "EW"]).strategies == (
        "uw",
        "ew",
    )
    every = _hypermodel(strategies="all").strategies
    assert list(every) == keras_mtl.weighting.available()
    with pytest.raises(ValueError, match="Unknown strategy 'nope'.*cagrad"):
        _hypermodel(strategies=["ew", "nope"])
    with pytest.raises(ValueError, match="non-empty"):
        _hypermodel(strategies=[])


def test_search_space_overrides():
    hypermodel = _hypermodel(
        strategies=["cagrad", "dtp", "ew"],
        search_spaces={
            "conflict_averse": lambda hp: {"c": hp.Float("radius", 0.2, 0.3)},
            "dtp": {"kpi": "mae", "gamma": 2.0},
            "ew": None,
        },
        metrics=["mae"],
    )
    hp = _hp(strategy="cagrad")
    assert hypermodel.build(hp).loss_weighting.c == pytest.approx(0.2)
    assert "cagrad/radius" in {p.name for p in hp.space}
    dtp = hypermodel.build(_hp(strategy="dtp")).loss_weighting
    assert (dtp.kpi_metric, dtp.gamma) == ("mae", 2.0)
    with pytest.raises(ValueError, match="unknown strategy"):
        _hypermodel(search_spaces={"nope": None})
    with pytest.raises(ValueError, match="function of hp"):
        _hypermodel(search_spaces={"ew": 3})


def test_every_build_gets_fresh_optimizer_losses_and_metrics():
    loss = keras.losses.MeanSquaredError()
    metric = keras.metrics.MeanAbsoluteError(name="mae")
    hypermodel = _hypermodel(
        loss={"a": loss, "b": "mse"},
        metrics=[metric],
        optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
        strategies=["ew"],
    )
    first = hypermodel.build(_hp())
    second = hypermodel.build(_hp())
    assert first.optimizer is not second.optimizer
    assert first.optimizer is not hypermodel.optimizer
    assert first.optimizer.momentum == 0.9
    assert float(first.optimizer.learning_rate) == pytest.approx(0.5)
    assert first._options.task_losses.loss_fns["a"] is not loss
    assert (
        first._options.task_losses.loss_fns["a"]
        is not second._options.task_losses.loss_fns["a"]
    )
    # One metric list for every task becomes one copy per task and model.
    x = np.zeros((4, 4), "float32")
    y = {"a": np.ones((4, 1), "float32"), "b": np.zeros((4, 1), "float32")}
    logs = first.evaluate(x, y, verbose=0, return_dict=True)
    assert {"a_mae", "b_mae"} <= set(logs)
    assert metric.count == 0  # the user's object was never used


def test_learning_rate_choices_and_optimizer_functions():
    hypermodel = _hypermodel(strategies=["ew"], learning_rate=[1e-2, 1e-3])
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values["learning_rate"] == 1e-3  # the first of the sorted values
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    hp = _hp(learning_rate=1e-2)
    assert float(hypermodel.build(hp).optimizer.learning_rate) == pytest.approx(1e-2)

    def optimizer(hp):
        return keras.optimizers.SGD(hp.Float("lr", 0.1, 0.2))

    model = _hypermodel(strategies=["ew"], optimizer=optimizer).build(_hp())
    assert float(model.optimizer.learning_rate) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        _hypermodel(optimizer=optimizer, learning_rate=0.1)
    with pytest.raises(ValueError, match="positive"):
        _hypermodel(learning_rate=[0.1, -1.0])


def _tiny_model(width=3, depth=1):
    inputs = keras.Input((4,))
    x = inputs
    for _ in range(depth):
        x = keras.layers.Dense(width)(x)
    outputs = {"a": keras.layers.Dense(1)(x), "b": keras.layers.Dense(1)(x)}
    return keras_mtl.MultiTaskModel(inputs, outputs)


def test_architecture_function_protocol():
    def with_hp(hp):
        return _tiny_model(hp.Int("width", 2, 8))

    hp = keras_tuner.HyperParameters()
    hypermodel = _hypermodel(architecture=with_hp, strategies=["ew"])
    assert hypermodel.build(hp).count_params() > 0 and hp.values["width"] == 2

    calls = []

    def with_keywords(shared_layers, head_units=7, dropout=0.0):
        calls.append((shared_layers, head_units, dropout))
        return _tiny_model(depth=shared_layers)

    hp = keras_tuner.HyperParameters()
    hypermodel = _hypermodel(
        architecture=with_keywords,
        strategies=["ew"],
        architecture_space={"head_units": 9, "dropout": lambda hp: 0.25},
    )
    hypermodel.build(hp)
    # Searched keywords come from the space; fixed values are recorded.
    assert calls == [(2, 9, 0.25)]
    assert hp.values == {"strategy": "ew", "shared_layers": 2, "head_units": 9}
    assert type(next(p for p in hp.space if p.name == "head_units")).__name__ == (
        "Fixed"
    )

    def both(hp, shared_layers):
        return _tiny_model(hp.Int("width", 2, 8), depth=shared_layers)

    hp = _hp(shared_layers=3)
    model = _hypermodel(architecture=both, strategies=["ew"]).build(hp)
    assert len(model.shared_variables) == 6


def test_architecture_function_errors():
    def needs_more(hp, input_dim):
        return _tiny_model()

    with pytest.raises(ValueError, match="input_dim"):
        _hypermodel(architecture=needs_more)
    with pytest.raises(TypeError, match="MultiTaskModel"):
        _hypermodel(architecture=lambda hp: keras.Sequential()).build(_hp())
    with pytest.raises(ValueError, match="input_shape"):
        _hypermodel(architecture=lambda hp: None, input_shape=(4,))
    with pytest.raises(ValueError, match="architecture"):
        MultiTaskHyperModel(loss=LOSS)
    with pytest.raises(ValueError, match="compile_kwargs"):
        _hypermodel(compile_kwargs={"optimizer": "sgd"})


class _FakeModel:
    """Calls the callbacks' epoch hooks with given logs (no training)."""

    task_names = ("a", "b")

    def __init__(self, epochs):
        self.epochs = epochs
        self.seen = []

    def fit(self, *args, callbacks=None, **kwargs):
        for epoch, logs in enumerate(self.epochs):
            logs = dict(logs)
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
            self.seen.append(logs)


def test_fit_writes_the_objective_into_the_logs_and_returns_the_best_epoch():
    objective = DeltaM({"a": {"accuracy": 0.5}, "b": {"loss": 2.0}})
    hypermodel = _hypermodel(objective=objective, strategies=["ew"])
    epochs = [
        {"val_a_accuracy": 0.5, "val_b_loss": 2.0, "loss": 3.0},  # 0
        {"val_a_accuracy": 0.6, "val_b_loss": 1.0, "loss": 2.0},  # -35
        {"val_a_accuracy": 0.55, "val_b_loss": 1.5, "loss": 1.0},  # -17.5
    ]
    model = _FakeModel(epochs)

    class Later(keras.callbacks.Callback):  # e.g. keras-tuner's checkpoint
        def on_epoch_end(self, epoch, logs=None):
            self.last = dict(logs)

    later = Later()
    result = hypermodel.fit(_hp(), model, callbacks=[later])
    assert [logs["delta_m"] for logs in model.seen] == pytest.approx([0, -35, -17.5])
    assert later.last["delta_m"] == pytest.approx(-17.5)  # seen by later callbacks
    assert result == pytest.approx({**epochs[1], "delta_m": -35.0})
    assert hypermodel.tuner_objective.name == "delta_m"
    assert hypermodel.tuner_objective.direction == "min"


def test_fit_without_the_objective_metrics_stops_the_search():
    hypermodel = _hypermodel(objective=TaskMetric("a", "accuracy"))
    model = _FakeModel([{"a_accuracy": 0.5, "loss": 1.0}])
    with pytest.raises(keras_tuner.errors.FatalValueError, match="validation"):
        hypermodel.fit(_hp(), model)


def test_fit_of_a_real_model_trains_and_reports_every_epoch():
    hypermodel = _hypermodel(strategies=["uw"], learning_rate=0.05)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = {"a": x[:, :1] * 2.0, "b": x[:, 1:2] - x[:, 2:3]}
    result = hypermodel.fit(
        hp, model, x, y, validation_data=(x, y), epochs=3, batch_size=16, verbose=0
    )
    history = model.history.history
    # The default objective (mean validation task loss) is in the history.
    assert history["val_mean_loss"] == pytest.approx(
        [(a + b) / 2 for a, b in zip(history["val_a_loss"], history["val_b_loss"])]
    )
    best = int(np.argmin(history["val_mean_loss"]))
    assert result["val_mean_loss"] == pytest.approx(history["val_mean_loss"][best])
    assert result["a_weight"] == pytest.approx(history["a_weight"][best])


def test_import_guard_explains_what_to_install(monkeypatch):
    for name in list(sys.modules):
        if name.startswith("keras_mtl.tuner"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "keras_tuner", None)
    with pytest.raises(ImportError, match="pip install 'keras-tuner"):
        importlib.import_module("keras_mtl.tuner")
    monkeypatch.setitem(sys.modules, "keras_tuner", keras_tuner)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match="tensorboard"):
        importlib.import_module("keras_mtl.tuner")
