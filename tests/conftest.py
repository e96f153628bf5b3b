"""Shared pytest set-up: quiet TensorFlow, CPU only, fresh Keras state, and
the backend split.

The suite runs on `KERAS_BACKEND` (TensorFlow by default). On any other
backend only the tests marked `both_backends` (a module's `pytestmark` or
one test's decorator) are collected: the rest need TensorFlow or check
TensorFlow-only features (`tf.distribute`, `tf.data`).
"""

import gc
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
if os.environ["KERAS_BACKEND"] == "jax":
    # Two host devices for keras.distribution (test_jax_distribution.py);
    # everything else runs on the first, as with one.
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import keras  # noqa: E402
import pytest  # noqa: E402

# A full garbage collection traverses every live object: with TensorFlow,
# Keras and every test module imported that is about 450,000 objects, and
# more as the run goes on (on the 2-core machine, `-n 2`: 176 collections,
# one every 10 tests, took 356 s of the TensorFlow run's 1,723 s of test
# time). The objects alive once the tests are collected live as long as the
# session, so `gc.freeze()` moves them out of the collector's sight; a
# collection every 20 tests then traverses only what the tests made since,
# and still bounds the memory of released models. Two fresh-clone `.ci/run`s
# differing only in this, on an idle machine: the TensorFlow run took
# 679 s with this and 897 s with a plain collection every 10 tests (a short
# run of five files shows no difference: the heap is still small there).
_COLLECT_EVERY = 20
_tests_run = itertools.count(1)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # KERAS_MTL_TEST_TIMINGS=<folder>: every run of the CI command writes
    # its JUnit XML (each test's duration) there, one file per backend and
    # marker selection, so a whole `.ci/run` leaves the per-file durations.
    folder = os.environ.get("KERAS_MTL_TEST_TIMINGS")
    if folder and not getattr(config.option, "xmlpath", None):
        selection = (config.option.markexpr or "all").replace(" ", "_")
        name = f"{keras.backend.backend()}-{selection}.xml"
        config.option.xmlpath = os.path.join(folder, name)


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "tensorflow":
        return
    kept, dropped = [], []
    for item in items:
        (kept if item.get_closest_marker("both_backends") else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(autouse=True)
def _clear_keras_session():
    keras.backend.clear_session(free_memory=False)
    if next(_tests_run) % _COLLECT_EVERY == 0:
        gc.collect()
    keras.utils.set_random_seed(1234)
    yield
