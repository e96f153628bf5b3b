"""Loss-proportional adaptive weighting (after Huq and Pervin, IJ-AI 2022)."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._present_task_ops import (
    present_count,
    present_softmax,
)
from keras_mtl.weighting._task_state_ops import (
    add_task_vector,
    assign_zeros,
    present_or_all,
)
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

_MODES = ("batch", "epoch")
_NORMALIZATIONS = ("ratio", "softmax")


@register_strategy("adaptive", "huq_pervin", "adaptive_weighting")
class AdaptiveWeighting(LossWeighting):
    """Gives more weight to the tasks with the larger loss.

    The paper's principle is to put more emphasis on more difficult tasks,
    measured by their loss. Notation: T tasks, Ltilde_t the loss used to
    rank the tasks (held constant for the model update):

    - `mode="batch"`: Ltilde_t = L_t, the current batch loss;
    - `mode="epoch"`: Ltilde_t = the mean training loss of task t over the
      previous epoch (accumulated during the training steps, moved into
      place by `on_epoch_end()`, which the model calls at the end of every
      training epoch); w_t = 1 during the first epoch.

    The weights are

        normalize="ratio":    w_t = T * Ltilde_t / sum_j Ltilde_j
        normalize="softmax":  w_t = T * exp(Ltilde_t / tau) / sum_j exp(Ltilde_j / tau)

    and the objective is sum_t w_t L_t. Both rules preserve the order of the
    losses (a larger loss gets a larger weight) and sum to T. With "ratio"
    negative losses are treated as 0, and w = 1 if every Ltilde_t is 0 or a
    loss is not finite. "softmax" depends on the scale of the losses
    through tau; "ratio" does not, and amplifies a loss's scale instead of
    compensating it (not invariant to loss scaling, the opposite of
    LogSE/SLAW).

    Properties: stateful in epoch mode (the running mean of the current
    epoch and the previous epoch's mean), stateless in batch mode; one
    backward pass.

    Missing tasks: with a `task_mask` (a model compiled with
    `missing_labels`) and K present tasks, the normalisation runs over the
    present tasks only (w_t = K * Ltilde_t / sum_{j present} Ltilde_j, or
    the softmax over the present tasks) and absent tasks get weight 0; the
    fallback to w = 1 (all-zero or non-finite values) looks at the present
    tasks only. In epoch mode a task's epoch mean averages its losses over
    the steps where it is present (`current_steps` counts them per task),
    and an epoch in which a task never appeared keeps that task's previous
    mean (`epochs` is kept per task). The present tasks get w = 1 until
    every one of them has a recorded epoch mean (there is no neutral value
    of a loss to stand in for a missing one); when all tasks are always
    present this is the first epoch, as without a mask.

    Args:
        mode: `"batch"` (default) or `"epoch"`.
        normalize: `"ratio"` (default) or `"softmax"`.
        temperature: tau > 0 of the softmax; unused with `"ratio"`.
            Default 1.0.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.adaptive_weighting import AdaptiveWeighting
    >>> strategy = AdaptiveWeighting()
    >>> _, weights = strategy(keras.ops.convert_to_tensor([1.0, 3.0]))
    >>> [round(float(w), 3) for w in weights]
    [0.5, 1.5]

    References:
        Aminul Huq, Mst. Tasnim Pervin. "Adaptive Weight Assignment Scheme
        for Multi-task Learning". IAES International Journal of Artificial
        Intelligence (IJ-AI) 11(1):173-178, 2022.
        doi:10.11591/ijai.v11.i1.pp173-178. arXiv:2303.07278. No official
        code known.

    Note:
        Unverified reconstruction: only the abstract of the paper could be
        read (more weight to tasks with higher loss, compared with DWA and
        uncertainty weighting). The exact formula, whether it uses batch or
        epoch losses, and its normalisation are this library's choices
        (methods.md A4), offered as options until checked against the PDF.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, mode="batch", normalize="ratio", temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ValueError(
                f"AdaptiveWeighting `mode` must be one of {_MODES}, got {mode!r}."
            )
        if normalize not in _NORMALIZATIONS:
            raise ValueError(
                "AdaptiveWeighting `normalize` must be one of "
                f"{_NORMALIZATIONS}, got {normalize!r}."
            )
        try:
            temperature = float(temperature)
        except (TypeError, ValueError):
            temperature = float("nan")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(
                "AdaptiveWeighting `temperature` must be a finite number > 0, "
                f"got {temperature!r}."
            )
        self.mode = mode
        self.normalize = normalize
        self.temperature = temperature

    def build(self, input_shape):
        super().build(input_shape)
        if self.mode == "epoch":
            # The running mean of the current epoch and its per-task step
            # count, the previous epoch's mean, and per task whether an epoch
            # mean was recorded (0 or 1).
            for name in ("current_mean", "current_steps", "previous_mean", "epochs"):
                setattr(self, name, add_task_vector(self, name))

    def _normalized(self, values, present):
        """The weights (summing to K) of the K present tasks' `values`, 0
        for the others (K = T without a mask)."""
        count = present_count(present, values.dtype)
        # The absent tasks' values are never used.
        values = ops.where(present, values, ops.zeros_like(values))
        if self.normalize == "softmax":
            weights = count * present_softmax(values / self.temperature, present)
            valid = ops.all(ops.isfinite(values))
        else:
            values = ops.maximum(values, 0.0)
            total = ops.sum(values)
            valid = ops.logical_and(total > 0.0, ops.isfinite(total))
            safe_total = ops.where(valid, total, ops.ones_like(total))
            weights = count * values / safe_total
        return ops.where(valid, weights, ops.ones_like(weights))

    def compute_weights(self, losses, training=True, task_mask=None):
        values = ops.cast(ops.stop_gradient(losses), "float32")
        if self.num_tasks == 1:
            return ops.ones_like(values)
        present = present_or_all(task_mask, self.num_tasks)
        if self.mode == "batch":
            return self._normalized(values, present)
        recorded = ops.logical_or(self.epochs >= 1.0, ops.logical_not(present))
        weights = ops.where(
            ops.all(recorded),
            self._normalized(self.previous_mean.value, present),
            ops.ones_like(values),
        )
        if training:
            steps = self.current_steps + ops.cast(present, "float32")
            mean = self.current_mean + (values - self.current_mean) / ops.maximum(
                steps, 1.0
            )
            self.current_mean.assign(ops.where(present, mean, self.current_mean.value))
            self.current_steps.assign(steps)
        return weights

    def on_epoch_end(self):
        if not self.built or self.mode != "epoch":
            return
        seen = self.current_steps > 0.0  # per task
        self.previous_mean.assign(
            ops.where(seen, self.current_mean.value, self.previous_mean.value)
        )
        self.epochs.assign(
            ops.where(seen, ops.minimum(self.epochs + 1.0, 1.0), self.epochs.value)
        )
        assign_zeros(self.current_mean, self.current_steps)

    def reset_state(self):
        if self.built and self.mode == "epoch":
            assign_zeros(
                self.current_mean, self.current_steps, self.previous_mean, self.epochs
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mode": self.mode,
                "normalize": self.normalize,
                "temperature": self.temperature,
            }
        )
        return config
