"""Tests of `keras_mtl.tuner.objectives`: the values and their conventions."""

import keras_tuner
import numpy as np
import pytest

from keras_mtl.tuner.objectives import (
    DeltaM,
    TaskMetric,
    WeightedMetricMean,
    infer_direction,
)

TASKS = ("seg", "depth", "cls")


def test_delta_m_matches_a_hand_computation_and_is_lower_is_better():
    baselines = {
        "seg": {"accuracy": 0.80, "iou": 0.50},
        "depth": {"mae": 0.60},
        "cls": {"loss": 0.40},
    }
    objective = DeltaM(baselines)
    logs = {
        "val_seg_accuracy": 0.84,  # +5% better
        "val_seg_iou": 0.45,  # -10% worse
        "val_depth_mae": 0.66,  # +10% worse (lower is better)
        "val_cls_loss": 0.30,  # -25% better
        "val_loss": 123.0,  # ignored
    }
    # Sign convention: positive = worse. Mean over the four metrics.
    expected = 100 * (-0.05 + 0.10 + 0.10 - 0.25) / 4
    assert objective(logs, TASKS) == pytest.approx(expected)
    assert objective.direction == "min" and objective.name == "delta_m"
    # The single-task results themselves give exactly 0.
    same = {"val_seg_accuracy": 0.8, "val_seg_iou": 0.5}
    same.update({"val_depth_mae": 0.6, "val_cls_loss": 0.4})
    assert objective(same, TASKS) == pytest.approx(0.0)


def test_delta_m_task_average_weighs_tasks_not_metrics():
    baselines = {"seg": {"accuracy": 0.8, "iou": 0.5}, "depth": {"mae": 0.6}}
    logs = {"val_seg_accuracy": 0.84, "val_seg_iou": 0.45, "val_depth_mae": 0.66}
    by_task = DeltaM(baselines, average="tasks")(logs, TASKS)
    by_metric = DeltaM(baselines)(logs, TASKS)
    assert by_task == pytest.approx(100 * ((-0.05 + 0.10) / 2 + 0.10) / 2)
    assert by_metric == pytest.approx(100 * (-0.05 + 0.10 + 0.10) / 3)


def test_delta_m_explicit_direction_and_errors():
    objective = DeltaM({"seg": {"pixel_score": (2.0, "max")}})
    assert objective({"val_seg_pixel_score": 3.0}, TASKS) == pytest.approx(-50.0)
    with pytest.raises(ValueError, match="pixel_score"):
        DeltaM({"seg": {"pixel_score": 2.0}})  # direction unknown
    with pytest.raises(ValueError, match="non-zero"):
        DeltaM({"seg": {"accuracy": 0.0}})
    with pytest.raises(ValueError, match="average"):
        DeltaM({"seg": {"accuracy": 0.5}}, average="median")
    with pytest.raises(ValueError, match="does not have"):
        DeltaM({"other": {"accuracy": 0.5}})({"val_other_accuracy": 1}, TASKS)


def test_missing_keys_name_the_keys_and_the_remedy():
    objective = DeltaM({"seg": {"accuracy": 0.8}})
    with pytest.raises(KeyError, match="val_seg_accuracy.*validation"):
        objective({"seg_accuracy": 0.9}, TASKS)
    train = DeltaM({"seg": {"accuracy": 0.8}}, prefix="")
    assert train({"seg_accuracy": 0.88}, TASKS) == pytest.approx(-10.0)
    assert objective.required_keys(TASKS) == ["val_seg_accuracy"]
    assert objective.has_value({"val_seg_accuracy": 1.0}, TASKS)
    assert not objective.has_value({}, TASKS)


def test_weighted_metric_mean():
    logs = {"val_seg_accuracy": 0.9, "val_depth_accuracy": 0.6, "val_cls_accuracy": 0.3}
    equal = WeightedMetricMean("accuracy")
    assert equal(logs, TASKS) == pytest.approx(0.6)
    assert (equal.name, equal.direction) == ("val_mean_accuracy", "max")
    weighted = WeightedMetricMean("accuracy", weights={"seg": 2.0, "depth": 1.0})
    assert weighted(logs, TASKS) == pytest.approx((2 * 0.9 + 0.6) / 3)
    losses = WeightedMetricMean({"seg": "loss", "cls": "loss"})
    assert losses.direction == "min"
    assert losses({"val_seg_loss": 1.0, "val_cls_loss": 3.0}, TASKS) == 2.0
    with pytest.raises(ValueError, match="mix directions"):
        WeightedMetricMean({"seg": "accuracy", "depth": "mae"})
    with pytest.raises(ValueError, match="direction"):
        WeightedMetricMean("score")
    with pytest.raises(ValueError, match="weights"):
        WeightedMetricMean("accuracy", weights={"seg": -1.0})
    with pytest.raises(ValueError, match="no weights"):
        WeightedMetricMean({"seg": "loss", "cls": "loss"}, weights={"seg": 1.0})(
            {"val_seg_loss": 1.0, "val_cls_loss": 3.0}, TASKS
        )


def test_task_metric():
    objective = TaskMetric("depth", "mae")
    assert (objective.name, objective.direction) == ("val_depth_mae", "min")
    assert objective({"val_depth_mae": 0.25}, TASKS) == 0.25
    assert TaskMetric("depth", "score", direction="max").direction == "max"
    with pytest.raises(ValueError, match="tasks"):
        objective({"val_depth_mae": 0.25}, ("seg",))


def test_best_follows_the_direction():
    values = [3.0, 1.0, 2.0, 1.0]
    assert DeltaM({"seg": {"accuracy": 0.5}}).best(values) == 1
    assert TaskMetric("seg", "accuracy").best(values) == 0
    # A diverged epoch (NaN) is never the best one.
    assert TaskMetric("seg", "accuracy").best([float("nan"), 0.1, 0.2]) == 2
    assert DeltaM({"seg": {"accuracy": 0.5}}).best([0.3, float("nan")]) == 0
    with pytest.raises(ValueError):
        TaskMetric("seg", "accuracy").best([])


def test_infer_direction():
    assert infer_direction("sparse_categorical_accuracy") == "max"
    assert infer_direction("mean_absolute_error") == "min"
    assert infer_direction("rmse") == "min"
    assert infer_direction("auc") == "max"
    assert infer_direction("perplexity_score") is None


def test_to_keras_tuner_gives_the_same_name_and_direction():
    objective = DeltaM({"seg": {"accuracy": 0.5}}).to_keras_tuner()
    assert isinstance(objective, keras_tuner.Objective)
    assert (objective.name, objective.direction) == ("delta_m", "min")
    # keras-tuner ranks by it in the objective's direction.
    assert objective.better_than(-1.0, 2.0)
    assert np.isfinite(objective.get_value({"delta_m": 0.5}))
