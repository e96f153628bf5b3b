"""TensorFlow and JAX give the same training and the same aggregates.

For every strategy of the contract table, three training steps of a small
model with BatchNorm from the same initial weights and strategy state, and
a gradient method's `aggregate` of fixed matrices, agree to 1e-5 between
this (TensorFlow) process and one JAX process (`cross_backend.py`, run
once for all strategies).
"""

import importlib.util
import os
import pickle
import subprocess
import sys

import cross_backend
import numpy as np
import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="JAX is not installed"
)


@pytest.fixture(scope="module")
def initial():
    return {name: cross_backend.initial_state(name) for name in cross_backend.names()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("cross_backend")


@pytest.fixture(scope="module")
def tf_results(initial, folder):
    """This process's runs, each model saved for the JAX process to load."""
    return {name: cross_backend.run(name, initial[name], folder) for name in initial}


@pytest.fixture(scope="module")
def jax_results(initial, folder, tf_results):
    source, target = folder / "initial.pkl", folder / "jax.pkl"
    with open(source, "wb") as f:
        pickle.dump(initial, f)
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        [TESTS, os.path.join(TESTS, "weighting"), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(TESTS, "cross_backend.py"),
            source,
            target,
            folder,
            "tensorflow",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(target, "rb") as f:
        return pickle.load(f)


@pytest.mark.parametrize("name", cross_backend.names())
def test_same_training_and_aggregates_on_tensorflow_and_jax(
    name, tf_results, jax_results
):
    got = jax_results[name]
    assert "error" not in got, f"{name} failed on JAX:\n{got.get('error')}"
    expected = tf_results[name]
    assert len(got["weights"]) == len(expected["weights"])
    for (path, a), (_, b) in zip(expected["weights"], got["weights"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=path)
    assert got["logs"].keys() == expected["logs"].keys()
    for key, value in expected["logs"].items():
        np.testing.assert_allclose(got["logs"][key], value, rtol=1e-5, err_msg=key)
    reference = cross_backend.aggregates(name)
    if reference is None:
        assert got["aggregates"] is None
        return
    for key, updates in reference.items():
        for call, (a, b) in enumerate(zip(updates, got["aggregates"][key])):
            scale = max(np.max(np.abs(a)), 1e-30)
            np.testing.assert_allclose(
                b, a, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{key}, call {call}"
            )


@pytest.mark.parametrize("name", cross_backend.names())
def test_a_file_saved_on_one_backend_loads_on_the_other(
    name, folder, tf_results, jax_results
):
    """Each backend loads the other's `.keras` file: the strategy state is
    the saved one exactly, and the predictions are the saving backend's."""
    got = jax_results[name]
    assert "error" not in got, f"{name} failed on JAX:\n{got.get('error')}"
    on_tf = cross_backend.load(name, folder, "jax")
    for loaded, saver in ((got["loaded"], tf_results), (on_tf, {name: got})):
        saved_state = [
            (path, value)
            for path, value in saver[name]["weights"]
            if any(path == p for p, _ in loaded["strategy"])
        ]
        assert len(saved_state) == len(loaded["strategy"])
        for (path, a), (_, b) in zip(saved_state, loaded["strategy"]):
            np.testing.assert_array_equal(b, a, err_msg=path)
        for task, value in saver[name]["predictions"].items():
            np.testing.assert_allclose(
                loaded["predictions"][task], value, rtol=1e-5, atol=1e-6, err_msg=task
            )
