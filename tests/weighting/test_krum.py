"""Tests of `Krum` / Multi-Krum (Blanchard et al., NeurIPS 2017)."""

import os
import warnings

import aggregator_properties as degenerate_checks
import degenerate_inputs
import keras
import numpy as np
import pytest
from fresh_compiled import on_jax

import keras_mtl
from keras_mtl.weighting.krum import Krum


def _t(value, dtype=None):
    """A tensor of `value` on the current backend."""
    return keras.ops.convert_to_tensor(value, dtype)


# 1-D rows where distances and squared distances select different rows.
ROWS = np.array([[5.0], [6.0], [14.0], [19.0], [25.0]], "float32")


def _gramian(grads):
    grads = np.asarray(grads, "float64")
    return _t(grads @ grads.T, "float32")


@pytest.mark.both_backends
def test_registry_names_resolve():
    for name in ["krum", "multi_krum", "Krum"]:
        assert isinstance(keras_mtl.weighting.get(name), Krum)


@pytest.mark.both_backends
def test_scores_sum_distances_to_the_nearest_neighbours():
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(Krum(n_byzantine=1).scores(_gramian(ROWS))),
        [10, 9, 13, 11, 17],
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(
            Krum(n_byzantine=1, squared=True).scores(_gramian(ROWS))
        ),
        [82, 65, 89, 61, 157],
    )


@pytest.mark.both_backends
def test_torchjd_reference_values():
    """TorchJD 0.18.0: Krum(1) -> [6], Krum(1, 2) -> [5.5]; the paper's squared
    scores select 19."""
    assert keras.ops.convert_to_numpy(Krum(n_byzantine=1).aggregate(ROWS)).tolist() == [
        6.0
    ]
    assert keras.ops.convert_to_numpy(
        Krum(n_byzantine=1, n_selected=2).aggregate(ROWS)
    ).tolist() == [5.5]
    assert keras.ops.convert_to_numpy(
        Krum(n_byzantine=1, squared=True).aggregate(ROWS)
    ).tolist() == [19.0]


@pytest.mark.both_backends
def test_krum_returns_one_of_the_rows_and_permutes_with_them():
    grads = np.random.default_rng(0).normal(size=(6, 5)).astype("float32")
    update, weights = Krum(n_byzantine=1)(_t(grads))
    selected = int(np.argmax(keras.ops.convert_to_numpy(weights)))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(weights), np.eye(6)[selected]
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(update), grads[selected], rtol=1e-6
    )
    order = np.array([3, 5, 0, 1, 4, 2])
    _, permuted = Krum(n_byzantine=1)(_t(grads[order]))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(permuted), keras.ops.convert_to_numpy(weights)[order]
    )


@pytest.mark.both_backends
def test_an_honest_gradient_is_selected_despite_outliers():
    rng = np.random.default_rng(1)
    honest = 1.0 + 0.1 * rng.normal(size=(5, 4))
    outliers = np.array([[40.0, -30.0, 0.0, 9.0], [-50.0, 5.0, 60.0, 1.0]])
    grads = np.concatenate([outliers[:1], honest, outliers[1:]]).astype("float32")
    for selected in (1, 3):
        _, weights = Krum(n_byzantine=2, n_selected=selected)(_t(grads))
        weights = keras.ops.convert_to_numpy(weights)
        assert weights[0] == weights[-1] == 0.0
        np.testing.assert_allclose(weights.sum(), 1.0)
        assert np.count_nonzero(weights) == selected
    # The mean, which Krum replaces, is dragged far off.
    assert np.abs(grads.mean(axis=0) - 1.0).max() > 5.0


@pytest.mark.both_backends
def test_ties_go_to_the_lower_task_index():
    grads = np.array([[0.0], [1.0], [1.0], [3.0]], "float32")
    # f = 1: the score is the distance to the nearest other row: [1, 0, 0, 2].
    with pytest.warns(UserWarning, match="guarantee"):
        _, weights = Krum(n_byzantine=1)(_t(grads))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weights), [0, 1, 0, 0])


