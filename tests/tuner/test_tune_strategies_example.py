"""Smoke test of examples/tune_strategies.py on a small slice of the digits."""

import importlib.util
import pathlib

import pytest

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "tune_strategies.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("tune_strategies_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.integration
def test_example_runs_a_checked_search_and_evaluates_the_best_model(tmp_path):
    example = _load_example()
    tuner, result = example.run(
        ["ew", "uw"],
        max_trials=2,
        epochs=1,
        directory=str(tmp_path),
        limit=200,
        verbose=False,
    )
    rows = example.trial_table(tuner)
    assert len(rows) == 2 and {r["strategy"] for r in rows} <= {"ew", "uw"}
    assert all(r["status"] == "COMPLETED" for r in rows)
    assert tuner.oracle.objective.name == "delta_m"
    assert 0.0 <= result["digit_accuracy"] <= 1.0
    assert 0.0 <= result["parity_accuracy"] <= 1.0
