"""Fewer labels for some tasks (`keras_mtl/compare/label_budget.py`) and the
comparison's `task_train_sizes`."""

import math

import numpy as np
import pytest

import keras_mtl
from keras_mtl.compare import comparison, label_budget, problems, runner


def test_parse_task_sizes():
    assert label_budget.parse_task_sizes("left:500,right:20000") == {
        "left": 500,
        "right": 20000,
    }
    assert label_budget.parse_task_sizes(["left:5"]) == {"left": 5}
    for bad, match in [
        ("left", "left:500"),
        ("left:x", "left:500"),
        ("a:1,a:2", "twice"),
        (":3", "left:500"),
    ]:
        with pytest.raises(ValueError, match=match):
            label_budget.parse_task_sizes(bad)


def _data(n=20):
    rng = np.random.default_rng(0)
    train = problems.Split(
        rng.normal(size=(n, 3)).astype("float32"),
        {
            "cls": rng.integers(0, 4, size=n).astype("int32"),
            "reg": rng.normal(size=(n, 2)).astype("float32"),
        },
    )
    test = problems.Split(train.x[:5], {t: v[:5] for t, v in train.y.items()})
    return problems.Data(train, test)


def test_limit_labels_keeps_n_labels_per_named_task_drawn_from_the_seed():
    data = _data()
    limited = label_budget.limit_labels(data, {"cls": 6, "reg": 3}, seed=1)
    cls, reg = limited.train.y["cls"], limited.train.y["reg"]
    assert limited.info["missing_labels"]["cls"] == -1
    assert math.isnan(limited.info["missing_labels"]["reg"])
    rows = limited.info["labelled_rows"]
    assert len(rows["cls"]) == 6 and len(rows["reg"]) == 3
    assert np.sum(cls != -1) == 6 and np.all(
        cls[rows["cls"]] == data.train.y["cls"][rows["cls"]]
    )
    assert np.sum(~np.isnan(reg).any(axis=1)) == 3
    assert np.isnan(np.delete(reg, rows["reg"], axis=0)).all()
    # The inputs, the test split and the given data are untouched.
    assert limited.train.x is data.train.x and limited.test is data.test
    assert np.all(data.train.y["cls"] >= 0) and not np.isnan(data.train.y["reg"]).any()
    same = label_budget.limit_labels(data, {"cls": 6, "reg": 3}, seed=1)
    other = label_budget.limit_labels(data, {"cls": 6, "reg": 3}, seed=2)
    np.testing.assert_array_equal(same.info["labelled_rows"]["cls"], rows["cls"])
    assert not np.array_equal(other.info["labelled_rows"]["cls"], rows["cls"])
    # A size of the whole split (or more) leaves the task fully labelled.
    whole = label_budget.limit_labels(data, {"cls": 20}, seed=0)
    assert whole.info["missing_labels"] == {} and np.all(whole.train.y["cls"] >= 0)

    split = label_budget.labelled(limited.train.select(["reg"]), "reg", limited)
    assert len(split) == 3 and not np.isnan(split.y["reg"]).any()
    np.testing.assert_array_equal(split.x, data.train.x[rows["reg"]])
    assert label_budget.missing_labels_of(limited, ["cls"]) == {"cls": -1}
    assert label_budget.missing_labels_of(whole, ["cls", "reg"]) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task_train_sizes": {"nope": 3}}, "unknown tasks"),
        ({"task_train_sizes": {"depth": 0}}, "at least 1"),
        ({"task_train_sizes": {"depth": 3}, "strategies": ("krum",)}, "krum"),
    ],
)
def test_bad_task_train_sizes_are_refused(kwargs, match):
    config = comparison.ComparisonConfig(dataset="dense_digits", **kwargs)
    with pytest.raises(ValueError, match=match):
        config.resolved()


def test_the_multi_task_model_sees_every_input_and_the_baseline_its_labels(
    tmp_path, monkeypatch
):
    seen = []
    make_dataset = runner.make_dataset

    def recording(split, batch_size, shuffle_seed=None):
        if shuffle_seed is not None:  # a training split
            seen.append((tuple(split.y), len(split), dict(split.y)))
        return make_dataset(split, batch_size, shuffle_seed)

    compiled = []
    compile_ = keras_mtl.MultiTaskModel.compile

    def recording_compile(self, *args, **kwargs):
        compiled.append((self.task_names, kwargs.get("missing_labels")))
        return compile_(self, *args, **kwargs)

    monkeypatch.setattr(runner, "make_dataset", recording)
    monkeypatch.setattr(keras_mtl.MultiTaskModel, "compile", recording_compile)
    result = comparison.run_comparison(
        comparison.ComparisonConfig(
            dataset="dense_digits",
            strategies=("ew",),
            seeds=1,
            quick=True,
            plots=False,
            output_dir=str(tmp_path),
            task_train_sizes={"depth": 5},
        ),
        log=None,
    )
    sizes = {tasks: n for tasks, n, _ in seen}
    assert sizes[("depth",)] == 5  # the baseline: its labelled examples only
    assert sizes[("segmentation",)] == sizes[("edges",)] == 32
    tasks, n, targets = seen[-1]
    assert tasks == ("segmentation", "edges", "depth") and n == 32
    depth = targets["depth"].reshape(32, -1)
    assert np.sum(~np.isnan(depth).any(axis=1)) == 5  # the others: NaN
    rules = dict(compiled)
    assert rules[("depth",)] is None
    assert math.isnan(rules[("segmentation", "edges", "depth")]["depth"])
    assert [run.method for run in result["runs"]] == ["stl", "ew"]
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "Labelled training examples per task: depth 5" in text
