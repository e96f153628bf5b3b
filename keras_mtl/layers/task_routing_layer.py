"""Task Routing Layer (Strezoski, van Noord, Worring, ICCV 2019)."""

from __future__ import annotations

import numpy as np
from keras import KerasTensor, layers, ops

from keras_mtl.utils.serialization import register_serializable

_MODES = ("split", "fold", "active")


@register_serializable
class TaskRoutingLayer(layers.Layer):
    """Task Routing Layer: a fixed binary channel mask per task.

    The layer holds a mask M in {0, 1}^(T x C) for T tasks and C channels
    (the last axis of its input: `(B, C)` for dense layers, `(B, H, W, C)`
    for channels-last convolutions, or any `(B, ..., C)`). Row M[t] switches
    off k = int(sigma * C) channels for task t, drawn uniformly at random
    and independently for every task, and keeps the other C - k:

        y_t = x * M[t]          (M[t] broadcast over batch and spatial axes)

    The masks are drawn once, in `build`, from `seed`, and are stored as a
    non-trainable weight: they are never trained, are saved with the model
    and restored by `load_model`. The units switched off for task t output
    zero and receive zero gradient from task t's loss, so every task trains
    its own sub-network of a shared network ("routes" through it).

    `sigma` is the fraction of units switched OFF per task, the value the
    reference code uses (the paper calls it the sharing ratio). `sigma=0`
    means no routing (all masks are ones: a plain fully shared network);
    the default 0.5 is the reference `vgg11(sigma=0.5)`, where two tasks
    share on average half of each task's units.

    Three modes run the tasks:

    - `mode="split"` (default): all tasks at once. `x` of shape `(B, ..., C)`
      gives the list `[x * M[0], ..., x * M[T-1]]`, one tensor per task, so
      task-specific towers or heads can follow.
    - `mode="fold"`: for a whole routed trunk. The input is a task-folded
      batch `(T * B, ..., C)`: T stacked copies of a batch, made by
      `FoldTasks`; block t (rows `t*B` to `(t+1)*B`) is multiplied by M[t].
      Shared layers between routing layers then run once on the folded
      batch with the same weights for every task, and `UnfoldTasks` splits
      the result back into T tensors for the heads.
      `keras_mtl.models.task_routed_model` builds such a network.
    - `mode="active"`: one task at a time, as in the reference code: the
      output is `x * M[active_task]`. Set `layer.active_task = t` (stored in
      a non-trainable int variable, so compiled functions follow it
      without retracing).

    In every mode `layer(x, task=t)` returns `x * M[t]` for one task: `t` a
    Python int, a scalar int tensor, or an int tensor of shape `(B,)` (one
    task per sample, as when a batch mixes tasks).

    Placement (reference VGG): after every convolution, after its
    BatchNormalization if any, and before the ReLU. Each routing layer needs
    its own masks: give each one a different `seed`.

    Args:
        num_tasks: T, the number of tasks (int >= 1).
        sigma: fraction of the C units switched off for each task, in
            [0, 1); k = int(sigma * C) units per mask row. Default 0.5.
        seed: int seed of the masks. With None, a seed is drawn from
            NumPy's global generator when the layer is built (so
            `keras.utils.set_random_seed` makes it reproducible).
        mode: `"split"`, `"fold"` or `"active"` (see above).
        active_task: the task used in `"active"` mode (int in [0, T)).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> from keras_mtl.layers.task_routing_layer import TaskRoutingLayer
    >>> routing = TaskRoutingLayer(num_tasks=3, sigma=0.5, seed=0)
    >>> outputs = routing(np.ones((2, 8), "float32"))
    >>> len(outputs), tuple(outputs[0].shape)
    (3, (2, 8))
    >>> routing.routing_masks.numpy().sum(axis=1).tolist()
    [4.0, 4.0, 4.0]

    References:
        Gjorgji Strezoski, Nanne van Noord, Marcel Worring. "Many Task
        Learning With Task Routing". ICCV 2019. arXiv:1903.12117. Code:
        https://github.com/gstrezoski/TaskRouting.

    Note:
        The reference trains one task per forward pass (`set_active_task`).
        `"split"` and `"fold"` evaluate all tasks in the same step instead,
        which is what `MultiTaskModel`'s train step (one loss per task)
        needs; the gradient of each task's loss is the same as in the
        one-task pass. In `"fold"` mode a BatchNormalization between routing
        layers computes its statistics over the folded batch (all tasks
        together), whereas the reference computes them per task.
    """

    def __init__(
        self,
        num_tasks,
        sigma=0.5,
        seed=None,
        mode="split",
        active_task=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int | np.integer):
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}.")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}.")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float | np.number):
            raise ValueError(f"sigma must be a number in [0, 1), got {sigma!r}.")
        if not 0.0 <= float(sigma) < 1.0:
            raise ValueError(f"sigma must be in [0, 1), got {sigma!r}.")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
        ):
            raise ValueError(f"seed must be None or an int >= 0, got {seed!r}.")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
        self.num_tasks = int(num_tasks)
        self.sigma = float(sigma)
        self.seed = None if seed is None else int(seed)
        self.mode = mode
        self._active_task = self._check_task(active_task, "active_task")
        self._active_task_variable = None
        self.supports_masking = True

    def _check_task(self, task, what):
        if isinstance(task, bool) or not isinstance(task, int | np.integer):
            raise ValueError(
                f"{what} must be an int in [0, {self.num_tasks}), got {task!r}."
            )
        if not 0 <= task < self.num_tasks:
            raise ValueError(
                f"{what} must be an int in [0, {self.num_tasks}), got {task!r}."
            )
        return int(task)

    @property
    def active_task(self) -> int:
        """The task `"active"` mode routes (int in [0, num_tasks))."""
        if self._active_task_variable is not None:
            return int(ops.convert_to_numpy(self._active_task_variable))
        return self._active_task

    @active_task.setter
    def active_task(self, task):
        task = self._check_task(task, "active_task")
        self._active_task = task
        if self._active_task_variable is not None:
            self._active_task_variable.assign(task)

    def num_switched_off(self, channels: int) -> int:
        """k = int(sigma * C): the units each task switches off."""
        return int(self.sigma * channels)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "TaskRoutingLayer needs a known channel (last) axis, got input "
                f"shape {tuple(input_shape)}."
            )
        seed = self.seed
        if seed is None:
            # NumPy's global generator, which keras.utils.set_random_seed seeds.
            seed = int(np.random.randint(0, 2**31 - 1))  # noqa: NPY002
        masks = np.ones((self.num_tasks, channels), dtype="float32")
        off = self.num_switched_off(channels)
        if off:
            rng = np.random.default_rng(seed)
            for t in range(self.num_tasks):
                masks[t, rng.permutation(channels)[:off]] = 0.0
        self.routing_masks = self.add_weight(
            shape=(self.num_tasks, channels),
            initializer="ones",
            trainable=False,
            dtype="float32",
            name="routing_masks",
        )
        self.routing_masks.assign(masks)
        if self.mode == "active":
            self._active_task_variable = self.add_weight(
                shape=(),
                initializer="zeros",
                trainable=False,
                dtype="int32",
                name="active_task",
            )
            self._active_task_variable.assign(self._active_task)
        super().build(input_shape)

    def _broadcast(self, mask_rows, rank):
        """`(N, C)` rows -> `(N, 1, ..., 1, C)` for an input of `rank`."""
        return ops.reshape(
            mask_rows, (-1,) + (1,) * (rank - 2) + (mask_rows.shape[-1],)
        )

    def _one_task(self, inputs, task):
        masks = ops.cast(self.routing_masks, inputs.dtype)
        rank = len(inputs.shape)
        if isinstance(task, int | np.integer):
            row = masks[self._check_task(task, "task")]
            return inputs * row
        task = ops.cast(task, "int32")
        if len(task.shape) == 0:
            return inputs * ops.take(masks, task, axis=0)
        if len(task.shape) == 1:
            return inputs * self._broadcast(ops.take(masks, task, axis=0), rank)
        raise ValueError(
            "task must be an int, a scalar or a (batch,) tensor, got shape "
            f"{task.shape}."
        )

    def call(self, inputs, task=None):
        if task is not None:
            return self._one_task(inputs, task)
        masks = ops.cast(self.routing_masks, inputs.dtype)
        if self.mode == "split":
            return [inputs * masks[t] for t in range(self.num_tasks)]
        if self.mode == "active":
            return inputs * ops.take(masks, self._active_task_variable, axis=0)
        # "fold": rows [t*B, (t+1)*B) belong to task t.
        per_task = ops.shape(inputs)[0] // self.num_tasks
        rows = ops.broadcast_to(
            ops.expand_dims(masks, 1),
            (self.num_tasks, per_task, masks.shape[-1]),
        )
        rows = ops.reshape(rows, (-1, masks.shape[-1]))
        return inputs * self._broadcast(rows, len(inputs.shape))

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.mode == "split":
            return [input_shape for _ in range(self.num_tasks)]
        return input_shape

    def compute_output_spec(self, inputs, task=None):
        if task is not None:
            return KerasTensor(inputs.shape, dtype=self.compute_dtype)
        return super().compute_output_spec(inputs)

    def compute_mask(self, inputs, mask=None):
        if mask is None or self.mode != "split":
            return mask
        return [mask for _ in range(self.num_tasks)]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_tasks=self.num_tasks,
            sigma=self.sigma,
            seed=self.seed,
            mode=self.mode,
            active_task=self.active_task,
        )
        return config
