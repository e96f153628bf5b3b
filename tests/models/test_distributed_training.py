"""MirroredStrategy on two logical CPUs gives one device's training."""

import json
import os
import subprocess
import sys

import pytest

# ":gramian": compiled with per_task_gradients="gramian", on a trunk
# of three 64-unit layers (the staged Gramian path). ":split": a strategy
# that cuts each batch into sub-batches, compared with one device fed the
# samples in the order that gives its sub-batches the replicas' samples.
STRATEGIES = [
    "ew",
    "uw",
    "dwa",
    "slaw",
    "famo",
    "db_mtl",
    "pcgrad",
    "mgda",
    "nash_mtl",
    "nash_mtl:gramian",
    "modo:split",
    "sdmgrad:split",
    "auto_lambda:split",
]


@pytest.mark.slow
@pytest.mark.integration
def test_two_replicas_match_one_device():
    script = os.path.join(os.path.dirname(__file__), "distributed_check.py")
    result = subprocess.run(
        [sys.executable, script, *STRATEGIES],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-3000:]
    report = json.loads(lines[-1][len("RESULT ") :])
    # XLA cannot compile Keras' step over two local devices: refused up front.
    assert "jit_compile=True cannot work" in report["explicit_jit"]
    assert "other devices" in report["explicit_jit"]
    for name in STRATEGIES:
        assert report[name]["max_state_diff"] < 1e-5, (name, report[name])
        assert report[name]["max_log_diff"] < 1e-5, (name, report[name])
