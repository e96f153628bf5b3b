"""Tests of `keras_mtl.datasets.turkish_treebank` on small CoNLL-U files."""

import keras
import numpy as np
import pytest
from fake_data import make_treebank_dir, real_data_kwargs

import keras_mtl
from keras_mtl.datasets import turkish_treebank as tb


@pytest.fixture
def data_dir(tmp_path):
    make_treebank_dir(tmp_path / "turkish-treebank")
    return tmp_path


def _first_forms(sentences):
    return [sentence[0]["form"] for sentence in sentences]


def test_split_rule_by_position_in_each_file(data_dir):
    dev = _first_forms(tb.load_sentences("dev", data_dir=data_dir))
    test = _first_forms(tb.load_sentences("test", data_dir=data_dir))
    train = _first_forms(tb.load_sentences("train", data_dir=data_dir))
    assert dev == ["w8", "w18", "k8"]
    assert test == ["w9", "w19", "k9"]
    assert len(train) == 24 and "w7" in train and "k0" in train
    assert _first_forms(tb.load_sentences("validation", data_dir=data_dir)) == dev
    with pytest.raises(ValueError, match="split"):
        tb.load_sentences("holdout", data_dir=data_dir)


def test_parsing_skips_multiword_tokens_and_empty_nodes(data_dir):
    sentence = tb.load_sentences("train", data_dir=data_dir)[0]
    forms = [token["form"] for token in sentence]
    assert forms == ["w0", "ortak", "IĞDIR", "yalniz"]
    assert "gizli" not in forms and "ortakIĞDIR" not in forms
    token = sentence[2]
    # Repeated feature keys keep every value; Case is read from them.
    assert token["feats"]["PersonNumber"] == ("A3sg", "V3sg")
    assert token["case"] == "Dat" and sentence[1]["case"] == tb.NO_CASE
    assert token["head"] == 2 and token["deprel"] == "obj"


def test_parse_features_and_turkish_lowercase():
    assert tb.parse_features("A=1|B=2|A=3") == {"A": ("1", "3"), "B": ("2",)}
    assert tb.parse_features("_") == {}
    assert tb.normalize_form("IĞDIR") == "ığdır"
    assert tb.normalize_form("İzmir") == "izmir"
    assert tb.normalize_form("IĞDIR", lowercase=False) == "IĞDIR"


def test_vocabulary_built_on_train_only(data_dir):
    vocab = tb.build_vocabulary(data_dir=data_dir)
    assert vocab.tokens[:2] == (tb.PAD_TOKEN, tb.OOV_TOKEN)
    # By decreasing count ("ıı" 36 times, "ortak" and "ığdır" once in each
    # of the 24 training sentences), ties alphabetically; nothing else twice.
    assert vocab.tokens[2:] == ("ıı", "ortak", "ığdır")
    assert vocab.token_id("IĞDIR") == vocab.token_id("ığdır") >= 2
    # "yalniz" and "w0" occur once in training: OOV with min_count=2.
    assert vocab.token_id("yalniz") == tb.OOV_ID
    assert vocab.token_id("w0") == tb.OOV_ID
    once = tb.build_vocabulary(data_dir=data_dir, min_count=1)
    assert once.token_id("yalniz") >= 2 and once.token_id("w0") >= 2
    # Forms only seen in dev or test are never in the vocabulary.
    assert once.token_id("w9") == tb.OOV_ID and once.token_id("w8") == tb.OOV_ID
    # Labels come from every split (closed tag sets); "none" first for case.
    assert "only_test" in vocab.labels["deprel"]
    assert vocab.labels["case"] == ("none", "Dat", "Loc")
    assert vocab.num_classes("upos") == 4  # ADJ NOUN PUNCT VERB
    assert tb.TreebankVocabulary.from_dict(vocab.to_dict()) == vocab
    with pytest.raises(ValueError, match="min_count"):
        tb.build_vocabulary(data_dir=data_dir, min_count=0)


def test_padding_masks_and_labels(data_dir):
    vocab = tb.build_vocabulary(data_dir=data_dir)
    tokens, targets, weights = tb.load_arrays(
        "train", max_length=8, vocabulary=vocab, data_dir=data_dir
    )
    sentences = tb.load_sentences("train", data_dir=data_dir)
    lengths = np.array([len(s) for s in sentences])
    assert tokens.shape == (24, 8) and tokens.dtype == np.int32
    assert set(targets) == set(tb.TASKS) == set(weights)
    positions = np.arange(8)[None, :]
    real = positions < lengths[:, None]
    for task in tb.TASKS:
        assert weights[task].dtype == np.float32 and targets[task].shape == (24, 8)
        np.testing.assert_array_equal(weights[task], real.astype(np.float32))
        assert (targets[task][~real] == 0).all()
        assert 0 <= targets[task].min() and targets[task].max() < vocab.num_classes(
            task
        )
    assert (tokens[~real] == tb.PAD_ID).all() and (tokens[real] != tb.PAD_ID).all()
    # Labels decode back to the file's annotations.
    for row, sentence in enumerate(sentences):
        for col, token in enumerate(sentence):
            for task in tb.TASKS:
                assert vocab.labels[task][targets[task][row, col]] == token[task]
    # The unseen relation of the test sentences has a class of its own.
    _, test_targets, _ = tb.load_arrays("test", vocabulary=vocab, data_dir=data_dir)
    only_test = vocab.label_id("deprel", "only_test")
    assert (test_targets["deprel"][:, 2] == only_test).all()


