"""Per-step bookkeeping of `MultiTaskModel` that runs outside the graph."""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf


class NonFiniteGuard:
    """Records the first training step whose task losses were not finite.

    Holds three scalar TensorFlow variables, deliberately not Keras weights
    (they are bookkeeping, not model state, and are not saved): the number
    of steps attempted, the first bad step (-1 if none) and the index of the
    first task whose loss was not finite there, plus a count of skipped
    steps.
    """

    def __init__(self):
        def scalar(name, value):
            return tf.Variable(
                value,
                dtype=tf.int64,
                trainable=False,
                name=name,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                synchronization=tf.VariableSynchronization.ON_WRITE,
            )

        self.steps = scalar("steps", 0)
        self.bad_step = scalar("bad_step", -1)
        self.bad_task = scalar("bad_task", -1)
        self.skipped = scalar("skipped", 0)

    def record(self, losses):
        """Updates the record for this step's `(T,)` losses; returns finite."""
        finite_per_task = tf.math.is_finite(losses)
        finite = tf.reduce_all(finite_per_task)
        first_bad = tf.cast(tf.argmin(tf.cast(finite_per_task, tf.int32)), tf.int64)
        new_bad = tf.logical_and(tf.logical_not(finite), self.bad_step < 0)
        self.bad_task.assign(tf.where(new_bad, first_bad, self.bad_task))
        self.bad_step.assign(tf.where(new_bad, self.steps, self.bad_step))
        self.skipped.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        self.steps.assign_add(1)
        return finite

    def record_gradients(self, losses_ok, gradients_finite):
        """Records a step whose losses were finite but whose gradients were
        not (task index -2: no single task is to blame)."""
        new_bad = tf.logical_and(
            tf.logical_and(losses_ok, tf.logical_not(gradients_finite)),
            self.bad_step < 0,
        )
        self.bad_task.assign(
            tf.where(new_bad, tf.constant(-2, tf.int64), self.bad_task)
        )
        self.bad_step.assign(tf.where(new_bad, self.steps - 1, self.bad_step))
        failed = tf.logical_and(losses_ok, tf.logical_not(gradients_finite))
        self.skipped.assign_add(tf.cast(failed, tf.int64))

    def clear(self):
        self.steps.assign(0)
        self.bad_step.assign(-1)
        self.bad_task.assign(-1)
        self.skipped.assign(0)


class TrainingHooks(keras.callbacks.Callback):
    """Added by `MultiTaskModel.fit`: strategy epoch hooks, non-finite checks.

    - At each epoch end, calls the strategy's `on_epoch_end()` so that
      epoch-level state (DWA's loss history) needs no user callback.
    - With `on_nonfinite="raise"`, stops training with an error naming the
      task and the step as soon as a step had a non-finite task loss (the
      step itself was not applied). With `"skip"`, warns at epoch end how
      many steps were skipped.
    """

    def __init__(self, model, guard, on_nonfinite):
        super().__init__()
        self._mtl_model = model
        self._guard = guard
        self._on_nonfinite = on_nonfinite

    def on_train_begin(self, logs=None):
        self._guard.clear()

    def on_train_batch_end(self, batch, logs=None):
        if self._on_nonfinite == "raise":
            bad_step = int(self._guard.bad_step.numpy())
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

    def _culprit(self):
        """What the first bad step had that was not finite, in words."""
        index = int(self._guard.bad_task.numpy())
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
            skipped = int(self._guard.skipped.numpy())
            if skipped:
                warnings.warn(
                    f"{skipped} training step(s) were skipped so far because "
                    f"a task loss or the gradient was not finite (first: "
                    f"{self._culprit()} at step "
                    f"{int(self._guard.bad_step.numpy())}).",
                    RuntimeWarning,
                    stacklevel=2,
                )
