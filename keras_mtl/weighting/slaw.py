"""SLAW: Scaled Loss Approximate Weighting (Crawshaw and Kosecka, 2021)."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._argument_ops import as_float
from keras_mtl.weighting._task_state_ops import (
    add_task_vector,
    assign_zeros,
    present_or_all,
)
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

_WARMUPS = ("arithmetic", "none")


@register_strategy("slaw", "scaled_loss_approximate_weighting")
class SLAW(LossWeighting):
    """Weights tasks by the inverse of the running std of their losses.

    The ideal "scaled loss" weights w_t proportional to 1 / ||grad L_t||
    equalise the gradient magnitudes of the tasks but need T backward
    passes. SLAW estimates ||grad L_t|| by the standard deviation s_t of the
    task loss over recent steps, which costs nothing extra.

    Notation: T tasks, L_t the current batch loss of task t, n the number
    of training steps seen (this one included), beta the EMA decay,
    N0 = round(1 / (1 - beta)) (100 for beta = 0.99). At every training
    step, before the weights are formed (the current loss is included):

        b    = (n - 1) / n   if warmup == "arithmetic" and n <= N0
               beta          otherwise
        m_t <- b * m_t + (1 - b) * L_t            (running mean of L_t)
        q_t <- b * q_t + (1 - b) * L_t^2          (running mean of L_t^2)
        s_t  = sqrt(max(q_t - m_t^2, 0))
        w_t  = T * (1 / max(s_t, eps)) / sum_j (1 / max(s_j, eps)),

    with w_t = 1 at the first step (s undefined) or when any s_t is not
    finite. b = (n - 1) / n makes m and q exact arithmetic means during the
    first N0 steps, which removes the bias of EMAs started at zero; with
    `warmup="none"` the plain EMAs of the paper are used from the start.
    The weights sum to T and are constants for the model update.

    Implementation: instead of q_t the strategy stores the variance
    v_t = q_t - m_t^2, updated with the algebraically identical recursion
    v_t <- b * (v_t + (1 - b) * (L_t - m_t)^2) (m_t before its update).
    This avoids the cancellation of q - m^2 in float32 when a loss is large
    compared with its fluctuations.

    Defaults from the authors' code (mtcrawshaw/meta, branch slaw: class
    `CLAW` in `meta/train/loss.py`, `RunningStats` in
    `meta/utils/estimate.py`): beta = 0.99 (`ema_alpha`), eps = 1e-5
    (`EPSILON`), arithmetic warm-up for N0 steps.

    Missing tasks: with a `task_mask` (see `Strategy`) an absent task gets
    weight 0 and its statistics (n_t, m_t, v_t) are left untouched; the
    count n_t is kept per task, so a task's running means advance only in
    the steps where it is present, and its warm-up is its own. The weights
    of the K present tasks are those of SLAW on those tasks alone:

        w_t = K * (1 / max(s_t, eps)) / sum_{j present} (1 / max(s_j, eps)),

    summing to K, and all present weights are 1 while some present task has
    been seen fewer than 2 times (its s_t is undefined) or has a non-finite
    s_t.

    Properties: stateful (n, m, v), one backward pass, adapts to loss
    scaling: multiplying L_t by c multiplies s_t by c and so w_t by about
    1/c. On regression tasks with output scales sigma_t the weights
    approach w_t proportional to 1 / sigma_t^2.

    Args:
        beta: EMA decay in [0, 1). Default 0.99.
        epsilon: floor of the std, > 0. Default 1e-5.
        warmup: `"arithmetic"` (authors' code, default) or `"none"` (the
            paper's plain EMAs started at zero).
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.slaw import SLAW
    >>> slaw = SLAW()
    >>> for losses in ([1.0, 10.0], [3.0, 30.0], [1.0, 10.0]):
    ...     _, w = slaw(keras.ops.convert_to_tensor(losses))
    >>> [round(float(x), 3) for x in w]
    [1.818, 0.182]

    References:
        Michael Crawshaw, Jana Kosecka. "SLAW: Scaled Loss Approximate
        Weighting for Efficient Multi-Task Learning". arXiv:2109.08218,
        2021. Code: https://github.com/mtcrawshaw/meta (branch slaw).

    Note:
        When a std is not finite the reference keeps the previous weights;
        this strategy returns unit weights (the brief's rule; both agree
        before the first valid update). Outside training (`training=False`)
        the weights come from the stored statistics, without the current
        loss.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, beta=0.99, epsilon=1e-5, warmup="arithmetic", **kwargs):
        super().__init__(**kwargs)
        beta = _as_float(beta, "beta")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"SLAW `beta` must be in [0, 1), got {beta!r}.")
        epsilon = _as_float(epsilon, "epsilon")
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(
                f"SLAW `epsilon` must be a finite number > 0, got {epsilon!r}."
            )
        if warmup not in _WARMUPS:
            raise ValueError(
                f"SLAW `warmup` must be one of {_WARMUPS}, got {warmup!r}."
            )
        self.beta = beta
        self.epsilon = epsilon
        self.warmup = warmup
        #: Length of the arithmetic warm-up (the reference's ema_threshold).
        self.warmup_steps = round(1.0 / (1.0 - beta))

    def build(self, input_shape):
        super().build(input_shape)
        # One count per task: with missing tasks a task's running means
        # advance only in the steps where it is present.
        self.steps = add_task_vector(self, "steps")
        self.loss_mean = add_task_vector(self, "loss_mean")
        self.loss_variance = add_task_vector(self, "loss_variance")

    def _weights_from(self, steps, variance, dtype, present):
        std = ops.sqrt(ops.maximum(variance, 0.0))
        inverse = ops.where(present, 1.0 / ops.maximum(std, self.epsilon), 0.0)
        count = ops.sum(ops.cast(present, "float32"))
        total = ops.sum(inverse)
        weights = count * inverse / ops.where(total > 0.0, total, 1.0)
        absent = ops.logical_not(present)
        valid = ops.logical_and(
            ops.all(ops.logical_or(steps >= 2.0, absent)),
            ops.all(ops.logical_or(ops.isfinite(std), absent)),
        )
        weights = ops.where(valid, weights, ops.ones_like(weights))
        return ops.cast(weights, dtype)

    def compute_weights(self, losses, training=True, task_mask=None):
        present = present_or_all(task_mask, self.num_tasks)
        if not training:
            return self._weights_from(
                self.steps.value, self.loss_variance.value, losses.dtype, present
            )
        values = ops.cast(ops.stop_gradient(losses), "float32")
        steps = self.steps.value + 1.0
        if self.warmup == "arithmetic":
            decay = ops.where(
                steps <= float(self.warmup_steps), (steps - 1.0) / steps, self.beta
            )
        else:
            decay = ops.convert_to_tensor(self.beta, dtype="float32")
        delta = values - self.loss_mean.value
        mean = self.loss_mean.value + (1.0 - decay) * delta
        variance = decay * (
            self.loss_variance.value + (1.0 - decay) * ops.square(delta)
        )
        # An absent task's statistics and count stay as they were.
        mean = ops.where(present, mean, self.loss_mean.value)
        variance = ops.where(present, variance, self.loss_variance.value)
        steps = ops.where(present, steps, self.steps.value)
        self.loss_mean.assign(mean)
        self.loss_variance.assign(variance)
        # Only "first step" and "still warming up" are read: cap the count.
        self.steps.assign(ops.minimum(steps, float(self.warmup_steps) + 2.0))
        return self._weights_from(steps, variance, losses.dtype, present)

    def reset_state(self):
        if self.built:
            assign_zeros(self.steps, self.loss_mean, self.loss_variance)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"beta": self.beta, "epsilon": self.epsilon, "warmup": self.warmup}
        )
        return config


def _as_float(value, name):
    return as_float(value, name, "SLAW")
