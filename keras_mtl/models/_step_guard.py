"""One training step as a transaction: a non-finite step changes nothing.

`StepGuard` is the model's record of non-finite steps and the step's
commit-or-skip logic, in three parts:

- `begin`: a snapshot of the small state a step changes before it knows
  whether it is finite: the layers' non-trainable state (BatchNorm
  statistics move in the forward pass), the strategy's state, and, with
  missing labels, the strategy's per-task state (an absent task's slices
  are put back after every step, finite or not).
- `check_losses` / `apply`: the step is finite when every task (and
  auxiliary) loss is, on every replica, and then every gradient is; the
  first bad step and task are recorded in the guard's counters, which
  `TrainingHooks` reads on the host. Under `on_nonfinite="raise"` the
  record is sticky: once a step was bad, every later step (of the same
  `steps_per_execution` group too) is skipped until the host raises.
- `end`: puts the snapshot back where the step was not finite, and the
  absent tasks' strategy state back in any case.

How the optimizer step is skipped (`StepGuard.mechanism`):

- `"cond"` (the default): `tf.cond` around `optimizer.apply`. Nothing is
  copied, and the untaken branch costs nothing.
- `"select"`: the optimizer applies gradients zeroed where the step is
  skipped, and every variable it writes (the updated variables and the
  optimizer's state) is put back by `where(ok, new, old)`, which needs a
  copy of exactly those variables. An earlier stack (TensorFlow 2.16-era
  XLA:CPU) ran the conditional 8x slower on a small CNN, so this was the
  mechanism under XLA. Measured again on TensorFlow 2.21, 2 CPU cores
  (`benchmarks/step_overhead.py --mechanisms`, BUILD.md), the conditional is
  as fast under XLA (LeNet, batch 32: 1.002x plain Keras against 1.026x;
  batch 256: 0.953x against 0.962x; a 3-block CNN with BatchNorm: 21.8 ms
  against 21.5 ms, within the noise) and faster in graph mode, so `"cond"`
  is the default everywhere and `"select"` stays for a platform where a
  measurement says otherwise.
- under a distribution strategy whose optimizer synchronises through
  `merge_call` (MirroredStrategy): `tf.cond` in cross-replica context.
- on JAX, always `"select"`: the step is a pure function of the state
  values (Keras' JAX trainer), so a variable assigned inside a `lax.cond`
  branch would leak a tracer, and the copies are values XLA already holds.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.models import _distribution as distribution

#: How a skipped step keeps the optimizer from changing anything.
MECHANISMS = ("cond", "select")


class StepGuard:
    """The non-finite record of a model and its step transaction.

    Holds four integer scalars, deliberately not Keras weights (they are
    bookkeeping, not model state, and are not saved): the number of steps
    attempted, the first bad step (-1 if none), the index of the first
    loss that was not finite there (-2: the gradient, with every loss
    finite), and the number of skipped steps. On TensorFlow they are
    `tf.Variable`s written by the first replica; on JAX they are the
    variables of `record`, a metric the model lists among its metrics so
    that Keras' JAX trainer threads them through the step with the other
    metric state.
    """

    def __init__(self):
        self.record = GuardRecord()
        self.steps = self.record.steps
        self.bad_step = self.record.bad_step
        self.bad_task = self.record.bad_task
        self.skipped = self.record.skipped
        #: None (`"cond"`) or one of `MECHANISMS`; see the module docstring.
        self.mechanism = None

    def clear(self):
        """Forgets the record (at the start of every `fit`)."""
        self.steps.assign(0)
        self.bad_step.assign(-1)
        self.bad_task.assign(-1)
        self.skipped.assign(0)

    # --- Inside the traced step -------------------------------------------

    def begin(self, model, strategy, masked):
        """A snapshot of the state the step may have to put back."""
        state = [*model.non_trainable_variables, *strategy.trainable_variables]
        task_state = strategy.task_state_snapshot() if masked else []
        return _Snapshot(state, [ops.copy(v.value) for v in state], task_state)

    def check_losses(self, losses, on_nonfinite, batch_size):
        """Records this step's `(T,)` losses; returns whether it may go on
        (every loss finite on every replica, no earlier bad step under
        `"raise"`, a non-empty batch)."""
        finite = distribution.on_all_replicas(self._record(losses))
        if on_nonfinite == "raise":
            finite = ops.logical_and(finite, _read(self.bad_step) < 0)
        # An empty batch (possible inside a data set) trains nothing.
        return ops.logical_and(finite, batch_size > 0)

    def apply(self, optimizer, ok, grads, variables):
        """Applies `grads` only where `ok` holds and they are finite;
        returns whether they were applied.

        A finite loss may still have a non-finite gradient (sqrt at 0);
        such a step is treated like a non-finite loss. Under loss scaling
        the optimizer gets every step whose losses are finite and skips an
        overflowing one itself (lowering its scale); that step is returned
        as not applied, without a record (it is not an error), so that the
        strategy's state and the layers' statistics are put back too."""
        grads_finite = distribution.on_all_replicas(
            ops.all(ops.stack([ops.all(ops.isfinite(g)) for g in grads]))
        )
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            applied = ops.logical_and(ok, grads_finite)
        else:
            self._record_gradients(ok, grads_finite)
            ok = applied = ops.logical_and(ok, grads_finite)
        if distribution.needs_merge_call():
            distribution.apply_in_cross_replica_context(optimizer, ok, grads, variables)
        elif self._mechanism() == "cond":
            _apply_by_cond(optimizer, ok, grads, variables)
        else:
            _apply_by_select(optimizer, ok, grads, variables)
        return applied

    def end(self, strategy, snapshot, finite, task_mask):
        """Puts back what a skipped step changed, and what absent tasks'
        strategy state the step changed."""
        for variable, value in zip(snapshot.variables, snapshot.values):
            variable.assign(ops.where(finite, variable.value, value))
        if task_mask is not None:
            # An absent task's state stays as it was (Strategy docs).
            strategy.restore_absent_tasks(task_mask, snapshot.task_state)

    def _mechanism(self):
        if keras.backend.backend() != "tensorflow":
            return "select"
        if self.mechanism is None:
            return "cond"
        if self.mechanism not in MECHANISMS:
            raise ValueError(
                f"StepGuard.mechanism must be None or one of {MECHANISMS}, "
                f"got {self.mechanism!r}."
            )
        return self.mechanism

    def _record(self, losses):
        dtype = self.steps.dtype
        finite_per_task = ops.isfinite(losses)
        finite = ops.all(finite_per_task)
        first_bad = ops.cast(ops.argmin(ops.cast(finite_per_task, "int32")), dtype)
        new_bad = ops.logical_and(ops.logical_not(finite), _read(self.bad_step) < 0)
        self.bad_task.assign(ops.where(new_bad, first_bad, _read(self.bad_task)))
        self.bad_step.assign(
            ops.where(new_bad, _read(self.steps), _read(self.bad_step))
        )
        self.skipped.assign_add(ops.cast(ops.logical_not(finite), dtype))
        self.steps.assign_add(ops.ones((), dtype))
        return finite

    def _record_gradients(self, losses_ok, gradients_finite):
        """Records a step whose losses were finite but whose gradients were
        not (task index -2: no single task is to blame)."""
        dtype = self.steps.dtype
        failed = ops.logical_and(losses_ok, ops.logical_not(gradients_finite))
        new_bad = ops.logical_and(failed, _read(self.bad_step) < 0)
        self.bad_task.assign(
            ops.where(new_bad, ops.full((), -2, dtype), _read(self.bad_task))
        )
        self.bad_step.assign(
            ops.where(new_bad, _read(self.steps) - 1, _read(self.bad_step))
        )
        self.skipped.assign_add(ops.cast(failed, dtype))


class GuardRecord(keras.metrics.Metric):
    """The guard's four counters (see `StepGuard`).

    A metric on JAX only so that Keras' JAX trainer carries its variables
    through the compiled step (`MultiTaskModel.metrics` lists it there); it
    reports nothing, and `reset_state` keeps the record, which
    `StepGuard.clear` alone forgets, at the start of every `fit`.
    """

    def __init__(self):
        super().__init__(name="step_guard")
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            def scalar(name, value):
                return tf.Variable(
                    value,
                    dtype=tf.int64,
                    trainable=False,
                    name=name,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                    synchronization=tf.VariableSynchronization.ON_WRITE,
                )
        else:

            def scalar(name, value):
                return self.add_variable((), "zeros", "int32", name=name)

        self.steps = scalar("steps", 0)
        self.bad_step = scalar("bad_step", -1)
        self.bad_task = scalar("bad_task", -1)
        self.skipped = scalar("skipped", 0)
        if keras.backend.backend() != "tensorflow":
            self.bad_step.assign(-1)
            self.bad_task.assign(-1)

    def update_state(self, *args, **kwargs):
        raise NotImplementedError("the step guard updates its record itself")

    def result(self):
        return {}

    def reset_state(self):
        pass


def _read(variable):
    """A counter's value (a `tf.Variable` on TensorFlow, a Keras variable,
    read as its value, on JAX)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


class _Snapshot:
    """The values `StepGuard.begin` keeps (a plain holder)."""

    def __init__(self, variables, values, task_state):
        self.variables = variables
        self.values = values
        self.task_state = task_state


def _apply_by_cond(optimizer, ok, grads, variables):
    import tensorflow as tf

    def apply():
        optimizer.apply(grads, variables)
        return tf.constant(True)

    tf.cond(ok, apply, lambda: tf.constant(False))


def _apply_by_select(optimizer, ok, grads, variables):
    state = [*variables, *optimizer.variables]
    before = [ops.copy(v.value) for v in state]
    optimizer.apply([ops.where(ok, g, ops.zeros_like(g)) for g in grads], variables)
    for variable, value in zip(state, before):
        variable.assign(ops.where(ok, variable.value, value))
