"""Loss-proportional adaptive weighting (after Huq and Pervin, IJ-AI 2022)."""

from __future__ import annotations

import math

from keras import ops

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
            shape = (self.num_tasks,)
            self.current_mean = self.add_weight(
                shape=shape, initializer="zeros", trainable=False, name="current_mean"
            )
            self.current_steps = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="current_steps"
            )
            self.previous_mean = self.add_weight(
                shape=shape, initializer="zeros", trainable=False, name="previous_mean"
            )
            self.epochs = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="epochs"
            )

    def _normalized(self, values):
        num_tasks = self.num_tasks
        if self.normalize == "softmax":
            weights = num_tasks * ops.softmax(values / self.temperature)
            valid = ops.all(ops.isfinite(values))
        else:
            values = ops.maximum(values, 0.0)
            total = ops.sum(values)
            valid = ops.logical_and(total > 0.0, ops.isfinite(total))
            safe_total = ops.where(valid, total, ops.ones_like(total))
            weights = num_tasks * values / safe_total
        return ops.where(valid, weights, ops.ones_like(weights))

    def compute_weights(self, losses, training=True):
        values = ops.cast(ops.stop_gradient(losses), "float32")
        if self.num_tasks == 1:
            return ops.ones_like(values)
        if self.mode == "batch":
            return self._normalized(values)
        weights = ops.where(
            self.epochs >= 1.0,
            self._normalized(self.previous_mean),
            ops.ones_like(values),
        )
        if training:
            steps = self.current_steps + 1.0
            self.current_mean.assign(
                self.current_mean + (values - self.current_mean) / steps
            )
            self.current_steps.assign(steps)
        return weights

    def on_epoch_end(self):
        if not self.built or self.mode != "epoch":
            return
        seen = self.current_steps > 0.0
        self.previous_mean.assign(
            ops.where(seen, self.current_mean, self.previous_mean)
        )
        self.epochs.assign(
            ops.where(seen, ops.minimum(self.epochs + 1.0, 1.0), self.epochs)
        )
        self.current_mean.assign(ops.zeros_like(self.current_mean))
        self.current_steps.assign(0.0)

    def reset_state(self):
        if self.built and self.mode == "epoch":
            for variable in (
                self.current_mean,
                self.current_steps,
                self.previous_mean,
                self.epochs,
            ):
                variable.assign(ops.zeros_like(variable))

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