def test_truncation_and_full_length(data_dir):
    tokens, _, weights = tb.load_arrays(
        "train", tasks=("upos",), max_length=3, data_dir=data_dir
    )
    assert tokens.shape == (24, 3) and list(weights) == ["upos"]
    assert (weights["upos"] == 1.0).all()
    tokens, _, weights = tb.load_arrays("dev", max_length=None, data_dir=data_dir)
    assert tokens.shape[1] == 6  # the longest sentence of all splits
    with pytest.raises(ValueError, match="task"):
        tb.load_arrays(tasks=("lemma",), data_dir=data_dir)
    with pytest.raises(ValueError, match="max_length"):
        tb.load_arrays(max_length=0, data_dir=data_dir)


def test_deterministic(data_dir):
    a = tb.load_arrays("train", data_dir=data_dir)
    b = tb.load_arrays("train", data_dir=data_dir)
    np.testing.assert_array_equal(a[0], b[0])
    for task in tb.TASKS:
        np.testing.assert_array_equal(a[1][task], b[1][task])


TWO_TASKS = ("upos", "deprel")  # a low-level and a higher-level task


def _tagger(vocab, length):
    inputs = keras.Input((length,), dtype="int32")
    hidden = keras.layers.Embedding(vocab.num_tokens, 8)(inputs)
    hidden = keras.layers.Dense(8, activation="tanh")(hidden)
    outputs = {
        task: keras.layers.Dense(vocab.num_classes(task), name=task)(hidden)
        for task in TWO_TASKS
    }
    model = keras_mtl.MultiTaskModel(inputs, outputs)
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )
    model.compile(
        optimizer="adam",
        loss={task: loss for task in TWO_TASKS},
        weighted_metrics={task: ["accuracy"] for task in TWO_TASKS},
    )
    return model


def test_dataset_trains_and_padding_is_ignored(data_dir):
    vocab = tb.build_vocabulary(data_dir=data_dir)
    full = tb.load(
        "train", batch_size=8, max_length=8, vocabulary=vocab, data_dir=data_dir
    )
    tokens, targets, weights = next(iter(full))
    assert tokens.shape == (8, 8) and set(targets) == set(weights) == set(tb.TASKS)
    assert targets["case"].shape == (8, 8) and weights["deprel"].shape == (8, 8)
    dataset = tb.load(
        "train",
        batch_size=8,
        max_length=8,
        vocabulary=vocab,
        tasks=TWO_TASKS,
        data_dir=data_dir,
    )
    model = _tagger(vocab, 8)
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["upos_loss"][0])

    # Changing the labels of padding positions does not change any loss.
    x, y, w = tb.load_arrays(
        "dev", max_length=8, vocabulary=vocab, tasks=TWO_TASKS, data_dir=data_dir
    )
    changed = {
        task: np.where(w[task] > 0, y[task], vocab.num_classes(task) - 1)
        for task in TWO_TASKS
    }
    assert all((changed[t] != y[t]).any() for t in TWO_TASKS)
    first = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    second = model.evaluate(x, changed, sample_weight=w, verbose=0, return_dict=True)
    for task in TWO_TASKS:
        np.testing.assert_allclose(first[f"{task}_loss"], second[f"{task}_loss"])
        np.testing.assert_allclose(
            first[f"{task}_accuracy"], second[f"{task}_accuracy"]
        )


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        tb.load_arrays(data_dir=tmp_path)
    message = str(info.value)
    assert "pip download turkish-treebanks==1.0.0" in message
    assert "scripts/fetch_data.sh" in message


def test_real_files_when_present():
    kwargs = real_data_kwargs("turkish_treebank")
    if kwargs is None:
        pytest.skip("real treebank not fetched (scripts/fetch_data.sh)")
    vocab = tb.build_vocabulary(**kwargs)
    sizes = {}
    tokens = 0
    for split in tb.SPLITS:
        x, _, w = tb.load_arrays(split, max_length=None, vocabulary=vocab, **kwargs)
        sizes[split] = len(x)
        tokens += int(w["upos"].sum())
    assert sizes == {"train": 3881, "dev": 485, "test": 485}
    assert tokens == 81370
    assert {t: vocab.num_classes(t) for t in tb.TASKS} == {
        "upos": 14,
        "xpos": 45,
        "case": 9,
        "deprel": 44,
    }
