"""Δm% in both conventions on hand-computed numbers; the table writers."""

import csv
import math

import numpy as np
import pytest

from keras_mtl.compare import report

ONE_METRIC = {"a": [("acc", True)], "b": [("mae", False)]}


def test_one_metric_per_task_by_hand():
    # a: accuracy 0.80 -> 0.84 is 5% better; b: error 2.0 -> 2.5 is 25% worse.
    base = {"a": {"acc": 0.80}, "b": {"mae": 2.0}}
    new = {"a": {"acc": 0.84}, "b": {"mae": 2.5}}
    # Nash-MTL: 100/2 * [(-1)^1 (0.84-0.8)/0.8 + (-1)^0 (2.5-2)/2] = 10.
    assert report.delta_m_drop(new, base, ONE_METRIC) == pytest.approx(10.0)
    # Maninis / LibMTL: 100/2 * [(0.84-0.8)/0.8 - (2.5-2)/2] = -10.
    assert report.delta_m_improvement(new, base, ONE_METRIC) == pytest.approx(-10.0)


def test_several_metrics_per_task_average_differently():
    directions = {"a": [("acc", True), ("f1", True)], "b": [("mae", False)]}
    base = {"a": {"acc": 0.5, "f1": 0.5}, "b": {"mae": 1.0}}
    new = {"a": {"acc": 0.6, "f1": 0.5}, "b": {"mae": 0.7}}
    # Relative improvements: acc +20%, f1 0%, mae +30% (lower error).
    # Nash-MTL averages the three metrics: -(20 + 0 + 30) / 3.
    assert report.delta_m_drop(new, base, directions) == pytest.approx(-50.0 / 3)
    # LibMTL averages inside the task first: ((20 + 0) / 2 + 30) / 2 = 20.
    assert report.delta_m_improvement(new, base, directions) == pytest.approx(20.0)


def test_libmtl_docstring_example():
    # The example of LibMTL's count_improvement (LibMTL/utils.py): weight 1
    # means higher is better. Worked out by hand:
    # A: (93-96)/96 = -0.03125 and -(99-98)/98 = -0.0102041 -> mean -0.0207270
    # B: (0.5-0.2)/0.2 = 1.5; mean over tasks 0.7396365 -> 73.96365 %.
    base = {"A": {"m0": 96, "m1": 98}, "B": {"m0": 0.2}}
    new = {"A": {"m0": 93, "m1": 99}, "B": {"m0": 0.5}}
    directions = {"A": [("m0", True), ("m1", False)], "B": [("m0", True)]}
    assert report.delta_m_improvement(new, base, directions) == pytest.approx(
        73.963648, abs=1e-5
    )


def test_drop_matches_the_nash_mtl_formula():
    # Re-derived from the formula of Navon et al. (their delta_fn): signs
    # 1 for higher-is-better metrics, mean of (-1)^sign (a - base) / base.
    rng = np.random.default_rng(0)
    higher = [True, False, True, True, False]
    base_values = rng.uniform(0.5, 2.0, size=5)
    new_values = rng.uniform(0.5, 2.0, size=5)
    sign = np.array(higher, dtype=int)
    expected = np.mean((-1.0) ** sign * (new_values - base_values) / base_values) * 100
    directions = {f"t{i}": [("m", h)] for i, h in enumerate(higher)}
    base = {f"t{i}": {"m": v} for i, v in enumerate(base_values)}
    new = {f"t{i}": {"m": v} for i, v in enumerate(new_values)}
    assert report.delta_m_drop(new, base, directions) == pytest.approx(expected)
    # One metric per task: the two conventions are exact negatives.
    assert report.delta_m_improvement(new, base, directions) == pytest.approx(-expected)


def test_zero_baseline_is_an_error():
    with pytest.raises(ValueError, match="a/acc"):
        report.delta_m_drop(
            {"a": {"acc": 0.5}, "b": {"mae": 1.0}},
            {"a": {"acc": 0.0}, "b": {"mae": 1.0}},
            ONE_METRIC,
        )


def _run(method, seed, acc, mae, step, kind="loss"):
    return {
        "method": method,
        "kind": kind,
        "seed": seed,
        "metrics": {"a": {"acc": acc}, "b": {"mae": mae}},
        "task_weights": {} if method == "stl" else {"a": [1.0], "b": [1.0]},
        "step_seconds": step,
        "train_seconds": 10 * step,
    }


FAKE_RUNS = [
    _run("stl", 0, 0.80, 2.0, 0.020, "single-task"),
    _run("stl", 1, 0.82, 2.2, 0.022, "single-task"),
    _run("ew", 0, 0.84, 2.1, 0.010),
    _run("ew", 1, 0.86, 2.3, 0.012),
    _run("pcgrad", 0, 0.79, 2.0, 0.020, "gradient"),
    _run("pcgrad", 1, 0.81, 2.2, 0.024, "gradient"),
]


