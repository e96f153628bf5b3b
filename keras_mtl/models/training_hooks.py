"""The callback `MultiTaskModel.fit` adds: strategy epoch hooks and the
host side of the non-finite checks (the step's side is `_step_guard.py`)."""

from __future__ import annotations

import warnings

import keras
import numpy as np


class TrainingHooks(keras.callbacks.Callback):
    """Added by `MultiTaskModel.fit`: strategy epoch hooks, non-finite checks.

    - At each epoch end, calls the strategy's `on_epoch_end()` so that
      epoch-level state (DWA's loss history) needs no user callback.
    - With `on_nonfinite="raise"`, stops training with an error naming the
      task and the first bad step. The host reads the guard once per call
      of the compiled train function, that is once per group of
      `steps_per_execution` steps, so the error surfaces at the end of the
      group that held the bad step. Nothing from the bad step on was
      applied: the in-graph record is sticky and skips every later step of
      the group. With `"skip"`, warns at epoch end how many steps were
      skipped.
    """

    def __init__(self, model, guard, on_nonfinite):
        super().__init__()
        self._mtl_model = model
        self._guard = guard
        self._on_nonfinite = on_nonfinite

    def on_train_begin(self, logs=None):
        self._guard.clear()
        self._check_strategy_state()

    def _check_strategy_state(self):
        """Refuses to train from a strategy state that is not finite (a
        damaged file or checkpoint loads without complaint when its numbers
        are NaN): every step would be skipped, or the state would spread
        NaN into the weights."""
        strategy = self._mtl_model.loss_weighting
        for variable in strategy.variables:
            if not keras.backend.is_float_dtype(variable.dtype):
                continue
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable.value))):
                raise ValueError(
                    f"The state of strategy {type(strategy).__name__} is not "
                    f"finite: variable {variable.path!r} holds NaN or infinite "
                    "values (was it loaded from a damaged file?). Nothing was "
                    "trained. Call `model.loss_weighting.reset_state()` to start "
                    "the strategy afresh, or load an intact checkpoint."
                )

    def on_train_batch_end(self, batch, logs=None):
        if self._on_nonfinite == "raise":
            bad_step = self._counter(self._guard.bad_step)
            if bad_step >= 0:
                culprit = self._culprit()
                where = f"training step {bad_step} (0-based) of this fit() call"
                steps_per_epoch = (self.params or {}).get("steps")
                if steps_per_epoch:
                    where += (
                        f", epoch {bad_step // steps_per_epoch + 1}, batch "
                        f"{bad_step % steps_per_epoch + 1}"
                    )
                raise FloatingPointError(
                    f"{culprit} at {where}. "
                    "That step was not applied: the model, optimizer and "
                    "strategy state are those from before it. Check the "
                    "inputs and targets of that batch, or compile with "
                    'on_nonfinite="skip" to skip such steps.'
                )

    def _counter(self, variable):
        """A guard counter's value on the host. On JAX, during an epoch the
        state lives in the trainer's values, not in the variables (Keras
        syncs them at epoch end): read it there, without a sync."""
        model = self._mtl_model
        state = getattr(model, "_jax_state", None)
        if state and not getattr(model, "_jax_state_synced", True):
            for i, candidate in enumerate(model.metrics_variables):
                if candidate is variable:
                    return int(state["metrics_variables"][i])
        return int(keras.ops.convert_to_numpy(variable))

    def _culprit(self):
        """What the first bad step had that was not finite, in words."""
        index = self._counter(self._guard.bad_task)
        if index == -2:
            return (
                "The gradient is not finite although every task loss is "
                "(a loss with an infinite derivative, such as sqrt at 0)"
            )
        task = self._mtl_model._checked_loss_names[index]
        return f"Task {task!r} has a non-finite loss"

    def on_epoch_end(self, epoch, logs=None):
        self._mtl_model.loss_weighting.on_epoch_end()
        if self._on_nonfinite == "skip":
            skipped = self._counter(self._guard.skipped)
            if skipped:
                warnings.warn(
                    f"{skipped} training step(s) were skipped so far because "
                    f"a task loss or the gradient was not finite (first: "
                    f"{self._culprit()} at step "
                    f"{self._counter(self._guard.bad_step)}).",
                    RuntimeWarning,
                    stacklevel=2,
                )
