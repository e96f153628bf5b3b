"""The figures: written as PNG files from fake results; a clear ImportError."""

import sys

import pytest

from keras_mtl.compare import plots, report

DIRECTIONS = {"left": [("accuracy", True)], "right": [("accuracy", True)]}


def _run(method, seed, left, right, weights):
    return {
        "method": method,
        "kind": "single-task" if method == "stl" else "loss",
        "seed": seed,
        "metrics": {"left": {"accuracy": left}, "right": {"accuracy": right}},
        "task_weights": weights,
        "step_seconds": 0.01 * (1 + seed),
        "train_seconds": 5.0 + seed,
    }


RUNS = [
    _run("stl", 0, 0.80, 0.78, {}),
    _run("stl", 1, 0.81, 0.77, {}),
    _run("ew", 0, 0.82, 0.79, {"left": [1.0, 1.0, 1.0], "right": [1.0, 1.0, 1.0]}),
    _run("ew", 1, 0.83, 0.78, {"left": [1.0, 1.0, 1.0], "right": [1.0, 1.0, 1.0]}),
    _run("dwa", 0, 0.81, 0.80, {"left": [1.0, 1.2, 0.9], "right": [1.0, 0.8, 1.1]}),
    _run("dwa", 1, 0.80, 0.79, {"left": [1.0, 1.1, 0.8], "right": [1.0, 0.9, 1.2]}),
]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_save_all_writes_three_pngs(tmp_path):
    rows = report.summarize(RUNS, DIRECTIONS)
    paths = plots.save_all(
        RUNS,
        rows,
        DIRECTIONS,
        str(tmp_path),
        title="fake",
        percent_metrics=("accuracy",),
    )
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["metric_vs_time.png", "task_metrics.png", "task_weights.png"]
    for path in paths:
        with open(path, "rb") as file:
            content = file.read()
        assert content.startswith(PNG_MAGIC) and len(content) > 5000


def test_no_weights_figure_for_single_task_runs_only(tmp_path):
    stl = [r for r in RUNS if r["method"] == "stl"]
    assert plots.plot_task_weights(stl, str(tmp_path / "w.png")) is None
    assert not (tmp_path / "w.png").exists()


def test_metric_vs_time_without_stl_uses_the_mean_metric(tmp_path):
    runs = [r for r in RUNS if r["method"] != "stl"]
    rows = report.summarize(runs, DIRECTIONS)
    path = plots.plot_metric_vs_time(rows, DIRECTIONS, str(tmp_path / "t.png"))
    assert path is not None and (tmp_path / "t.png").exists()
    # Different metrics per task and no baseline: nothing comparable.
    mixed = {"left": [("accuracy", True)], "right": [("mae", False)]}
    mixed_runs = [
        dict(r, metrics={"left": {"accuracy": 0.8}, "right": {"mae": 1.0}})
        for r in runs
    ]
    mixed_rows = report.summarize(mixed_runs, mixed)
    assert plots.plot_metric_vs_time(mixed_rows, mixed, str(tmp_path / "m.png")) is None


def test_missing_matplotlib_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"keras-mtl\[examples\]"):
        plots.require_matplotlib()