def test_summarize_means_spreads_and_deltas():
    rows = report.summarize(FAKE_RUNS, ONE_METRIC)
    assert [r["method"] for r in rows] == ["stl", "ew", "pcgrad"]
    ew = rows[1]
    assert ew["seeds"] == 2 and ew["kind"] == "loss"
    mean, std = ew["a/acc"]
    assert mean == pytest.approx(0.85)
    assert std == pytest.approx(np.std([0.84, 0.86], ddof=1))
    # Per seed against the STL mean (acc 0.81, mae 2.1), then averaged.
    per_seed = [
        -100 * ((0.84 - 0.81) / 0.81 - (2.1 - 2.1) / 2.1) / 2,
        -100 * ((0.86 - 0.81) / 0.81 - (2.3 - 2.1) / 2.1) / 2,
    ]
    assert ew[report.DROP][0] == pytest.approx(np.mean(per_seed))
    assert ew[report.DROP][1] == pytest.approx(np.std(per_seed, ddof=1))
    assert ew[report.IMPROVEMENT][0] == pytest.approx(-np.mean(per_seed))
    # STL against itself: mean 0, the spread is the baseline's seed noise.
    assert rows[0][report.DROP][0] == pytest.approx(0.0, abs=1e-12)
    assert rows[0][report.DROP][1] > 0
    # Time per step: ms, and the ratio to EW's mean step.
    assert ew["step_ms"][0] == pytest.approx(11.0)
    assert rows[2]["step_ratio_ew"] == pytest.approx(0.022 / 0.011)
    assert ew["step_ratio_ew"] == pytest.approx(1.0)


def test_summarize_without_stl_or_ew():
    runs = [r for r in FAKE_RUNS if r["method"] == "pcgrad"]
    (row,) = report.summarize(runs, ONE_METRIC)
    assert row[report.DROP] is None and row[report.IMPROVEMENT] is None
    assert row["step_ratio_ew"] is None
    table = report.markdown_table([row], ONE_METRIC)
    assert table.splitlines()[-1].count("n/a") == 3


def test_markdown_and_csv_writers(tmp_path):
    rows = report.summarize(FAKE_RUNS, ONE_METRIC)
    md = tmp_path / "results.md"
    text = report.write_markdown(
        rows,
        ONE_METRIC,
        str(md),
        "Fake comparison",
        notes=["a note"],
        percent_metrics=("acc",),
    )
    assert md.read_text(encoding="utf-8") == text
    lines = text.splitlines()
    assert lines[0] == "# Fake comparison"
    assert "- a note" in lines
    header = next(line for line in lines if line.startswith("| method"))
    assert "a acc % ↑" in header and "b mae ↓" in header
    assert report.DROP_LABEL in header and report.IMPROVEMENT_LABEL in header
    ew_line = next(line for line in lines if line.startswith("| ew "))
    cells = [c.strip() for c in ew_line.strip("|").split("|")]
    # Accuracy in percent with its std; the error with 4 decimals.
    assert cells[3] == f"85.00 ± {100 * np.std([0.84, 0.86], ddof=1):.2f}"
    assert cells[4] == f"2.2000 ± {np.std([2.1, 2.3], ddof=1):.4f}"
    assert cells[-2] == "1.00"  # × EW

    path = tmp_path / "results.csv"
    report.write_csv(rows, ONE_METRIC, str(path))
    with open(path, newline="", encoding="utf-8") as file:
        table = list(csv.DictReader(file))
    assert [r["method"] for r in table] == ["stl", "ew", "pcgrad"]
    assert float(table[1]["a_acc_mean"]) == pytest.approx(0.85)
    assert float(table[2]["b_mae_std"]) == pytest.approx(
        np.std([2.0, 2.2], ddof=1), rel=1e-5
    )
    assert float(table[2]["step_ratio_ew"]) == pytest.approx(2.0)
    assert float(table[1]["delta_m_drop_mean"]) == pytest.approx(
        rows[1][report.DROP][0], rel=1e-5
    )
    assert "delta_m_improvement_std" in table[0]


def test_mean_std_of_one_value_has_no_spread():
    mean, std = report.mean_std([3.0])
    assert mean == 3.0 and math.isnan(std)
    assert (
        "±"
        not in report.markdown_table(
            report.summarize([FAKE_RUNS[2]], ONE_METRIC), ONE_METRIC
        ).splitlines()[-1]
    )


def test_zero_baseline_in_a_summary_gives_n_a_and_a_warning():
    runs = [dict(r) for r in FAKE_RUNS]
    runs[0] = dict(runs[0], metrics={"a": {"acc": 0.0}, "b": {"mae": 2.0}})
    runs[1] = dict(runs[1], metrics={"a": {"acc": 0.0}, "b": {"mae": 2.0}})
    with pytest.warns(UserWarning, match="a/acc"):
        rows = report.summarize(runs, ONE_METRIC)
    assert all(row[report.DROP] is None for row in rows)
    assert "n/a" in report.markdown_table(rows, ONE_METRIC)
