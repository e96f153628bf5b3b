"""Token tagging on the Turkish treebank: four tasks on every token.

The gold CoNLL-U files of the PyPI package `turkish-treebanks==1.0.0`
(`web.conllu`, 2,541 sentences, and `wiki.conllu`, 2,310 sentences; 81,370
tokens; Apache-2.0) give four token-level tasks, from low-level to
higher-level syntax:

| task     | label of each token                                  | classes |
|----------|------------------------------------------------------|---------|
| "upos"   | universal part of speech (column 4)                  | 14      |
| "xpos"   | language-specific part of speech (column 5)          | 45      |
| "case"   | the `Case` morphological feature, or "none"          | 9       |
| "deprel" | dependency relation to the head (column 8)           | 44      |

(the class counts are those of the real files; they come from the data).

Splits, fixed by position: sentence i (0-based, in file order) of each file is
in "train" when `i % 10 < 8`, in "dev" when `i % 10 == 8` and in "test" when
`i % 10 == 9` (3,881 / 485 / 485 sentences, 64,707 / 8,638 / 8,025
tokens). "validation" is another name
for "dev".

Encoding:
- Token ids come from a vocabulary built on the training split only: id 0 is
  padding (`PAD_ID`), id 1 every out-of-vocabulary form (`OOV_ID`), then the
  forms seen at least `min_count` times in training (by decreasing count,
  ties alphabetically). With the default `min_count=2`, forms seen once in
  training are OOV there too, so the OOV embedding gets trained. Forms are
  lower-cased the Turkish way (I -> ı, İ -> i) by default.
- Label ids index each task's sorted label set, built from all three splits
  (closed tag sets, so that every dev and test token has a class; "none"
  comes first for "case").
- Every sentence is padded (or truncated) to `max_length` tokens. Padding
  positions have token id 0, label 0 and sample weight 0; real tokens weight
  1. With `keras.losses.SparseCategoricalCrossentropy(...,
  reduction="mean_with_sample_weight")` a task's loss is the mean over real
  tokens only; with the default reduction padding still adds nothing to the
  loss or its gradient, but the mean is over all positions. Give accuracies
  as `weighted_metrics` (`compile(weighted_metrics={task: ["accuracy"]})`):
  Keras' plain `metrics` ignore sample weights and would count the padding.

Parsing: comment lines, multi-word token lines (ids "3-4") and empty nodes
(ids "3.1") are skipped. A token may repeat a feature key (these files have
`PersonNumber=A3sg|...|PersonNumber=V3sg`): `parse_features` keeps every
value of a key, in order; the "case" task takes the first `Case` value (no
token of these files has two).

The package's own reader breaks with protobuf 4 or later; this module reads
the `.conllu` files directly.

References:
    Sulubacak, Eryiğit, Pamay. IMST: A Revisited Turkish Dependency Treebank.
        TurCLing 2016 (the annotation scheme of these files).
    Søgaard, Goldberg. Deep multi-task learning with low level tasks
        supervised at lower layers. ACL 2016 (low-level tasks such as POS
        tagging supervised below higher-level ones).
"""

import collections
import copy
import dataclasses
import functools
import pathlib

import numpy as np

from keras_mtl.datasets import paths
from keras_mtl.utils.backend import require_tensorflow

TASKS = ("upos", "xpos", "case", "deprel")
SPLITS = ("train", "dev", "test")
PAD_ID = 0
OOV_ID = 1
PAD_TOKEN = "<pad>"
OOV_TOKEN = "<unk>"
NO_CASE = "none"
FILES = ("web.conllu", "wiki.conllu")
_SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev"}


def parse_features(text):
    """CoNLL-U FEATS -> {key: (value, ...)}, keeping repeated keys' values.

    Example:
    >>> from keras_mtl.datasets.turkish_treebank import parse_features
    >>> parse_features("PersonNumber=A3sg|Case=Loc|PersonNumber=V3sg")
    {'PersonNumber': ('A3sg', 'V3sg'), 'Case': ('Loc',)}
    >>> parse_features("_")
    {}
    """
    features = {}
    if text in ("", "_"):
        return features
    for item in text.split("|"):
        key, _, value = item.partition("=")
        features[key] = features.get(key, ()) + (value,)
    return features


def _case(features):
    values = features.get("Case")
    return values[0] if values else NO_CASE


def read_conllu(path):
    """Reads a CoNLL-U file into a list of sentences.

    Each sentence is a list of token dicts with keys "form", "lemma", "upos",
    "xpos", "feats" (the `parse_features` dict), "case", "head" (int) and
    "deprel".
    """
    sentences, current = [], []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if current:
                    sentences.append(current)
                    current = []
                continue
            if line.startswith("#"):
                continue
            columns = line.split("\t")
            if len(columns) != 10:
                raise ValueError(
                    f"{path}:{number}: expected 10 tab-separated columns, "
                    f"got {len(columns)}."
                )
            if "-" in columns[0] or "." in columns[0]:
                continue  # multi-word token or empty node
            features = parse_features(columns[5])
            current.append(
                {
                    "form": columns[1],
                    "lemma": columns[2],
                    "upos": columns[3],
                    "xpos": columns[4],
                    "feats": features,
                    "case": _case(features),
                    "head": int(columns[6]) if columns[6].isdigit() else -1,
                    "deprel": columns[7],
                }
            )
    if current:
        sentences.append(current)
    return sentences


