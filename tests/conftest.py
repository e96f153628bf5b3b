"""Shared pytest set-up: quiet TensorFlow, CPU only, fresh Keras state."""

import gc
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")

import keras  # noqa: E402
import pytest  # noqa: E402

# A full garbage collection costs about 0.3 s of CPU with TensorFlow loaded
# (and makes the next test slower): run one every few tests, which still
# bounds the memory of the released models.
_COLLECT_EVERY = 10
_tests_run = itertools.count(1)


@pytest.fixture(autouse=True)
def _clear_keras_session():
    keras.backend.clear_session(free_memory=False)
    if next(_tests_run) % _COLLECT_EVERY == 0:
        gc.collect()
    keras.utils.set_random_seed(1234)
    yield
