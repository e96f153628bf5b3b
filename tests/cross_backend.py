"""The same strategies, inputs and initial state on the active backend.

`run(name, initial)` trains the contract table's two-task model (with
BatchNorm in the trunk, so that non-trainable state moves too) for three
steps under strategy `name`, from the given initial weights and strategy
state; `aggregates(name)` has a gradient method aggregate fixed matrices
(random, rank-one, mixed scales), twice each so that state advances.
`python tests/cross_backend.py IN OUT FOLDER OTHER` runs both for every
strategy of the pickled `{name: initial}` in IN under the backend of its
environment and saves each trained model to FOLDER; then, once a line on
its standard input says that backend OTHER has saved its models there
(so that the two backends can train at the same time), it loads them and
pickles the results to OUT.
`tests/models/test_cross_backend.py` compares a JAX run with the
TensorFlow run of the same inputs.
"""

import os
import pickle
import sys
import traceback

import keras
import numpy as np
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp
from strategy_table import NEEDS_MORE_TASKS, STRATEGY_TABLE, make_strategy

STEPS = 3
#: Without XLA on both backends: TensorFlow's graph mode compiles in a
#: quarter of XLA's time, and eager JAX reuses its compiled primitives from
#: one strategy to the next (measured: 2.8 s against 11.1 s a strategy on
#: TensorFlow, 0.5 s against 5.6 s on JAX, 2 loaded cores). The contract
#: table (tests/weighting/test_strategy.py) trains every strategy under XLA
#: on both backends, and on TensorFlow compares XLA with graph mode.
_JIT = False


def names():
    """The strategies both backends train (the contract table's two-task
    ones; `CROSS_BACKEND_STRATEGIES=ew,uw` narrows them when debugging)."""
    chosen = os.environ.get("CROSS_BACKEND_STRATEGIES")
    table = set(STRATEGY_TABLE) if not chosen else set(chosen.split(","))
    return sorted(table - NEEDS_MORE_TASKS)


def _model(name):
    _, compile_kwargs = STRATEGY_TABLE[name]
    model = two_task_mlp(batch_norm=True)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=TWO_TASK_LOSSES,
        loss_weighting=make_strategy(name),
        jit_compile=_JIT,
        **compile_kwargs,
    )
    return model


def initial_state(name):
    """The model's initial weights, its strategy's state included."""
    keras.utils.set_random_seed(3)
    return [np.array(v.numpy()) for v in _model(name).weights]


def _backend():
    return keras.backend.backend()


def _saved(folder, name, backend):
    return os.path.join(folder, f"{name}.{backend}.keras")


def _prediction_inputs():
    return two_task_data(n=8, seed=5)[0]


def run(name, initial, folder=None):
    """Weights (strategy state included), last logs and predictions after
    three steps; the model is saved to `folder` when given."""
    model = _model(name)
    assert len(model.weights) == len(initial)
    for variable, value in zip(model.weights, initial):
        variable.assign(value)
    x, y = two_task_data(n=8 * STEPS)
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    logs = {key: float(values[-1]) for key, values in history.history.items()}
    if folder is not None:
        model.save(_saved(folder, name, _backend()))
    return {
        "weights": [(v.path, np.array(v.numpy())) for v in model.weights],
        "strategy": [np.array(v.numpy()) for v in model.loss_weighting.weights],
        "logs": logs,
        "predictions": _predictions(model),
    }


def _predictions(model):
    outputs = model.predict(_prediction_inputs(), verbose=0)
    return {task: np.array(value) for task, value in outputs.items()}


def load(name, folder, backend):
    """Predictions and strategy state of the model `backend` saved."""
    model = keras.models.load_model(_saved(folder, name, backend))
    return {
        "predictions": _predictions(model),
        "strategy": [np.array(v.numpy()) for v in model.loss_weighting.weights],
    }


def matrices():
    """Fixed (T, P) inputs of `aggregates`."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=(1, 6))
    return {
        "random": rng.normal(size=(3, 6)),
        "rank_one": np.array([[1.0], [-0.5], [2.0]]) * direction,
        "mixed_scales": rng.normal(size=(3, 6)) * np.array([[1e-3], [1.0], [1e3]]),
    }


def aggregates(name):
    """`aggregate` of each fixed matrix (twice, state advancing), for a
    gradient method; None for a loss weighting."""
    strategy = make_strategy(name)
    if strategy.requires == "losses" or getattr(strategy, "rep_grad", False):
        return None
    results = {}
    for key, matrix in matrices().items():
        strategy = make_strategy(name)
        losses = np.array([0.5, 1.5, 1.0], "float32")
        matrix = matrix.astype("float32")
        results[key] = [
            np.array(keras.ops.convert_to_numpy(strategy.aggregate(matrix, losses)))
            for _ in range(2)
        ]
    return results


def run_all(initial, folder, other_backend, wait=lambda: None):
    """`run` (saving to `folder`) and `aggregates` for every strategy of
    `initial`, then, after `wait()` (until `other_backend` has saved its
    models), `load` of the model `other_backend` saved; a strategy that
    fails gives its traceback instead."""
    results = {}
    for name, values in initial.items():
        try:
            results[name] = {
                **run(name, values, folder),
                "aggregates": aggregates(name),
            }
        except Exception:  # noqa: BLE001 - reported by the comparing test
            results[name] = {"error": traceback.format_exc()}
    wait()
    for name, result in results.items():
        if "error" in result:
            continue
        try:
            result["loaded"] = load(name, folder, other_backend)
        except Exception:  # noqa: BLE001 - reported by the comparing test
            results[name] = {"error": traceback.format_exc()}
    return results


if __name__ == "__main__":
    source, target, folder, other_backend = sys.argv[1:5]
    with open(source, "rb") as f:
        initial = pickle.load(f)
    results = run_all(initial, folder, other_backend, wait=sys.stdin.readline)
    with open(target, "wb") as f:
        pickle.dump(results, f)