def split_of(index):
    """The split of the sentence at position `index` of its file."""
    rest = index % 10
    return "train" if rest < 8 else ("dev" if rest == 8 else "test")


def _canonical_split(split):
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(
            f"split must be one of {SPLITS} (or 'validation'), got {split!r}."
        )
    return split


def load_sentences(split="train", data_dir=None, download=False):
    """The sentences of one split (list of token-dict lists, see `read_conllu`).

    The sentences of `web.conllu` come first, then those of `wiki.conllu`,
    each in file order.
    """
    split = _canonical_split(split)
    folder = paths.find("turkish_treebank", data_dir=data_dir, download=download)
    return [
        copy.deepcopy(sentence)
        for sentence, which in _all_sentences(folder)
        if which == split
    ]


def _all_sentences(folder):
    folder = pathlib.Path(folder).resolve()
    stamps = tuple((folder / name).stat().st_mtime_ns for name in FILES)
    return _read_all(str(folder), stamps)


@functools.lru_cache(maxsize=2)
def _read_all(folder, stamps):
    """(sentence, split) pairs of both files, cached per folder and mtimes."""
    pairs = []
    for name in FILES:
        for index, sentence in enumerate(read_conllu(pathlib.Path(folder) / name)):
            pairs.append((sentence, split_of(index)))
    return tuple(pairs)


def normalize_form(form, lowercase=True):
    """Turkish lower-casing (I -> ı, İ -> i, then `str.lower`) when asked.

    Example:
    >>> from keras_mtl.datasets.turkish_treebank import normalize_form
    >>> normalize_form("IĞDIR İstanbul")
    'ığdır istanbul'
    """
    if not lowercase:
        return form
    return form.replace("I", "ı").replace("İ", "i").lower()


@dataclasses.dataclass(frozen=True)
class TreebankVocabulary:
    """Token and label ids of the Turkish treebank tasks.

    Attributes:
        tokens: id -> form; id 0 is `PAD_TOKEN`, id 1 `OOV_TOKEN`.
        labels: task -> tuple of labels (id -> label).
        lowercase: whether forms are lower-cased before the look-up.
    """

    tokens: tuple
    labels: dict
    lowercase: bool = True

    def __post_init__(self):
        object.__setattr__(
            self, "_token_ids", {token: i for i, token in enumerate(self.tokens)}
        )
        object.__setattr__(
            self,
            "_label_ids",
            {
                task: {label: i for i, label in enumerate(values)}
                for task, values in self.labels.items()
            },
        )

    @property
    def num_tokens(self):
        """Size of the token vocabulary, padding and OOV included."""
        return len(self.tokens)

    def num_classes(self, task):
        """Number of labels of `task`."""
        return len(self.labels[task])

    def token_id(self, form):
        """Id of one form (`OOV_ID` when unknown)."""
        return self._token_ids.get(normalize_form(form, self.lowercase), OOV_ID)

    def label_id(self, task, label):
        """Id of one label of `task` (KeyError when unknown)."""
        return self._label_ids[task][label]

    def to_dict(self):
        """A JSON-friendly dict; `TreebankVocabulary.from_dict` rebuilds it."""
        return {
            "tokens": list(self.tokens),
            "labels": {task: list(values) for task, values in self.labels.items()},
            "lowercase": self.lowercase,
        }

    @classmethod
    def from_dict(cls, data):
        return cls(
            tokens=tuple(data["tokens"]),
            labels={task: tuple(v) for task, v in data["labels"].items()},
            lowercase=bool(data["lowercase"]),
        )


def vocabulary_from_sentences(train, all_sentences, min_count=2, lowercase=True):
    """Builds the vocabulary: tokens from `train`, labels from `all_sentences`."""
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}.")
    counts = collections.Counter(
        normalize_form(token["form"], lowercase)
        for sentence in train
        for token in sentence
    )
    kept = sorted(
        (form for form, n in counts.items() if n >= min_count),
        key=lambda form: (-counts[form], form),
    )
    kept = [form for form in kept if form not in (PAD_TOKEN, OOV_TOKEN)]
    labels = {}
    for task in TASKS:
        values = {token[task] for sentence in all_sentences for token in sentence}
        if task == "case":
            labels[task] = (NO_CASE, *sorted(values - {NO_CASE}))
        else:
            labels[task] = tuple(sorted(values))
    return TreebankVocabulary(
        tokens=(PAD_TOKEN, OOV_TOKEN, *kept), labels=labels, lowercase=lowercase
    )


