"""Tests of `check_trials` and `trial_table`: failed trials are not silent."""

import sys

import keras_tuner
import numpy as np
import pytest

from keras_mtl.tuner import (
    MultiTaskHyperModel,
    WeightedMetricMean,
    check_trials,
    trial_table,
)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    return x, {"a": x[:, :1], "b": x[:, 1:2]}


def _hypermodel(**kwargs):
    return MultiTaskHyperModel(
        loss="mse",
        input_shape=(4,),
        heads={"a": 1, "b": 1},
        architecture_space={"shared_layers": 1, "head_units": 4},
        # Training losses: no validation pass, to keep the tests fast.
        objective=WeightedMetricMean("loss", prefix=""),
        **kwargs,
    )


def _tuner(hypermodel, directory, max_trials=2):
    return keras_tuner.RandomSearch(
        hypermodel,
        objective=hypermodel.tuner_objective,
        max_trials=max_trials,
        seed=0,
        directory=directory,
        overwrite=True,
    )


def test_search_without_tensorboard_returns_quietly_but_check_trials_raises(
    tmp_path, monkeypatch, capsys
):
    # The measured pitfall: keras-tuner imports tensorboard in every trial;
    # when that fails, each trial is recorded as failed and search() returns
    # normally (it raises only after 3 consecutive failures).
    monkeypatch.setitem(sys.modules, "tensorboard.plugins.hparams", None)
    tuner = _tuner(_hypermodel(strategies=["ew", "uw"]), tmp_path)
    tuner.search(*_data(), epochs=1, verbose=0)  # no exception
    statuses = [t.status for t in tuner.oracle.trials.values()]
    assert statuses == ["FAILED", "FAILED"]
    with pytest.raises(RuntimeError) as error:
        check_trials(tuner)
    message = str(error.value)
    assert "2 of 2 trials failed and 0 completed" in message
    assert "pip install tensorboard" in message
    assert "tensorboard.plugins.hparams" in message  # the trials' own error
    assert "'strategy': 'ew'" in message and "'strategy': 'uw'" in message
    capsys.readouterr()


def test_max_failed_accepts_some_failures_and_the_table_ranks_them_last(tmp_path):
    # "static" with one weight for two tasks fails to compile: one trial
    # fails, the equal-weighting trial completes.
    hypermodel = _hypermodel(
        strategies=["ew", "static"],
        search_spaces={"static": {"weights": [1.0]}},
        learning_rate=0.01,
    )
    x, y = _data()
    tuner = _tuner(hypermodel, tmp_path)
    tuner.search(x, y, epochs=1, verbose=0)
    with pytest.raises(RuntimeError, match=r"1 of 2 trials failed(.|\n)*static"):
        check_trials(tuner)
    completed = check_trials(tuner, max_failed=1)
    assert [t.hyperparameters.values["strategy"] for t in completed] == ["ew"]
    rows = trial_table(tuner)
    assert [(r["strategy"], r["status"]) for r in rows] == [
        ("ew", "COMPLETED"),
        ("static", "FAILED"),
    ]
    assert rows[1]["score"] is None and rows[1]["metrics"] == {}
    assert rows[0]["score"] == pytest.approx(rows[0]["metrics"]["mean_loss"])
    # Only the strategy's active values (a fixed learning rate is no hp).
    assert rows[0]["hyperparameters"] == {
        "strategy": "ew",
        "shared_layers": 1,
        "head_units": 4,
    }


def test_check_trials_before_search(tmp_path):
    tuner = _tuner(_hypermodel(strategies=["ew"]), tmp_path)
    with pytest.raises(RuntimeError, match="no trial"):
        check_trials(tuner)
