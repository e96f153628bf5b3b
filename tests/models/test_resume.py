"""Interrupted training resumes exactly, strategy state included.

A tiny three-task model is trained for 4 epochs of 4 batches, with
`keras.utils.set_random_seed` and TensorFlow's deterministic ops. Another run
of the same model is interrupted in the middle of its third epoch (a callback
raises after batch 1 of epoch index 2) and resumed by a fresh model, from a
`keras.callbacks.BackupAndRestore` backup or from a `ModelCheckpoint` `.keras`
file read by `keras.models.load_model`. The resumed run must end with exactly
the weights, optimizer variables, strategy weights and random-generator states
of the uninterrupted one.

Strategies: "dwa" (epoch-level loss history), "uw" (trainable log-variances
trained by the model's optimizer), "rlw" (random weights) and "pcgrad"
(random task order; three tasks so that the order matters).
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

import keras_mtl

EPOCHS = 4
BATCH_SIZE = 8
NUM_SAMPLES = 32  # 4 batches per epoch
INTERRUPT_EPOCH = 2  # 0-based: the third epoch
INTERRUPT_BATCH = 1  # 0-based: after its second batch

LOSSES = {
    "cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "reg": "mse",
    "aux": "mse",
}

# The strategies' (and the task sampler's) random generator states are saved
# with the model, so random strategies resume their random sequence too.
STRATEGIES = [
    pytest.param("dwa", {}, id="dwa"),
    pytest.param("uw", {}, id="uw"),
    pytest.param("rlw", {}, id="rlw"),
    pytest.param("pcgrad", {}, id="pcgrad"),
]


@pytest.fixture(autouse=True)
def _deterministic_ops():
    """Enables TF op determinism for one test, then restores the setting."""
    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    yield
    if not was_enabled:
        tf_config.disable_op_determinism()


class _Interrupted(Exception):
    """Raised by `_InterruptAt` to simulate a crash."""


class _InterruptAt(keras.callbacks.Callback):
    """Raises after batch `batch` of epoch `epoch` (both 0-based)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self._target = (epoch, batch)
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self._epoch, batch) == self._target:
            raise _Interrupted(
                f"interrupted after batch {batch} of epoch {self._epoch}"
            )


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_SAMPLES, 8)).astype("float32")
    y = {
        "cls": rng.integers(0, 3, size=(NUM_SAMPLES,)).astype("int32"),
        "reg": rng.normal(size=(NUM_SAMPLES, 1)).astype("float32"),
        "aux": rng.normal(size=(NUM_SAMPLES, 2)).astype("float32"),
    }
    return x, y


