"""Training one configuration: metrics, task weights, timings, determinism."""

import math

import numpy as np
import pytest

from keras_mtl.compare import problems, runner

PROBLEM = problems.get("dense_digits")


@pytest.fixture(scope="module")
def data():
    return PROBLEM.load(train_size=32, test_size=16, quick=True)


def test_train_strategy_result(data):
    result = runner.train_strategy(
        PROBLEM, data, "dwa", seed=0, epochs=3, batch_size=16
    )
    assert result.method == "dwa" and result.kind == "loss" and result.seed == 0
    assert set(result.metrics) == set(PROBLEM.tasks)
    assert set(result.metrics["depth"]) == {"mae"}
    assert all(math.isfinite(v) for m in result.metrics.values() for v in m.values())
    # One weight per epoch and task; DWA's first two epochs are uniform (1)
    # and its weights always sum to the number of tasks.
    assert all(len(w) == 3 for w in result.task_weights.values())
    assert [result.task_weights[t][0] for t in PROBLEM.tasks] == pytest.approx(
        [1.0] * 3
    )
    totals = np.sum([result.task_weights[t] for t in PROBLEM.tasks], axis=0)
    assert totals == pytest.approx([3.0] * 3, rel=1e-4)
    assert result.steps_per_epoch == 2 and result.epochs == 3
    assert 0 < result.step_seconds < result.train_seconds
    assert len(result.train_loss["edges"]) == 3
    assert runner.RunResult.from_dict(result.to_dict()) == result


def test_gradient_strategy_kind(data):
    result = runner.train_strategy(
        PROBLEM, data, "pcgrad", seed=1, epochs=1, batch_size=16
    )
    assert result.kind == "gradient"
    assert runner.strategy_kind("mgda") == "gradient"
    assert runner.strategy_kind("uw") == "loss"


def test_single_task_baseline(data):
    result = runner.train_single_task(PROBLEM, data, seed=0, epochs=1, batch_size=16)
    assert result.method == "stl" and result.kind == "single-task"
    assert set(result.metrics) == set(PROBLEM.tasks)
    assert result.task_weights == {}
    assert result.step_seconds > 0


def test_same_seed_same_result(data):
    first = runner.train_strategy(PROBLEM, data, "ew", seed=3, epochs=1, batch_size=16)
    second = runner.train_strategy(PROBLEM, data, "ew", seed=3, epochs=1, batch_size=16)
    for task in PROBLEM.tasks:
        for name, value in first.metrics[task].items():
            assert second.metrics[task][name] == pytest.approx(value, rel=1e-5)


def test_step_timer_leaves_out_the_first_step():
    timer = runner.StepTimer()
    timer.times = [5.0, 0.1, 0.3, 0.2]
    assert timer.median_step() == pytest.approx(0.2)
    timer.times = [5.0]
    assert timer.median_step() == 5.0
