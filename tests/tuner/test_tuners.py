"""Real searches with RandomSearch, BayesianOptimization and Hyperband."""

import keras
import keras_tuner
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_mtl.tuner import (
    DeltaM,
    MultiTaskHyperModel,
    WeightedMetricMean,
    check_trials,
    trial_table,
)

# Single-task validation accuracies the Delta_m of the real search compares
# against (round numbers of the order the examples' STL networks reach).
BASELINES = {"digit": {"accuracy": 0.9}, "parity": {"accuracy": 0.9}}


def _digits(n_train=600, n_val=300):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    targets = {"digit": y.astype("int32"), "parity": (y % 2).astype("float32")}

    def subset(idx):
        return x[idx], {task: v[idx] for task, v in targets.items()}

    return subset(order[:n_train]), subset(order[n_train : n_train + n_val])


def _digits_hypermodel(strategies, objective=None):
    return MultiTaskHyperModel(
        loss={
            "digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "parity": keras.losses.BinaryCrossentropy(from_logits=True),
        },
        input_shape=(64,),
        heads={"digit": 10, "parity": 1},
        metrics={
            "digit": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            "parity": [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")],
        },
        strategies=strategies,
        # Fixed architecture: the only choice left is the strategy.
        architecture_space={"shared_layers": 1, "head_units": 16},
        learning_rate=3e-3,
        objective=objective,
    )


def test_real_two_trial_search_ranks_strategies_by_delta_m(tmp_path):
    train, val = _digits()
    hypermodel = _digits_hypermodel(["ew", "uw"], DeltaM(BASELINES))
    tuner = keras_tuner.RandomSearch(
        hypermodel,
        objective=hypermodel.tuner_objective,
        max_trials=2,
        seed=0,
        directory=tmp_path,
        project_name="digits",
        overwrite=True,
    )
    tuner.search(*train, validation_data=val, epochs=3, batch_size=64, verbose=0)

    trials = check_trials(tuner)
    assert len(trials) == 2
    # The space has exactly two points, so the two trials use both strategies.
    assert {t.hyperparameters.values["strategy"] for t in trials} == {"ew", "uw"}
    for trial in trials:
        recorded = {
            name: trial.metrics.get_last_value(name) for name in trial.metrics.metrics
        }
        # The score is Delta_m of this trial's own validation accuracies
        # (lower is better), recomputed here by hand.
        by_hand = 100 * np.mean(
            [
                -(recorded[f"val_{task}_accuracy"] - 0.9) / 0.9
                for task in ("digit", "parity")
            ]
        )
        assert trial.score == pytest.approx(by_hand, abs=1e-6)
        assert recorded["delta_m"] == pytest.approx(by_hand, abs=1e-6)
    scores = {t.hyperparameters.values["strategy"]: t.score for t in trials}
    assert scores["ew"] != scores["uw"]
    winner = min(scores, key=scores.get)

    best_hp = tuner.get_best_hyperparameters()[0]
    best_trial = min(trials, key=lambda t: t.score)
    assert best_hp.values == best_trial.hyperparameters.values
    assert best_hp.values["strategy"] == winner
    rows = trial_table(tuner)
    assert [r["strategy"] for r in rows] == sorted(scores, key=scores.get)
    assert rows[0]["score"] == pytest.approx(scores[winner])

    # The best model is the checkpoint of the epoch that scored best: its
    # validation accuracies are the recorded ones, with the winner's strategy.
    best_model = tuner.get_best_models()[0]
    expected_class = {"ew": "EqualWeighting", "uw": "UncertaintyWeighting"}[winner]
    assert type(best_model.loss_weighting).__name__ == expected_class
    result = best_model.evaluate(*val, verbose=0, return_dict=True)
    for task in ("digit", "parity"):
        assert result[f"{task}_accuracy"] == pytest.approx(
            best_trial.metrics.get_last_value(f"val_{task}_accuracy"), abs=1e-6
        )


def _tiny_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = {"a": x[:, :1] + x[:, 1:2], "b": x[:, 2:3] * x[:, 3:4]}
    return x, y


def _tiny_hypermodel():
    return MultiTaskHyperModel(
        loss="mse",
        input_shape=(6,),
        heads={"a": 1, "b": 1},
        strategies=["ew", "dwa"],
        architecture_space={"shared_layers": 1, "head_units": 4},
        # Training losses (no validation pass, to keep the test fast).
        objective=WeightedMetricMean("loss", prefix=""),
    )


def test_bayesian_optimization_search(tmp_path):
    x, y = _tiny_problem()
    hypermodel = _tiny_hypermodel()
    tuner = keras_tuner.BayesianOptimization(
        hypermodel,
        objective=hypermodel.tuner_objective,
        max_trials=2,
        num_initial_points=1,
        seed=1,
        directory=tmp_path,
        overwrite=True,
    )
    # The whole conditional space is known before the first trial.
    assert "dwa/temperature" in {p.name for p in tuner.oracle.get_space().space}
    tuner.search(x, y, epochs=1, batch_size=24, verbose=0)
    trials = check_trials(tuner)
    assert len(trials) == 2
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.score == min(t.score for t in trials)
    assert best.score == pytest.approx(best.metrics.get_last_value("mean_loss"))


def test_hyperband_search_continues_a_trial_from_its_checkpoint(tmp_path):
    x, y = _tiny_problem()
    hypermodel = _tiny_hypermodel()
    tuner = keras_tuner.Hyperband(
        hypermodel,
        objective=hypermodel.tuner_objective,
        max_epochs=2,
        factor=2,
        seed=0,
        directory=tmp_path,
        overwrite=True,
    )
    # Two one-epoch trials, then the better one resumed for its second epoch
    # (the rest of the bracket schedule is not needed here).
    tuner.oracle.max_trials = 3
    tuner.search(x, y, batch_size=24, verbose=0)
    trials = check_trials(tuner)
    assert len(trials) == 3
    resumed = [t for t in trials if "tuner/trial_id" in t.hyperparameters.values]
    assert len(resumed) == 1
    values = resumed[0].hyperparameters.values
    assert (values["tuner/initial_epoch"], values["tuner/epochs"]) == (1, 2)
    parent = tuner.oracle.get_trial(values["tuner/trial_id"])
    assert parent.hyperparameters.values["strategy"] == values["strategy"]
