"""Training one configuration of a comparison: a strategy (or the single-task
baselines) on a problem with one seed.

`train_strategy` trains one `MultiTaskModel` on all tasks with a strategy;
`train_single_task` trains one model per task (same trunk and head, equal
weighting of its one loss). Both return a `RunResult`: test metrics per
task, the strategy's task weights per epoch, the median time of a training
step and the training wall time.

Timing: `StepTimer` measures each training step from the start of the batch
to the end of its callbacks (the model's own hook reads a variable there,
so the step has finished); the first step (tracing, and XLA compilation
with `jit_compile=True`) is left out of the median. The training time is
the wall time of `fit`, tracing included. For the single-task baselines
the step time and training time are the sums over the task models: the
cost of one step, or of the training, of every task.
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np

from keras_mtl import weighting
from keras_mtl.compare import label_budget
from keras_mtl.compare.report import STL
from keras_mtl.utils.backend import require_tensorflow

# The comparison feeds tf.data pipelines (and the data sets' `load`).
tf = require_tensorflow("keras_mtl.compare")


@dataclasses.dataclass
class RunResult:
    """What one training run gives (JSON-able through `to_dict`)."""

    method: str
    kind: str
    seed: int
    metrics: dict  # {task: {metric: value}} on the test split
    task_weights: dict  # {task: [mean weight of each epoch]}; {} for STL
    step_seconds: float
    train_seconds: float
    epochs: int
    steps_per_epoch: int
    train_loss: dict  # {task: [mean training loss of each epoch]}

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        return cls(**data)


class StepTimer(keras.callbacks.Callback):
    """Records the wall time of every training step."""

    def __init__(self):
        super().__init__()
        self.times = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def median_step(self):
        """Median step time without the first step (tracing), in seconds."""
        times = self.times[1:] or self.times
        return float(np.median(times)) if times else float("nan")


def strategy_kind(name):
    """ "loss" for loss-weighting strategies, "gradient" for the others."""
    strategy = weighting.get(name)
    return "loss" if strategy.requires == "losses" else "gradient"


def make_dataset(split, batch_size, shuffle_seed=None):
    """A batched `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`."""
    parts = (split.x, split.y)
    if split.sample_weight is not None:
        parts = parts + (split.sample_weight,)
    dataset = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(split), seed=int(shuffle_seed))
    return dataset.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)


def _metric_value(results, task, name):
    """A task's metric from `evaluate`'s dict.

    Keras names a compiled metric `<task>_<name>`, except in a model with a
    single output (the single-task baselines), where it is just `<name>`.
    """
    for key in (f"{task}_{name}", name):
        if key in results:
            return float(results[key])
    raise KeyError(
        f"No metric {name!r} of task {task!r} in the evaluation results "
        f"{sorted(results)}."
    )


def _fit_and_evaluate(
    problem,
    data,
    tasks,
    strategy,
    seed,
    epochs,
    batch_size,
    learning_rate,
    jit_compile,
    verbose,
    single_task=False,
):
    """Builds, trains and evaluates one model; returns logs and timings.

    With labels left out (`label_budget.limit_labels`), a multi-task model
    trains on every example with the absent labels marked missing, a
    single-task model (`single_task`) on its task's labelled examples."""
    keras.utils.set_random_seed(int(seed))
    model = problem.build_model(data, tasks)
    train_split = data.train.select(tasks)
    if single_task:
        train_split = label_budget.labelled(train_split, tasks[0], data)
        missing_labels = None
    else:
        missing_labels = label_budget.missing_labels_of(data, tasks)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=problem.losses(tasks),
        loss_weighting=strategy,
        missing_labels=missing_labels,
        jit_compile=jit_compile,
        **problem.compile_metrics(tasks),
    )
    train = make_dataset(train_split, batch_size, shuffle_seed=seed)
    test = make_dataset(data.test.select(tasks), max(int(batch_size), 256))
    timer = StepTimer()
    start = time.perf_counter()
    history = model.fit(
        train, epochs=int(epochs), verbose=verbose, callbacks=[timer], shuffle=False
    )
    train_seconds = time.perf_counter() - start
    results = model.evaluate(test, verbose=0, return_dict=True)
    specs = problem.metric_specs()
    metrics = {
        task: {
            spec.name: _metric_value(results, task, spec.name) for spec in specs[task]
        }
        for task in tasks
    }
    logs = history.history
    weights = {
        task: [float(v) for v in logs.get(f"{task}_weight", [])] for task in tasks
    }
    losses = {task: [float(v) for v in logs.get(f"{task}_loss", [])] for task in tasks}
    steps = len(timer.times) // max(int(epochs), 1)
    return metrics, weights, losses, timer.median_step(), train_seconds, steps


def train_strategy(
    problem,
    data,
    strategy,
    seed,
    epochs,
    batch_size=None,
    learning_rate=None,
    jit_compile=False,
    verbose=0,
):
    """Trains one multi-task model on all tasks with `strategy`.

    Args:
        problem: a `keras_mtl.compare.problems.Problem`.
        data: its `Data` (from `problem.load`).
        strategy: a name of `keras_mtl.weighting.available()`.
        seed: seeds the weights, the shuffling, dropout and the strategy.
        epochs: training epochs.
        batch_size, learning_rate: default: the problem's.
        jit_compile: compile the training step with XLA.
        verbose: `fit`'s verbosity.

    Returns:
        A `RunResult` with `method=strategy`.
    """
    metrics, weights, losses, step, seconds, steps = _fit_and_evaluate(
        problem,
        data,
        tuple(problem.tasks),
        strategy,
        seed,
        epochs,
        batch_size or problem.batch_size,
        learning_rate or problem.learning_rate,
        jit_compile,
        verbose,
    )
    return RunResult(
        method=strategy,
        kind=strategy_kind(strategy),
        seed=int(seed),
        metrics=metrics,
        task_weights=weights,
        step_seconds=step,
        train_seconds=seconds,
        epochs=int(epochs),
        steps_per_epoch=steps,
        train_loss=losses,
    )


def train_single_task(
    problem,
    data,
    seed,
    epochs,
    batch_size=None,
    learning_rate=None,
    jit_compile=False,
    verbose=0,
):
    """Trains one single-task model per task (the STL baseline).

    Each model is the problem's network with only that task's head, trained
    on that task's loss alone, with the same optimizer, epochs and seed as
    the multi-task runs.

    Returns:
        A `RunResult` with `method="stl"`: every task's metric from its own
        model; step and training times summed over the task models.
    """
    metrics, losses = {}, {}
    step_total, seconds_total, steps = 0.0, 0.0, 0
    for task in problem.tasks:
        task_metrics, _, task_losses, step, seconds, steps = _fit_and_evaluate(
            problem,
            data,
            (task,),
            "ew",
            seed,
            epochs,
            batch_size or problem.batch_size,
            learning_rate or problem.learning_rate,
            jit_compile,
            verbose,
            single_task=True,
        )
        metrics.update(task_metrics)
        losses.update(task_losses)
        step_total += step
        seconds_total += seconds
    return RunResult(
        method=STL,
        kind="single-task",
        seed=int(seed),
        metrics=metrics,
        task_weights={},
        step_seconds=step_total,
        train_seconds=seconds_total,
        epochs=int(epochs),
        steps_per_epoch=steps,
        train_loss=losses,
    )
