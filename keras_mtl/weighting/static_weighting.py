"""Fixed, user-chosen task weights."""

import math
from collections.abc import Mapping, Sequence

from keras import ops

from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy


@register_strategy("static", "fixed", "static_weighting")
class StaticWeighting(LossWeighting):
    """Fixed task weights chosen by the user.

        L = sum_t w_t L_t,    w_t constant.

    Args:
        weights: one non-negative finite weight per task, as a sequence in
            the model's task order or as a dict `{task_name: weight}`. With a
            dict, tasks it does not name are an error, so that a typo cannot
            silently drop a task.

    Stateless, one backward pass. `MultiTaskModel.compile(loss_weights=...)`
    is a shortcut for this strategy. With missing labels, a task absent from
    a step has weight 0.

    Example:

    >>> strategy = keras_mtl.weighting.StaticWeighting([1.0, 0.1])
    >>> total, _ = strategy(keras.ops.convert_to_tensor([2.0, 10.0]))
    >>> float(total)
    3.0
    """

    supports_missing_tasks = True
    fixed_weights = True

    def __init__(self, weights, **kwargs):
        super().__init__(**kwargs)
        if isinstance(weights, Mapping):
            self.weights_by_task = {str(k): float(v) for k, v in weights.items()}
            values = list(self.weights_by_task.values())
        elif isinstance(weights, Sequence) and not isinstance(weights, str):
            self.weights_by_task = None
            values = [float(v) for v in weights]
        else:
            raise ValueError(
                "StaticWeighting `weights` must be a sequence of floats or a "
                f"dict {{task: weight}}, got {weights!r}."
            )
        if not values:
            raise ValueError("StaticWeighting `weights` must not be empty.")
        for value in values:
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    "StaticWeighting `weights` must be finite and "
                    f"non-negative, got {weights!r}."
                )
        self.task_weights = values
        self._weights_arg = (
            dict(self.weights_by_task) if self.weights_by_task else list(values)
        )

    def set_task_names(self, task_names):
        super().set_task_names(task_names)
        names = list(self.task_names)
        if self.weights_by_task is not None:
            missing = sorted(set(names) - set(self.weights_by_task))
            extra = sorted(set(self.weights_by_task) - set(names))
            if missing or extra:
                raise ValueError(
                    f"StaticWeighting weights name tasks {sorted(self.weights_by_task)}"
                    f" but the model's tasks are {names}: missing {missing}, "
                    f"unknown {extra}."
                )
            self.task_weights = [self.weights_by_task[n] for n in names]
        elif len(self.task_weights) != len(names):
            raise ValueError(
                f"StaticWeighting has {len(self.task_weights)} weights but the "
                f"model has {len(names)} tasks {names}."
            )

    def build(self, input_shape):
        super().build(input_shape)
        if self.weights_by_task is not None and self.task_names is None:
            raise ValueError(
                "StaticWeighting with a dict of weights needs the task names: "
                "compile it with a MultiTaskModel, or pass a list of weights."
            )
        if len(self.task_weights) != self.num_tasks:
            raise ValueError(
                f"StaticWeighting has {len(self.task_weights)} weights but is "
                f"used with {self.num_tasks} tasks."
            )

    def compute_weights(self, losses, training=True, task_mask=None):
        return ops.convert_to_tensor(self.task_weights, dtype=losses.dtype)

    def get_config(self):
        config = super().get_config()
        config["weights"] = self._weights_arg
        return config
