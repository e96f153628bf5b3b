"""End to end: `python -m keras_mtl.compare --quick` on tiny Fashion-MNIST files."""

import csv
import os
import subprocess
import sys

import pytest
from compare_data import fake_data


@pytest.mark.integration
def test_quick_command_writes_table_csv_and_figures(tmp_path):
    fake_data().make_fashion_dir(tmp_path / "data" / "fashion-mnist", 40, 20)
    out = tmp_path / "out"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    env.pop("KERAS_MTL_DATA_DIR", None)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_mtl.compare",
            "--quick",
            f"--data_dir={tmp_path / 'data'}",
            f"--output_dir={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    stdout = completed.stdout
    # The default data set, the quick strategies and the baseline.
    assert "Multi-Fashion" in stdout
    for method in ("stl", "ew", "pcgrad"):
        assert f"| {method} |" in stdout
    assert "Δm% ↓ (Nash-MTL)" in stdout and "Δm% ↑ (Maninis/LibMTL)" in stdout
    files = set(os.listdir(out))
    assert {
        "results.md",
        "results.csv",
        "runs.json",
        "task_weights.png",
        "task_metrics.png",
        "metric_vs_time.png",
    } <= files
    with open(out / "results.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [r["method"] for r in rows] == ["stl", "ew", "pcgrad"]
    assert {"left_accuracy_mean", "right_accuracy_std", "step_ratio_ew"} <= set(rows[0])