def build_vocabulary(data_dir=None, min_count=2, lowercase=True, download=False):
    """The vocabulary of the real files (tokens of "train", labels of all)."""
    folder = paths.find("turkish_treebank", data_dir=data_dir, download=download)
    pairs = _all_sentences(folder)
    train = [sentence for sentence, which in pairs if which == "train"]
    return vocabulary_from_sentences(
        train, [sentence for sentence, _ in pairs], min_count, lowercase
    )


def encode(sentences, vocabulary, tasks=TASKS, max_length=64):
    """Pads and encodes sentences.

    Returns:
        `(tokens, targets, sample_weights)`: tokens int32 (N, max_length);
        targets `{task: int32 (N, max_length)}`; sample_weights
        `{task: float32 (N, max_length)}`, 1 on real tokens and 0 on padding
        (and on the tokens cut off by truncation, which are not in the
        arrays at all).
    """
    tasks = tuple(tasks)
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; expected some of {TASKS}.")
    if not tasks:
        raise ValueError("tasks must name at least one task.")
    if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}.")
    n, length = len(sentences), int(max_length)
    tokens = np.zeros((n, length), np.int32)
    targets = {task: np.zeros((n, length), np.int32) for task in tasks}
    mask = np.zeros((n, length), np.float32)
    for row, sentence in enumerate(sentences):
        sentence = sentence[:length]
        tokens[row, : len(sentence)] = [
            vocabulary.token_id(t["form"]) for t in sentence
        ]
        mask[row, : len(sentence)] = 1.0
        for task in tasks:
            targets[task][row, : len(sentence)] = [
                vocabulary.label_id(task, t[task]) for t in sentence
            ]
    weights = {task: mask.copy() for task in tasks}
    return tokens, targets, weights


def load_arrays(
    split="train",
    tasks=TASKS,
    max_length=64,
    vocabulary=None,
    min_count=2,
    lowercase=True,
    data_dir=None,
    download=False,
):
    """One split as padded numpy arrays.

    Args:
        split: "train", "dev" (or "validation") or "test".
        tasks: the tasks to return, some of `TASKS`.
        max_length: tokens per sentence; longer sentences are truncated (64
            keeps every token of 99% of the sentences; the longest has 88
            tokens). `None`: the length of the longest sentence of all splits.
        vocabulary: a `TreebankVocabulary` (for instance the one a model was
            trained with); built from the files when None, with `min_count`
            and `lowercase`.
        data_dir, download: where the files are (see `keras_mtl.datasets.paths`).

    Returns:
        `(tokens, targets, sample_weights)` as in `encode`.
    """
    split = _canonical_split(split)
    folder = paths.find("turkish_treebank", data_dir=data_dir, download=download)
    pairs = _all_sentences(folder)
    if vocabulary is None:
        train = [sentence for sentence, which in pairs if which == "train"]
        vocabulary = vocabulary_from_sentences(
            train, [sentence for sentence, _ in pairs], min_count, lowercase
        )
    if max_length is None:
        max_length = max(len(sentence) for sentence, _ in pairs)
    sentences = [sentence for sentence, which in pairs if which == split]
    return encode(sentences, vocabulary, tasks, max_length)


def load(
    split="train",
    batch_size=32,
    shuffle=None,
    seed=0,
    tasks=TASKS,
    max_length=64,
    vocabulary=None,
    min_count=2,
    lowercase=True,
    data_dir=None,
    download=False,
):
    """One split as a batched `tf.data.Dataset` of
    `(tokens, targets, sample_weights)`.

    tokens: int32 (batch, max_length); targets: `{task: int32 (batch,
    max_length)}`; sample_weights: `{task: float32 (batch, max_length)}` with
    0 on padding, the form `MultiTaskModel.fit` takes per-task sample weights
    in. `shuffle` (default: True for "train") reshuffles every epoch from
    `seed`. Use the same `vocabulary` (or the same `min_count`, `lowercase`)
    for every split.

    Example (with the files fetched by `scripts/fetch_data.sh`):

        vocab = keras_mtl.datasets.turkish_treebank.build_vocabulary()
        train = keras_mtl.datasets.turkish_treebank.load("train", vocabulary=vocab)
        # model: a MultiTaskModel with one (batch, length, classes) head per
        # task, vocab.num_classes(task) logits each
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )
        model.compile(
            optimizer="adam",
            loss={task: loss for task in TASKS},
            weighted_metrics={task: ["accuracy"] for task in TASKS},
        )
        model.fit(train, epochs=4)
    """
    tf = require_tensorflow(
        "keras_mtl.datasets.turkish_treebank.load (a tf.data.Dataset; "
        "load_arrays needs only numpy)"
    )

    split = _canonical_split(split)
    tokens, targets, weights = load_arrays(
        split,
        tasks=tasks,
        max_length=max_length,
        vocabulary=vocabulary,
        min_count=min_count,
        lowercase=lowercase,
        data_dir=data_dir,
        download=download,
    )
    dataset = tf.data.Dataset.from_tensor_slices((tokens, targets, weights))
    if shuffle is None:
        shuffle = split == "train"
    if shuffle:
        dataset = dataset.shuffle(len(tokens), seed=int(seed))
    return dataset.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