def _build(strategy, compile_kwargs):
    """A fresh compiled model; the same weights and seeds on every call."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((8,), name="x")
    shared = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    outputs = {
        "cls": keras.layers.Dense(3, name="cls_head")(shared),
        "reg": keras.layers.Dense(1, name="reg_head")(shared),
        "aux": keras.layers.Dense(2, name="aux_head")(shared),
    }
    model = keras_mtl.MultiTaskModel(inputs, outputs, name="three_tasks")
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=LOSSES,
        loss_weighting=keras_mtl.weighting.get(strategy),
        **compile_kwargs,
    )
    return model


def _fit(model, callbacks=(), **kwargs):
    x, y = _data()
    kwargs.setdefault("epochs", EPOCHS)
    return model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
        **kwargs,
    )


def _state(model):
    """Everything a resumed run must reproduce, as numpy arrays."""
    strategy = model.loss_weighting
    weight_ids = {id(v) for v in model.weights}
    return {
        "model weights": [v.numpy() for v in model.weights],
        "optimizer variables": [v.numpy() for v in model.optimizer.variables],
        "strategy weights": [np.asarray(w) for w in strategy.get_weights()],
        # SeedGenerator states: in `variables`, not in `weights`.
        "random generator states": [
            v.numpy() for v in model.variables if id(v) not in weight_ids
        ],
    }


def _assert_same_state(expected, actual):
    for key, values in expected.items():
        assert len(actual[key]) == len(values), key
        for i, (a, b) in enumerate(zip(values, actual[key])):
            np.testing.assert_array_equal(b, a, err_msg=f"{key}[{i}]")


_REFERENCES = {}


def _reference_state(strategy, compile_kwargs):
    """The state after an uninterrupted run (computed once per strategy)."""
    key = (strategy, tuple(sorted(compile_kwargs.items())))
    if key not in _REFERENCES:
        model = _build(strategy, compile_kwargs)
        _fit(model)
        _REFERENCES[key] = _state(model)
    return _REFERENCES[key]


def _interrupted_run(strategy, compile_kwargs, *callbacks):
    model = _build(strategy, compile_kwargs)
    with pytest.raises(_Interrupted):
        _fit(model, [*callbacks, _InterruptAt(INTERRUPT_EPOCH, INTERRUPT_BATCH)])
    return model


@pytest.mark.parametrize("strategy, compile_kwargs", STRATEGIES)
def test_interrupted_run_resumes_exactly_from_a_backup_or_a_checkpoint(
    tmp_path, strategy, compile_kwargs
):
    """A run crashes in the middle of epoch 2 (0-based) with two callbacks:
    an epoch-level `BackupAndRestore` and a `ModelCheckpoint` writing a
    `.keras` file. Both resumptions, (a) a fresh model fitted with the same
    `BackupAndRestore` and (b) `keras.models.load_model` of the checkpoint
    fitted on from `initial_epoch=2`, redo epoch 2 from its start and end
    exactly where the uninterrupted run ends."""
    expected = _reference_state(strategy, compile_kwargs)
    backup_dir = os.path.join(tmp_path, "backup")
    path = os.path.join(tmp_path, "checkpoint.keras")
    crashed = _interrupted_run(
        strategy,
        compile_kwargs,
        keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch"),
        keras.callbacks.ModelCheckpoint(path),
    )
    # The crash happened mid-epoch: 2 full epochs and 2 batches were trained.
    assert int(crashed.optimizer.iterations.numpy()) == 2 * 4 + 2

    resumed = _build(strategy, compile_kwargs)
    history = _fit(
        resumed, [keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch")]
    )
    assert history.epoch == [2, 3]  # resumed at the interrupted epoch
    _assert_same_state(expected, _state(resumed))

    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_mtl.MultiTaskModel)
    assert type(loaded.loss_weighting) is type(crashed.loss_weighting)
    assert loaded.loss_weighting.get_config() == crashed.loss_weighting.get_config()
    assert int(loaded.optimizer.iterations.numpy()) == 2 * 4
    history = _fit(loaded, initial_epoch=2)
    assert history.epoch == [2, 3]
    _assert_same_state(expected, _state(loaded))


def test_task_sampling_resumes_exactly_from_a_backup(tmp_path):
    compile_kwargs = {"task_sampling": "uniform"}
    expected = _reference_state("ew", compile_kwargs)
    backup_dir = os.path.join(tmp_path, "backup")
    _interrupted_run(
        "ew",
        compile_kwargs,
        keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch"),
    )
    resumed = _build("ew", compile_kwargs)
    _fit(resumed, [keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch")])
    _assert_same_state(expected, _state(resumed))


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Keras 3's BackupAndRestore saves every `save_freq` batches but "
        "restores only the epoch number: the resumed run replays the "
        "interrupted epoch from its first batch on top of the mid-epoch "
        "weights, training batches 0..k twice (keras/src/callbacks/"
        "backup_and_restore.py, _load_model; Keras' own test expects it). "
        "Exact mid-epoch resume needs a callback that also skips the batches "
        "already trained (see the report of issue 8)."
    ),
)
def test_batch_level_backup_resumes_exactly_after_a_mid_epoch_crash(tmp_path):
    expected = _reference_state("dwa", {})
    backup_dir = os.path.join(tmp_path, "backup")
    _interrupted_run(
        "dwa", {}, keras.callbacks.BackupAndRestore(backup_dir, save_freq=1)
    )
    resumed = _build("dwa", {})
    _fit(resumed, [keras.callbacks.BackupAndRestore(backup_dir, save_freq=1)])
    _assert_same_state(expected, _state(resumed))
