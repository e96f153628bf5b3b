"""The comparison loop: configuration defaults and checks, files written."""

import json
import os

import pytest

from keras_mtl.compare import comparison, problems


def test_resolved_fills_the_problem_defaults():
    config = comparison.ComparisonConfig().resolved()
    problem = problems.get("multi_fashion")
    assert config.strategies == comparison.DEFAULT_STRATEGIES
    assert config.epochs == problem.epochs
    assert config.train_size == problem.train_size
    assert config.batch_size == problem.batch_size
    assert config.output_dir == os.path.join("runs", "compare-multi_fashion")
    quick = comparison.ComparisonConfig(
        dataset="yeast", quick=True, epochs=2
    ).resolved()
    assert quick.epochs == 2  # given explicitly: wins over the quick value
    assert quick.train_size == problems.get("yeast").quick["train_size"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategies": ("ew", "nope")}, "nope"),
        ({"strategies": ("ew", "ew")}, "repeat"),
        ({"strategies": (), "stl": False}, "Nothing to run"),
        ({"seeds": 0}, "seeds"),
        ({"dataset": "cifar"}, "cifar"),
    ],
)
def test_resolved_rejects_bad_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        comparison.ComparisonConfig(**kwargs).resolved()


def test_run_comparison_writes_results(tmp_path):
    lines = []
    result = comparison.run_comparison(
        comparison.ComparisonConfig(
            dataset="dense_digits",
            strategies=("mgda",),
            seeds=1,
            quick=True,
            plots=False,
            output_dir=str(tmp_path),
        ),
        log=lines.append,
    )
    assert len(lines) == 1 + 2  # the header and one line per run
    assert [r.method for r in result["runs"]] == ["stl", "mgda"]
    assert sorted(os.listdir(tmp_path)) == ["results.csv", "results.md", "runs.json"]
    with open(tmp_path / "runs.json", encoding="utf-8") as file:
        saved = json.load(file)
    assert saved["config"]["dataset"] == "dense_digits"
    assert [r["method"] for r in saved["runs"]] == ["stl", "mgda"]
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert result["table"] in text and "Nash-MTL" in text
    assert [row["method"] for row in result["rows"]] == ["stl", "mgda"]
