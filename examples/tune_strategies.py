"""Tune the multi-task strategy (and its hyperparameters) with Keras Tuner.

The data are scikit-learn's 1,797 real 8x8 handwritten digits (bundled, no
download), split 60/20/20 into train, validation and test. Two tasks share
one trunk: the digit class (10-way) and its parity (binary).

1. Single-task baselines: one network per task (the same architecture with
   one head) gives the validation accuracies Delta_m compares against.
2. The search: `keras_mtl.tuner.MultiTaskHyperModel` chooses a strategy,
   its hyperparameters (ranges in `keras_mtl.tuner.search_spaces`) and the
   sharing depth and head width; trials are ranked by an objective that
   does not depend on the strategy (by default Delta_m against step 1,
   lower is better), never by the strategies' own weighted losses.
3. `check_trials` raises if any trial failed (keras-tuner's `search` only
   raises after three failures in a row), then the best model is evaluated
   on the test split.

    python examples/tune_strategies.py --strategies=ew,uw,dwa,pcgrad \\
        --tuner=bayesian --max_trials=8 --epochs=15
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tempfile  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_mtl.tuner import (  # noqa: E402
    DefaultArchitecture,
    DeltaM,
    MultiTaskHyperModel,
    TaskMetric,
    WeightedMetricMean,
    check_trials,
    trial_table,
)
from keras_mtl.tuner._keras_tuner import keras_tuner  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "strategies",
    ["ew", "uw", "dwa", "famo", "pcgrad", "cagrad"],
    "Strategy names to search (see keras_mtl.weighting.available()).",
)
flags.DEFINE_enum(
    "tuner", "random", ["random", "bayesian", "hyperband"], "The search algorithm."
)
flags.DEFINE_integer("max_trials", 8, "Trials (random / bayesian).")
flags.DEFINE_integer("epochs", 15, "Epochs per trial (Hyperband: max epochs).")
flags.DEFINE_enum(
    "objective",
    "delta_m",
    ["delta_m", "mean_accuracy", "digit_accuracy"],
    "delta_m: mean relative change of the validation accuracies against the "
    "single-task networks (lower is better); mean_accuracy: mean validation "
    "accuracy of the tasks; digit_accuracy: the digit task's alone.",
)
flags.DEFINE_string(
    "directory",
    os.path.join(tempfile.gettempdir(), "keras_mtl_tune_strategies"),
    "Where keras-tuner writes its trials (overwritten).",
)
flags.DEFINE_integer("seed", 0, "Seed of the split, the weights and the tuner.")

HEADS = {"digit": 10, "parity": 1}  # logits


def load_data(seed, limit=None):
    """The digits split 60/20/20 as ((x, {task: y}) train, val, test)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    targets = {"digit": y.astype("int32"), "parity": (y % 2).astype("float32")}
    order = np.random.default_rng(seed).permutation(len(x))[:limit]
    cut1, cut2 = int(0.6 * len(order)), int(0.8 * len(order))

    def subset(idx):
        return x[idx], {task: values[idx] for task, values in targets.items()}

    return subset(order[:cut1]), subset(order[cut1:cut2]), subset(order[cut2:])


def losses():
    return {
        "digit": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "parity": keras.losses.BinaryCrossentropy(from_logits=True),
    }


def metrics():
    return {
        "digit": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        "parity": [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")],
    }


def single_task_baselines(train, val, epochs, seed):
    """Validation accuracy of one network per task (same trunk and head)."""
    baselines = {}
    for task in HEADS:
        keras.utils.set_random_seed(seed)
        model = DefaultArchitecture((64,), {task: HEADS[task]}, name=f"stl_{task}")()
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss={task: losses()[task]},
            metrics={task: metrics()[task]},
        )
        model.fit(
            train[0], {task: train[1][task]}, epochs=epochs, batch_size=32, verbose=0
        )
        result = model.evaluate(
            val[0], {task: val[1][task]}, verbose=0, return_dict=True
        )
        # Keras names the metric of a one-output model without the task.
        accuracy = result.get(f"{task}_accuracy", result.get("accuracy"))
        baselines[task] = {"accuracy": float(accuracy)}
    return baselines


def make_tuner(name, hypermodel, max_trials, epochs, directory, seed):
    common = dict(
        objective=hypermodel.tuner_objective,
        directory=directory,
        project_name="digits",
        overwrite=True,
        seed=seed,
    )
    if name == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if name == "bayesian":
        return keras_tuner.BayesianOptimization(
            hypermodel, max_trials=max_trials, **common
        )
    return keras_tuner.Hyperband(hypermodel, max_epochs=epochs, factor=3, **common)


def run(
    strategies,
    tuner="random",
    max_trials=8,
    epochs=15,
    objective="delta_m",
    directory=None,
    seed=0,
    limit=None,
    verbose=True,
):
    """Runs the whole example; returns (tuner, test metrics of the best model)."""
    say = print if verbose else (lambda *a, **k: None)
    keras.utils.set_random_seed(seed)
    train, val, test = load_data(seed, limit)
    if objective == "delta_m":
        baselines = single_task_baselines(train, val, epochs, seed)
        say(f"Single-task validation accuracies: {baselines}")
        mtl_objective = DeltaM(baselines)
    elif objective == "mean_accuracy":
        mtl_objective = WeightedMetricMean("accuracy")
    else:
        mtl_objective = TaskMetric("digit", "accuracy")
    hypermodel = MultiTaskHyperModel(
        loss=losses(),
        input_shape=(64,),
        heads=HEADS,
        metrics=metrics(),
        strategies=strategies,
        optimizer=keras.optimizers.Adam(1e-3),
        objective=mtl_objective,
    )
    search = make_tuner(
        tuner,
        hypermodel,
        max_trials,
        epochs,
        directory or os.path.join(tempfile.gettempdir(), "keras_mtl_tune"),
        seed,
    )
    search.search(
        train[0],
        train[1],
        validation_data=val,
        epochs=epochs,
        batch_size=32,
        verbose=0,
    )
    check_trials(search)  # raises with the errors if any trial failed

    say(f"\nTrials ranked by {mtl_objective.name} ({mtl_objective.direction}):")
    say(f"{'trial':<6} {'score':>9}  hyperparameters")
    for row in trial_table(search):
        score = "-" if row["score"] is None else f"{row['score']:9.3f}"
        say(f"{row['trial_id']:<6} {score:>9}  {row['hyperparameters']}")

    best_hp = search.get_best_hyperparameters()[0]
    best_model = search.get_best_models()[0]
    result = best_model.evaluate(test[0], test[1], verbose=0, return_dict=True)
    say(f"\nBest: {best_hp.values}")
    say(
        "Test accuracy of the best model: "
        + ", ".join(f"{task} {result[f'{task}_accuracy']:.4f}" for task in HEADS)
    )
    return search, result


def main(argv):
    del argv
    run(
        FLAGS.strategies,
        tuner=FLAGS.tuner,
        max_trials=FLAGS.max_trials,
        epochs=FLAGS.epochs,
        objective=FLAGS.objective,
        directory=FLAGS.directory,
        seed=FLAGS.seed,
    )


if __name__ == "__main__":
    app.run(main)
