"""Tests of `attach_heads` (Søgaard & Goldberg, ACL 2016; methods.md A8)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import SumOfGradients

import keras_mtl
from keras_mtl.layers.stacked_birnn import StackedBiRNN
from keras_mtl.models.attach_heads import attach_heads

SPARSE_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _birnn_trunk(num_layers=3, units=4, cell="lstm"):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    embedded = keras.layers.Embedding(20, 5, mask_zero=True, name="embedding")(tokens)
    depths = StackedBiRNN(num_layers, units, cell=cell, name="birnn")(embedded)
    return keras.Model(tokens, depths, name="trunk")


def _layered_trunk():
    """Three separate Dense layers: `shared` heads can sit on any of them."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(6, name="layer_1")(inputs)
    x = keras.layers.Dense(6, name="layer_2")(x)
    x = keras.layers.Dense(6, name="layer_3")(x)
    return keras.Model(inputs, x)


def _tokens(batch=8, length=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 20, size=(batch, length))
    ids[0, 3:] = 0
    ids[1, 5:] = 0
    return ids


def _birnn_variables(trunk, depth):
    rnn = trunk.get_layer("birnn").rnn_layers[depth - 1]
    return list(rnn.trainable_variables)


def test_head_at_layer_1_leaves_higher_layers_with_zero_gradient_and_unshared():
    trunk = _birnn_trunk(num_layers=3)
    model = attach_heads(
        trunk,
        {
            "pos": (("birnn", 0), keras.layers.Dense(5, name="pos_head")),
            "chunk": (("birnn", 1), keras.layers.Dense(3, name="chunk_head")),
        },
    )
    ids = _tokens()
    targets = {"pos": ids % 5, "chunk": ids % 3}
    lower = [trunk.get_layer("embedding").embeddings, *_birnn_variables(trunk, 1)]
    second, third = _birnn_variables(trunk, 2), _birnn_variables(trunk, 3)
    with tf.GradientTape(persistent=True) as tape:
        outputs = model(ids, training=True)
        losses = {t: SPARSE_CE(targets[t], outputs[t]) for t in targets}

    def nonzero(grads):
        return [
            g is not None
            and bool(np.any(keras.ops.convert_to_numpy(tf.convert_to_tensor(g))))
            for g in grads
        ]

    # The pos loss (head on layer 1) reaches the embedding and layer 1 only.
    assert all(nonzero(tape.gradient(losses["pos"], lower)))
    assert not any(nonzero(tape.gradient(losses["pos"], second + third)))
    # The chunk loss (head on layer 2) reaches layers 1 and 2, not layer 3.
    assert all(nonzero(tape.gradient(losses["chunk"], lower + second)))
    assert not any(nonzero(tape.gradient(losses["chunk"], third)))

    # Shared: only what lies below both attachment points.
    assert [v.path for v in model.shared_variables] == [v.path for v in lower]
    assert [v.path for v in model.last_shared_variables] == [
        v.path for v in _birnn_variables(trunk, 1)
    ]
    assert [v.path for v in model.task_variables["pos"]] == [
        "pos_head/kernel",
        "pos_head/bias",
    ]
    assert [v.path for v in model.task_variables["chunk"]] == [
        v.path for v in second
    ] + ["chunk_head/kernel", "chunk_head/bias"]
    # Layer 3 feeds no head: it belongs to no task.
    roles = {id(v) for v in model.shared_variables}
    roles |= {id(v) for vs in model.task_variables.values() for v in vs}
    assert not roles & {id(v) for v in third}

    # The graph analysis itself reads StackedBiRNN.output_variables, so the
    # split holds without the refinement step and after a reload.
    unrefined = attach_heads(
        trunk,
        {
            "pos": (("birnn", 0), keras.layers.Dense(5)),
            "chunk": (("birnn", 1), keras.layers.Dense(3)),
        },
        refine_variable_roles=False,
    )
    assert len(unrefined.shared_variables) == 1 + 6
    rebuilt = keras_mtl.MultiTaskModel.from_config(unrefined.get_config())
    assert len(rebuilt.shared_variables) == 1 + 6


def test_layer_names_indices_and_tensors_select_the_attachment_point():
    trunk = _layered_trunk()
    model = attach_heads(
        trunk,
        {
            "low": ("layer_1", keras.layers.Dense(1, name="low_head")),
            "mid": (2, keras.layers.Dense(1, name="mid_head")),  # trunk.layers[2]
            "top": (trunk.output, keras.layers.Dense(1, name="top_head")),
        },
    )
    assert model.task_names == ("low", "mid", "top")
    paths = [v.path for v in model.shared_variables]
    assert paths == ["layer_1/kernel", "layer_1/bias", "layer_2/kernel", "layer_2/bias"]
    assert [v.path for v in model.task_variables["top"]] == [
        "layer_3/kernel",
        "layer_3/bias",
        "top_head/kernel",
        "top_head/bias",
    ]
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    hidden = trunk.get_layer("layer_1")(x)
    np.testing.assert_allclose(
        model(x)["low"], model.get_layer("low_head")(hidden), rtol=1e-6
    )


def test_per_token_tagging_trains_with_fit_and_survives_save_load(tmp_path):
    trunk = _birnn_trunk(num_layers=2)
    model = attach_heads(
        trunk,
        {
            "pos": (("birnn", 0), keras.layers.Dense(4)),
            "chunk": (("birnn", 1), keras.layers.Dense(3)),
        },
    )
    ids = _tokens(32, 6)
    # Synthetic hierarchy (methods.md C6): chunk tags are a function of the
    # low-level pos tags.
    pos = ids % 4
    targets = {"pos": pos, "chunk": (pos >= 2).astype("int64") + (ids > 15)}
    weights = {task: (ids != 0).astype("float32") for task in targets}
    # A gradient strategy: it combines per-task gradients of the refined
    # shared variables and applies each task's own variables separately.
    model.compile(
        keras.optimizers.Adam(0.05), loss=SPARSE_CE, loss_weighting=SumOfGradients()
    )
    history = model.fit(
        ids, targets, sample_weight=weights, batch_size=16, epochs=3, verbose=0
    )
    for task in ("pos", "chunk"):
        losses = history.history[f"{task}_loss"]
        assert losses[-1] < losses[0]
    path = str(tmp_path / "tagger.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_mtl.MultiTaskModel)
    expected, got = model(ids), loaded(ids)
    for task in model.task_names:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(expected[task]),
            keras.ops.convert_to_numpy(got[task]),
        )


def test_bad_specifications_raise():
    trunk = _birnn_trunk(num_layers=2)
    head = keras.layers.Dense(2)
    cases = [
        ({}, "heads"),
        ({"a": head}, "pair"),
        ({"a": ("nope", head)}, "nope"),
        ({"a": ("birnn", head)}, "outputs"),
        ({"a": (("birnn", 5), head)}, "output_index"),
        ({"a": (("birnn", 0), "dense")}, "head"),
        ({"a": (1.5, head)}, "string or an int"),
    ]
    for heads, match in cases:
        with pytest.raises(ValueError, match=match):
            attach_heads(trunk, heads)
    with pytest.raises(ValueError, match="functional"):
        attach_heads(keras.layers.Dense(2), {"a": ("x", head)})
