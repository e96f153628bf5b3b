"""Tiny data folders for the comparison tests, in the real file formats.

Reuses the writers of `tests/datasets/fake_data.py` (the formats the
loaders read), loaded by path: the test folders are not packages.
"""

import importlib.util
import pathlib
import sys


def fake_data():
    """The `tests/datasets/fake_data.py` module."""
    if "fake_data" in sys.modules:
        return sys.modules["fake_data"]
    path = pathlib.Path(__file__).resolve().parents[1] / "datasets" / "fake_data.py"
    spec = importlib.util.spec_from_file_location("fake_data", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_data"] = module
    spec.loader.exec_module(module)
    return module


def make_data_dir(root):
    """A data folder with tiny Fashion-MNIST, yeast and treebank files."""
    root = pathlib.Path(root)
    fake = fake_data()
    fake.make_fashion_dir(root / "fashion-mnist", n_train=40, n_test=20)
    fake.make_yeast_file(root / "yeast" / "yeast.csv.gz", n_rows=957)
    fake.make_treebank_dir(root / "turkish-treebank", n_web=20, n_wiki=10)
    return root
