"""Dynamic Weight Average (Liu, Johns and Davison, CVPR 2019)."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._argument_ops import as_float
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

_MODES = ("epoch", "step")


@register_strategy("dwa", "dynamic_weight_average")
class DynamicWeightAverage(LossWeighting):
    """Weights each task by how slowly its loss has been decreasing.

    Notation: T tasks, Lbar_t(e) the mean training loss of task t over
    epoch e, tau the temperature. With the descent ratio of the last two
    completed epochs

        r_t = Lbar_t(e - 1) / Lbar_t(e - 2),

    the weights used during epoch e are

        w_t(e) = T * exp(r_t / tau) / sum_j exp(r_j / tau),

    and w_t = 1 during the first two epochs (e = 0, 1), when no ratio is
    available. A task whose loss falls more slowly (larger r_t) gets a
    larger weight; the weights always sum to T and are constants for the
    model update. This is the rule of the MTAN paper and of LibMTL
    (`DWA.py`); tau = 2 is the paper's default.

    `mode="epoch"` (default): during training steps the strategy
    accumulates the running mean of each task's loss in its variables; the
    model calls `on_epoch_end()` at the end of every training epoch, which
    pushes that mean into a two-epoch history and starts a new mean. An
    epoch without training steps is not recorded.

    `mode="step"`: the per-step variant of the SLAW authors' code
    (mtcrawshaw/meta, `DWA` in `meta/train/loss.py`). It keeps an
    exponential moving average m_t(k) = beta * m_t(k-1) + (1 - beta) L_t(k)
    of the batch losses (m_t(1) = L_t(1), beta = `ema_decay` = 0.9) and
    uses r_t = m_t(k-1) / m_t(k-2), the ratio of the latest EMA to the one
    before it, for the weights of step k; w = 1 at the first two steps.
    As in that code, the current batch enters the EMA after its weights are
    formed, exactly as the current epoch does not enter the epoch-level
    ratio.

    Properties: stateful, one backward pass, weights on the T-simplex
    scaled by T, not invariant to loss scaling in the sense of C4 (the
    ratios are scale-free but do not compensate a task's scale).

    Missing tasks: with a `task_mask` (a model compiled with
    `missing_labels`), every statistic is kept per task over the steps in
    which the task is present: a task's epoch mean averages its losses over
    the steps where it had labels (`current_steps` counts them per task), an
    epoch in which a task never appeared is not recorded for that task (its
    two-epoch history and its count `task_count` stay as they were), and in
    step mode its EMA advances only on the steps where it is present. The
    weights of the K present tasks are

        w_t = K * exp(r_t / tau) / sum_{j present} exp(r_j / tau),

    the rule of the method run on the present tasks alone; absent tasks get
    weight 0. The w = 1 warm-up is applied per task: while no present task
    has two recorded epochs (steps in step mode) the present tasks get
    w = 1; otherwise a present task without two records yet enters the
    softmax with the neutral ratio r_t = 1 (the value of a task whose loss
    did not change, and what step mode gives after a single record). When
    all tasks are always present, every per-task count equals the shared
    `count` and the weights are the plain method's.

    Args:
        temperature: tau > 0. Large values give uniform weights, small
            values concentrate the weight on the slowest task. Default 2.0.
        mode: `"epoch"` (paper) or `"step"` (per-step EMA variant).
        ema_decay: beta in [0, 1), used only by `mode="step"`. Default 0.9.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.dynamic_weight_average import (
    ...     DynamicWeightAverage)
    >>> dwa = DynamicWeightAverage()
    >>> for losses in ([1.0, 1.0], [0.5, 0.9]):  # two epochs of one step
    ...     _ = dwa(keras.ops.convert_to_tensor(losses))
    ...     dwa.on_epoch_end()
    >>> _, weights = dwa(keras.ops.convert_to_tensor([0.4, 0.9]))
    >>> [round(float(w), 3) for w in weights]
    [0.9, 1.1]

    References:
        Shikun Liu, Edward Johns, Andrew J. Davison. "End-to-End Multi-Task
        Learning with Attention". CVPR 2019. arXiv:1803.10704. Official
        code: https://github.com/lorenmt/mtan. Step variant: Michael
        Crawshaw, Jana Kosecka, "SLAW: Scaled Loss Approximate Weighting
        for Efficient Multi-Task Learning", arXiv:2109.08218, code
        https://github.com/mtcrawshaw/meta (branch slaw).

    Note:
        Losses are assumed positive; a zero previous-epoch loss is floored
        at 1e-12 in the ratio's denominator, so the weights stay finite.
        Epoch means are accumulated as running means, not sums, to keep
        float32 precision over long epochs.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, temperature=2.0, mode="epoch", ema_decay=0.9, **kwargs):
        super().__init__(**kwargs)
        temperature = _as_float(temperature, "temperature")
        if not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(
                "DynamicWeightAverage `temperature` must be a finite number "
                f"> 0, got {temperature!r}."
            )
        if mode not in _MODES:
            raise ValueError(
                f"DynamicWeightAverage `mode` must be one of {_MODES}, got {mode!r}."
            )
        ema_decay = _as_float(ema_decay, "ema_decay")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(
                "DynamicWeightAverage `ema_decay` must be in [0, 1), got "
                f"{ema_decay!r}."
            )
        self.temperature = temperature
        self.mode = mode
        self.ema_decay = ema_decay

    def build(self, input_shape):
        super().build(input_shape)
        # Epoch mode: running mean of the current epoch and its per-task step
        # count, the means of the last two completed epochs, and how many
        # epochs were completed (capped at 2; `task_count` per task, `count`
        # for any task).
        # Step mode: `latest` / `previous` hold the last two EMAs and
        # `task_count` (`count`) the number of steps seen per task (by any
        # task), capped at 2.
        self.current_mean = add_task_vector(self, "current_mean")
        self.current_steps = add_task_vector(self, "current_steps")
        self.latest = add_task_vector(self, "latest")
        self.previous = add_task_vector(self, "previous")
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )
        self.task_count = add_task_vector(self, "task_count")

    def _ratio_weights(self, present, dtype):
        """The weights of the present tasks alone (see "Missing tasks"; all
        the tasks without a mask, when `task_count` is `count` for each)."""
        if self.num_tasks == 1:
            return ops.ones((1,), dtype=dtype)
        recorded = self.task_count.value >= 2.0
        ratio = self.latest.value / ops.maximum(self.previous.value, 1e-12)
        ratio = ops.cast(ops.where(recorded, ratio, 1.0), dtype)
        soft = present_softmax(ratio / self.temperature, present)
        weights = present_count(present, dtype) * soft
        ready = ops.any(ops.logical_and(present, recorded))
        return ops.where(ready, weights, ops.ones_like(weights))

    def compute_weights(self, losses, training=True, task_mask=None):
        losses = ops.stop_gradient(losses)
        present = present_or_all(task_mask, self.num_tasks)
        weights = self._ratio_weights(present, losses.dtype)
        if not training:
            return weights
        losses = ops.cast(losses, "float32")
        if self.mode == "epoch":
            steps = self.current_steps.value + ops.cast(present, "float32")
            mean = self.current_mean.value + (
                losses - self.current_mean.value
            ) / ops.maximum(steps, 1.0)
            self.current_mean.assign(ops.where(present, mean, self.current_mean.value))
            self.current_steps.assign(steps)
        else:
            first = self.task_count.value < 1.0
            ema = self.ema_decay * self.latest.value + (1.0 - self.ema_decay) * losses
            previous = ops.where(first, losses, self.latest.value)
            latest = ops.where(first, losses, ema)
            self.previous.assign(ops.where(present, previous, self.previous.value))
            self.latest.assign(ops.where(present, latest, self.latest.value))
            self.count.assign(ops.minimum(self.count.value + 1.0, 2.0))
            self.task_count.assign(
                ops.where(
                    present,
                    ops.minimum(self.task_count.value + 1.0, 2.0),
                    self.task_count.value,
                )
            )
        return weights

    def on_epoch_end(self):
        if not self.built or self.mode != "epoch":
            return
        seen = self.current_steps.value > 0.0  # per task
        self.previous.assign(ops.where(seen, self.latest.value, self.previous.value))
        self.latest.assign(ops.where(seen, self.current_mean.value, self.latest.value))
        self.task_count.assign(
            ops.where(
                seen,
                ops.minimum(self.task_count.value + 1.0, 2.0),
                self.task_count.value,
            )
        )
        self.count.assign(
            ops.where(
                ops.any(seen),
                ops.minimum(self.count.value + 1.0, 2.0),
                self.count.value,
            )
        )
        assign_zeros(self.current_mean, self.current_steps)

    def reset_state(self):
        if self.built:
            assign_zeros(
                self.current_mean,
                self.current_steps,
                self.latest,
                self.previous,
                self.count,
                self.task_count,
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "mode": self.mode,
                "ema_decay": self.ema_decay,
            }
        )
        return config


def _as_float(value, name):
    return as_float(value, name, "DynamicWeightAverage")