@pytest.mark.both_backends
def test_validation():
    with pytest.raises(ValueError, match="n_byzantine"):
        Krum(n_byzantine=-1)
    with pytest.raises(ValueError, match="n_selected"):
        Krum(n_selected=0)
    with pytest.raises(ValueError, match="squared"):
        Krum(squared="yes")
    with pytest.raises(ValueError, match="n_byzantine <= 1"):
        Krum(n_byzantine=2).build((4, 3))
    with pytest.raises(ValueError, match="at least 3 tasks"):
        Krum(n_byzantine=0).build((2, 3))
    with pytest.raises(ValueError, match="n_selected <= 4"):
        Krum(n_byzantine=0, n_selected=5).build((4, 3))
    with pytest.warns(UserWarning, match="2 \\* n_byzantine \\+ 3"):
        Krum(n_byzantine=1).build((4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Krum(n_byzantine=1).build((5, 3))


def _three_task_model():
    inputs = keras.Input((6,))
    init = keras.initializers.GlorotUniform(seed=0)
    trunk = keras.layers.Dense(8, activation="tanh", kernel_initializer=init)(inputs)
    outputs = {
        f"t{i}": keras.layers.Dense(1, kernel_initializer=init, name=f"head{i}")(trunk)
        for i in range(3)
    }
    return keras_mtl.MultiTaskModel(inputs, outputs)


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    return x, {f"t{i}": rng.normal(size=(16, 1)).astype("float32") for i in range(3)}


def _train(jit_compile):
    keras.utils.set_random_seed(7)
    model = _three_task_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss="mse",
        loss_weighting=Krum(n_byzantine=0, n_selected=2),
        jit_compile=jit_compile,
    )
    x, y = _data()
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return model, history


def test_contract_on_three_tasks(tmp_path):
    """The contract table's checks (test_strategy.py trains two tasks, too
    few for Krum): finite training, XLA equal to graph mode, save/load, and
    missing labels refused."""
    graph_model, history = _train(jit_compile=False)
    xla_model, _ = _train(jit_compile=True)
    for key in ["loss", "t0_weight", "t1_weight", "t2_weight"]:
        assert np.all(np.isfinite(history.history[key])), key
    weights = [history.history[f"t{i}_weight"][-1] for i in range(3)]
    assert sum(weights) == pytest.approx(1.0, abs=1e-6)
    for a, b in zip(graph_model.weights, xla_model.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(b),
            rtol=2e-4,
            atol=2e-5,
        )
    path = os.path.join(tmp_path, "model.keras")
    graph_model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.loss_weighting.get_config() == graph_model.loss_weighting.get_config()
    x, _ = _data()
    expected = graph_model.predict(x, verbose=0)
    for name, values in loaded.predict(x, verbose=0).items():
        np.testing.assert_array_equal(values, expected[name])
    with pytest.raises(ValueError, match="does not support missing_labels"):
        _three_task_model().compile(
            optimizer="sgd",
            loss="mse",
            loss_weighting=Krum(n_byzantine=0),
            missing_labels={"t0": float("nan")},
        )


# --- Degenerate inputs (issue 15; tests/weighting/degenerate_inputs.py) ---
# Krum selects by ranked distances: with ties (duplicated, opposed or
# rank-one rows, few tasks) the lowest task index wins, so the update is
# not permutation-equivariant there, by design (TorchJD's top-k picks an
# arbitrary one of the tied rows).


@pytest.mark.both_backends
@pytest.mark.parametrize("shape", degenerate_inputs.SHAPES, ids=str)
def test_degenerate_inputs(shape):
    num_tasks = shape[0]
    if num_tasks < 3:
        # Krum needs n_byzantine + 3 tasks: a clear error when built, which
        # the model does in compile.
        with pytest.raises(ValueError, match="needs at least"):
            Krum(n_byzantine=0).build((num_tasks, shape[1]))
        return
    for n_byzantine in sorted({0, min(1, num_tasks - 3)}):
        degenerate_checks.check_cases(
            on_jax(lambda f=n_byzantine: Krum(n_byzantine=f)),
            degenerate_inputs.degenerate_cases(shapes=[shape]),
            lambda case: {"permutation": False},
        )
