"""The base class of every multi-task strategy."""

from __future__ import annotations

from typing import ClassVar

import keras
from keras import ops

#: What a strategy may ask the model to compute each training step.
#: - "losses": the vector of task losses only (one backward pass);
#: - "gradients": the `(T, P)` matrix of per-task gradients of the shared
#:   variables (T backward passes through the trunk);
#: - "gramian": only the `(T, T)` Gramian of that matrix is needed to choose
#:   the task weights; the update is still a linear combination of rows.
REQUIREMENTS = ("losses", "gradients", "gramian")


class Strategy(keras.layers.Layer):
    """Base class of loss-weighting and gradient-aggregation strategies.

    A strategy is a small, possibly stateful combiner of the T task
    objectives of a multi-task model. It is a Keras layer so that its state
    (counters, loss histories, learnable log-variances) is created in
    `build()`, updated with `assign` inside the compiled training step,
    optimised when trainable, and saved with the model and its checkpoints.

    A strategy never touches the model: it sees tensors (task losses, or
    per-task gradients) and returns tensors. Tapes, gradients and optimizer
    calls belong to `keras_mtl.MultiTaskModel.train_step` alone.

    Subclasses derive from `LossWeighting` (the strategy combines the task
    losses into one scalar to differentiate) or `GradientAggregation` (the
    strategy combines per-task gradients into one update). Class attributes
    declare what the model must provide:

    - `requires`: one of `"losses"`, `"gradients"`, `"gramian"`.
    - `kpi_metric`: None, or the name of a per-task metric (for example
      `"accuracy"`) whose running value the model passes to `call` as
      `kpis`, a `(T,)` tensor (Dynamic Task Prioritization needs it).
    - `uses_post_step_losses`: True when the strategy wants the task losses
      recomputed on the same batch after the optimizer step (FAMO); the
      model then calls `update_after_step(losses, new_losses)`.
    - `stateful`: True when the strategy keeps state across steps.
    - `shared_gradients`: for loss-weighting strategies that also need
      per-task gradients (GradNorm, the orthogonality regulariser): None,
      `"last_layer"` (the trainable variables of the last shared layer(s),
      the ones producing the shared representation) or `"all"` (every
      shared variable). The model then passes `shared_grads`, a `(T, P')`
      matrix, to `call`. May be set per instance.
    - `differentiable_gradients`: with `shared_gradients`, True when the
      objective must be differentiated through those gradients (second
      order, double back-propagation).
    - `supports_missing_tasks`: True when the strategy handles steps in
      which some tasks have no labelled sample (see below).
    - `fixed_weights`: True when the task weights depend on neither the
      losses nor the gradients (equal and static weighting). Only such a
      strategy may train one task per step (`compile(task_sampling=...)`).
    - `batches_per_step`: for gradient methods that need per-task gradients
      on k independent mini-batches per step (MoDo, SDMGrad: k = 3). The
      model splits each batch of `fit` into k consecutive sub-batches, runs
      the forward pass on each and hands the strategy the `(k, T, P)`
      per-task gradients (see `GradientAggregation`). Default 1.
    - `lookahead`: True for strategies that learn their weights from a
      one-step look-ahead on a held-out sub-batch (Auto-Lambda). The model
      then cuts each batch into a training and a held-out half, takes a
      virtual SGD step on the weighted training losses, the gradient d of
      the outer losses there, and calls `update_from_lookahead` with the
      training losses at theta +- eps d (see `AutoLambda`) before the step.

    Missing tasks. A model compiled with `missing_labels` passes
    `task_mask`, a `(T,)` float tensor (1.0 where the task has at least one
    labelled sample in the global batch, 0.0 where it has none), to `call`,
    `compute_weights` and `update_after_step`. An absent task's loss is 0
    and its row of per-task gradients is zero. A strategy that sets
    `supports_missing_tasks = True` must then give absent tasks weight 0,
    compute everything else as if only the present tasks existed (a
    gradient method drops their rows) and leave their state untouched. It
    declares which state is per task with `add_weight(..., task_axis=k)`:
    after every step the model puts back, along axis k, the values of absent
    tasks, whatever the strategy assigned (trainable variables included,
    which the optimizer would otherwise still move through its momentum).
    Other state (step counters) advances as usual. Strategies that do not
    support missing tasks are refused by `compile(missing_labels=...)`.

    Hooks the model calls outside the traced step: `on_epoch_end()` at the
    end of every training epoch (epoch-level state such as DWA's loss
    history) and `reset_state()`.

    Args:
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`). The
            default dtype is `"float32"`, also under mixed precision, since
            weights and statistics of losses need the full precision.
    """

    requires: ClassVar[str] = "losses"
    kpi_metric: ClassVar[str | None] = None
    uses_post_step_losses: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    shared_gradients: ClassVar[str | None] = None
    differentiable_gradients: ClassVar[bool] = False
    supports_missing_tasks: ClassVar[bool] = False
    fixed_weights: ClassVar[bool] = False
    batches_per_step: ClassVar[int] = 1
    lookahead: ClassVar[bool] = False
    registry_name: ClassVar[str | None] = None

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if self.requires not in REQUIREMENTS:
            raise ValueError(
                f"{type(self).__name__}.requires must be one of "
                f"{REQUIREMENTS}, got {self.requires!r}."
            )
        self.num_tasks = None
        self._task_names = None
        # Paths of per-task state -> task axis; a plain dict, kept out of
        # Keras' tracking.
        object.__setattr__(self, "_task_axes", {})

    # --- Binding to a model's tasks -------------------------------------

    @property
    def task_names(self) -> tuple[str, ...] | None:
        """The task names of the model this strategy is compiled with."""
        return self._task_names

    def set_task_names(self, task_names) -> None:
        """Tells the strategy the names (and so the number) of its tasks.

        Called by `MultiTaskModel.compile` before `build`. Strategies whose
        arguments name tasks (for example `StaticWeighting` with a dict) use
        it to order their values.

        Raises:
            ValueError: if the strategy is already built for another number
                of tasks.
        """
        task_names = tuple(task_names)
        if self.num_tasks is not None and self.num_tasks != len(task_names):
            raise ValueError(
                f"Strategy {self.name!r} was built for {self.num_tasks} "
                f"tasks, but the model has {len(task_names)} tasks "
                f"{list(task_names)}. Create a new strategy for this model."
            )
        self._task_names = task_names

    def build(self, input_shape):
        """Creates the strategy's state.

        Args:
            input_shape: `(T,)` for the task losses of a loss-weighting
                strategy, or `(T, P)` for the per-task gradients of a
                gradient-aggregation strategy. Subclasses call
                `super().build(input_shape)` first, then create their
                variables with `add_weight`.
        """
        input_shape = tuple(input_shape)
        if len(input_shape) not in (1, 2) or input_shape[0] is None:
            raise ValueError(
                f"{type(self).__name__} expects a shape (T,) of task losses "
                f"or (T, P) of per-task gradients with a known T, got "
                f"{input_shape}."
            )
        num_tasks = int(input_shape[0])
        if num_tasks < 1:
            raise ValueError(
                f"{type(self).__name__} needs at least one task, got "
                f"input shape {input_shape}."
            )
        if self._task_names is not None and len(self._task_names) != num_tasks:
            raise ValueError(
                f"{type(self).__name__} is bound to tasks "
                f"{list(self._task_names)} but was built with {num_tasks}."
            )
        self.num_tasks = num_tasks
        self._save_seed_generator_states()
        self.built = True

    def _save_seed_generator_states(self):
        """Makes the state of the strategy's random generators part of its
        weights, so that saving, checkpoints and `BackupAndRestore` keep it
        and a resumed run draws what the uninterrupted run would have.
        (Keras leaves a layer's generator state out of its weights.)"""
        tracked = {id(v) for v in self._non_trainable_variables}
        for generator in list(self._seed_generators):
            if id(generator.state) not in tracked:
                self._track_variable(generator.state)
        # Listed once, as a weight, not a second time as a generator.
        self._seed_generators.clear()

    def add_weight(self, *args, task_axis=None, **kwargs):
        """`keras.layers.Layer.add_weight`, marking per-task state.

        Args:
            *args, **kwargs: as for `keras.layers.Layer.add_weight`.
            task_axis: None for state shared by all tasks, or the axis of
                the variable indexed by task. The model keeps an absent
                task's slice unchanged (see "Missing tasks" above).
        """
        variable = super().add_weight(*args, **kwargs)
        if task_axis is not None:
            rank = len(variable.shape)
            axis = task_axis + rank if task_axis < 0 else task_axis
            if not 0 <= axis < rank or variable.shape[axis] != self.num_tasks:
                raise ValueError(
                    f"{type(self).__name__}: task_axis={task_axis} of variable "
                    f"{variable.name!r} with shape {tuple(variable.shape)} is "
                    f"not an axis of size num_tasks={self.num_tasks}."
                )
            self._task_axes[variable.path] = axis
        return variable

    def per_task_state(self) -> list:
        """The `(variable, task_axis)` pairs of the strategy's per-task state."""
        return [
            (v, self._task_axes[v.path])
            for v in self.variables
            if v.path in self._task_axes
        ]

    def task_state_snapshot(self) -> list:
        """The values of `per_task_state()`, to pass to
        `restore_absent_tasks` after a step."""
        return [ops.copy(v.value) for v, _ in self.per_task_state()]

    def restore_absent_tasks(self, task_mask, snapshot) -> None:
        """Puts back the per-task state of the tasks absent from a step.

        Args:
            task_mask: `(T,)`, nonzero for the tasks present in the step.
            snapshot: `task_state_snapshot()` taken before the step.
        """
        present = ops.convert_to_tensor(task_mask) > 0
        for (variable, axis), before in zip(self.per_task_state(), snapshot):
            shape = [1] * len(variable.shape)
            shape[axis] = self.num_tasks
            keep = ops.reshape(present, shape)
            variable.assign(ops.where(keep, variable.value, before))

    def _check_num_tasks(self, tensor, what="losses"):
        """Raises if `tensor`'s leading dimension is not `num_tasks`."""
        count = tensor.shape[0]
        if count is not None and self.num_tasks is not None:
            if int(count) != self.num_tasks:
                raise ValueError(
                    f"Strategy {self.name!r} was built for {self.num_tasks} "
                    f"tasks but received {what} for {int(count)} tasks "
                    f"(shape {tuple(tensor.shape)})."
                )

    # --- Hooks ----------------------------------------------------------

    def on_epoch_end(self) -> None:
        """Called by the model at the end of each training epoch."""

    def update_after_step(self, losses, new_losses, task_mask=None) -> None:
        """Called inside the step after the update when
        `uses_post_step_losses` is True, with the task losses before the
        update and recomputed on the same batch after it (and `task_mask`
        when the model is compiled with `missing_labels`)."""

    def reset_state(self) -> None:
        """Restores the state the strategy had right after `build`.

        Stateful subclasses override this; stateless ones have nothing to
        reset.
        """
        if self.stateful:
            raise NotImplementedError(
                f"{type(self).__name__} is stateful and must implement reset_state()."
            )
