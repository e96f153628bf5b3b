"""The sweep over labelled sizes (`keras_mtl/compare/sweep.py`): the grid,
its files, its progress bar, and resuming without retraining."""

import csv
import importlib.util

import pytest

from keras_mtl.compare import comparison, runner, sweep

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_parse_sweep():
    assert sweep.parse_sweep("left:4000,250,1000") == ("left", [250, 1000, 4000])
    for bad in ["left", "left:", "left:a,3", ":3", "left:0,5"]:
        with pytest.raises(ValueError, match="sweep"):
            sweep.parse_sweep(bad)


def test_progress_estimates_the_time_left_from_trained_cells(monkeypatch):
    clock = iter([0.0, 60.0, 120.0, 180.0])
    monkeypatch.setattr(sweep.time, "perf_counter", lambda: next(clock))
    lines = []
    progress = sweep.GridProgress(4, lines.append, width=8)
    progress(trained=False)  # kept: no estimate yet
    progress(trained=True)  # 120 s for one trained cell, two cells left
    progress(trained=True)
    assert lines[0] == "[##......] 1/4 cells, 1.0 min elapsed, time left unknown"
    assert lines[1] == "[####....] 2/4 cells, 2.0 min elapsed, about 4.0 min left"
    assert lines[2] == "[######..] 3/4 cells, 3.0 min elapsed, about 1.5 min left"


def test_sweep_writes_the_grid_and_resumes_without_training(tmp_path, monkeypatch):
    config = comparison.ComparisonConfig(
        dataset="dense_digits",
        strategies=("ew",),
        seeds=1,
        quick=True,
        plots=HAS_MATPLOTLIB,
        output_dir=str(tmp_path),
    )
    lines = []
    result = sweep.run_sweep(config, "depth", [4, 8], log=lines.append)
    assert [(row["size"], row["method"]) for row in result["rows"]] == [
        (4, "stl"),
        (4, "ew"),
        (8, "stl"),
        (8, "ew"),
    ]
    assert len(lines) == 4 and lines[-1].startswith("[" + "#" * 30 + "] 4/4 cells")
    assert all(row[sweep.report.DROP] is not None for row in result["rows"])
    with open(tmp_path / "sweep.csv", encoding="utf-8") as file:
        table = list(csv.DictReader(file))
    assert [(r["size"], r["method"]) for r in table] == [
        ("4", "stl"),
        ("4", "ew"),
        ("8", "stl"),
        ("8", "ew"),
    ]
    text = (tmp_path / "sweep.md").read_text(encoding="utf-8")
    assert "labelled depth" in text and "| 8 | ew |" in text
    if HAS_MATPLOTLIB:
        assert (tmp_path / "sweep.png").stat().st_size > 1000

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(runner, "train_strategy", no_training)
    monkeypatch.setattr(runner, "train_single_task", no_training)
    lines.clear()
    again = sweep.run_sweep(config, "depth", [4, 8], log=lines.append)
    # repr: the single seed's std is NaN, which == would call unequal.
    assert repr(again["rows"]) == repr(result["rows"])
    assert lines[-1].endswith("done") and "time left unknown" in lines[0]
