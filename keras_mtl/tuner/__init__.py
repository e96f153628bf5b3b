"""Keras Tuner search over multi-task strategies and architectures.

Needs keras-tuner and tensorboard (a helpful ImportError says so when they
are missing). The usual loop:

    hypermodel = MultiTaskHyperModel(loss=..., input_shape=..., heads=...,
                                     metrics=..., strategies=["ew", "uw"],
                                     objective=DeltaM(single_task_results))
    tuner = keras_tuner.RandomSearch(hypermodel,
                                     objective=hypermodel.tuner_objective,
                                     max_trials=10, directory=...)
    tuner.search(x, y, validation_data=(x_val, y_val), epochs=10)
    check_trials(tuner)  # raises when trials failed (search does not)
    best_hp = tuner.get_best_hyperparameters()[0]

Do not pass an optimizer, loss or metrics to the tuner: the hypermodel
compiles every model itself.
"""

from keras_mtl.tuner.default_architecture import DefaultArchitecture
from keras_mtl.tuner.hypermodel import STRATEGY_HP, MultiTaskHyperModel
from keras_mtl.tuner.objectives import (
    DeltaM,
    MultiTaskObjective,
    TaskMetric,
    WeightedMetricMean,
    infer_direction,
)
from keras_mtl.tuner.search_spaces import (
    ARCHITECTURE_SPACE,
    DEFAULT_STRATEGIES,
    SEARCH_SPACES,
)
from keras_mtl.tuner.trials import check_trials, trial_table

__all__ = [
    "ARCHITECTURE_SPACE",
    "DEFAULT_STRATEGIES",
    "DefaultArchitecture",
    "DeltaM",
    "MultiTaskHyperModel",
    "MultiTaskObjective",
    "SEARCH_SPACES",
    "STRATEGY_HP",
    "TaskMetric",
    "WeightedMetricMean",
    "check_trials",
    "infer_direction",
    "trial_table",
]
