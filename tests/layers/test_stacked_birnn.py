"""Tests of `StackedBiRNN` (Søgaard & Goldberg, ACL 2016; methods.md A8).

On JAX only the save/load, XLA and argument tests run: eager recurrent
layers run op by op there (20-36 s a test on 2 cores), and the layer's
math is Keras' own RNNs on either backend."""

import keras
import numpy as np
import pytest
from backends import compiled
from soft_sharing_checks import gradients, is_connected

import keras_mtl
from keras_mtl.layers.stacked_birnn import StackedBiRNN


def _tokens(batch=4, length=6, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, size=(batch, length))
    tokens[1, 4:] = 0  # padding
    tokens[2, 2:] = 0
    return tokens


def _tagger(cell="lstm", num_layers=3, units=4):
    tokens = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(20, 5, mask_zero=True)(tokens)
    depths = StackedBiRNN(num_layers, units, cell=cell, name="birnn")(embedded)
    return tokens, depths


def test_outputs_of_every_layer_with_shapes_and_variables():
    for cell, merge_mode, width in [("lstm", "concat", 8), ("gru", "sum", 4)]:
        layer = StackedBiRNN(3, 4, cell=cell, merge_mode=merge_mode)
        outputs = layer(np.zeros((2, 5, 6), "float32"))
        assert len(outputs) == 3
        assert [tuple(o.shape) for o in outputs] == [(2, 5, width)] * 3
        assert layer.compute_output_shape((None, None, 6)) == [(None, None, width)] * 3
        # Per layer and direction: kernel, recurrent kernel, bias.
        assert len(layer.trainable_variables) == 3 * 2 * 3
        first_kernel = layer.rnn_layers[0].forward_layer.cell.kernel
        second_kernel = layer.rnn_layers[1].forward_layer.cell.kernel
        assert first_kernel.shape[0] == 6 and second_kernel.shape[0] == width


def test_output_l_is_the_bidirectional_rnn_of_output_l_minus_1():
    layer = StackedBiRNN(2, 3)
    x = np.random.default_rng(1).normal(size=(2, 4, 5)).astype("float32")
    first, second = (keras.ops.convert_to_numpy(o) for o in layer(x))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.rnn_layers[0](x)), first, atol=1e-6
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.rnn_layers[1](first)), second, atol=1e-6
    )
    # Both directions: the first token's backward state depends on the last
    # token, the last token's forward state on the first one.
    changed = x.copy()
    changed[:, -1] += 1.0
    moved = keras.ops.convert_to_numpy(layer(changed)[0])
    assert not np.allclose(moved[:, 0, 3:], first[:, 0, 3:])
    np.testing.assert_allclose(moved[:, 0, :3], first[:, 0, :3], atol=1e-6)


@pytest.mark.both_backends
def test_output_variables_lists_the_layers_below_each_output():
    layer = StackedBiRNN(3, 2, cell="gru")
    depths = layer(np.ones((1, 3, 2), "float32"))
    per_layer = [rnn.trainable_variables for rnn in layer.rnn_layers]
    for index in range(3):
        expected = [v for vs in per_layer[: index + 1] for v in vs]
        assert [v.path for v in layer.output_variables(index)] == [
            v.path for v in expected
        ]
        # They are exactly the variables the output has a gradient for.
        grads, _ = gradients(
            lambda index=index: keras.ops.sum(
                layer(np.ones((1, 3, 2), "float32"))[index]
            ),
            layer.trainable_variables,
        )
        connected = [
            v.path for v, g in zip(layer.trainable_variables, grads) if is_connected(g)
        ]
        assert connected == [v.path for v in expected]
    assert len(depths) == 3
    assert layer.output_variables(-1) == layer.output_variables(2)
    with pytest.raises(ValueError, match="output_index"):
        layer.output_variables(3)


def test_padding_mask_is_respected_and_passed_on():
    tokens, depths = _tagger()
    model = keras.Model(tokens, depths)
    ids = _tokens()
    outputs = model(ids)
    expected_mask = ids != 0
    for output in outputs:
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(output._keras_mask), expected_mask
        )
    # Padding changes nothing for the real tokens (in both directions): a
    # padded row gives the outputs of its unpadded sequence alone.
    alone = model(ids[2:3, :2])
    for full, short in zip(outputs, alone):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(full)[2, :2],
            keras.ops.convert_to_numpy(short)[0],
            atol=1e-6,
        )


def test_one_fit_step_of_a_tagger_with_heads_at_two_depths():
    tokens, depths = _tagger(cell="gru", num_layers=2)
    model = keras_mtl.MultiTaskModel(
        tokens,
        {
            "pos": keras.layers.Dense(4, name="pos_head")(depths[0]),
            "chunk": keras.layers.Dense(3, name="chunk_head")(depths[1]),
        },
    )
    ids = _tokens(8, 6)
    rng = np.random.default_rng(2)
    targets = {"pos": ids % 4, "chunk": rng.integers(0, 3, ids.shape)}
    weights = {task: (ids != 0).astype("float32") for task in targets}
    model.compile(
        keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [v.numpy() for v in model.get_layer("birnn").trainable_variables]
    history = model.fit(
        ids, targets, sample_weight=weights, batch_size=8, epochs=1, verbose=0
    )
    assert np.all(np.isfinite(history.history["loss"]))
    after = [v.numpy() for v in model.get_layer("birnn").trainable_variables]
    assert all(not np.allclose(a, b) for a, b in zip(before, after))


@pytest.mark.both_backends
def test_save_load_config_and_xla(tmp_path):
    tokens, depths = _tagger(num_layers=2)
    model = keras.Model(tokens, depths)
    ids = _tokens()
    path = str(tmp_path / "birnn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(model.predict(ids, verbose=0), loaded.predict(ids, verbose=0)):
        np.testing.assert_array_equal(a, b)

    layer = model.get_layer("birnn")
    config = layer.get_config()
    for key, value in dict(
        num_layers=2,
        units=4,
        cell="lstm",
        dropout=0.0,
        recurrent_dropout=0.0,
        merge_mode="concat",
    ).items():
        assert config[key] == value
    assert StackedBiRNN.from_config(config).get_config() == config

    eager = [keras.ops.convert_to_numpy(o) for o in model(ids)]
    xla = compiled(lambda x: model(x), jit_compile=True)(ids)
    assert len(xla) == len(eager)
    for a, b in zip(eager, xla):
        np.testing.assert_allclose(a, np.array(b), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    layer = StackedBiRNN(2, 4, dropout=0.5)
    x = np.ones((2, 3, 4), "float32")
    a, b = layer(x, training=False), layer(x, training=False)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(a[1]), keras.ops.convert_to_numpy(b[1])
    )
    c = layer(x, training=True)
    assert not np.allclose(
        keras.ops.convert_to_numpy(a[1]), keras.ops.convert_to_numpy(c[1])
    )


@pytest.mark.both_backends
def test_bad_arguments_raise():
    for kwargs, match in [
        (dict(num_layers=0, units=4), "num_layers"),
        (dict(num_layers=2, units=0), "units"),
        (dict(num_layers=2, units=4, cell="rnn"), "cell"),
        (dict(num_layers=2, units=4, dropout=1.0), "dropout"),
        (dict(num_layers=2, units=4, recurrent_dropout=-0.1), "recurrent_dropout"),
        (dict(num_layers=2, units=4, merge_mode=None), "merge_mode"),
    ]:
        with pytest.raises(ValueError, match=match):
            StackedBiRNN(**kwargs)
