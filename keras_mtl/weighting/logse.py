"""LogSE: the sum of log task losses (Ghasemi-Naraghi et al., J.UCS 2022)."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._task_state_ops import present_or_all
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy


@register_strategy("logse", "log_se", "log_sum")
class LogSE(LossWeighting):
    """Minimises the sum of the logarithms of the task losses.

    Kendall et al.'s per-task Gaussian likelihood term
    L_t / (2 sigma_t^2) + log sigma_t is minimised over sigma_t at
    sigma_t^2 = L_t; substituting that optimum back leaves
    0.5 * log L_t + constant. LogSE trains on this profile likelihood
    directly, so task uncertainty is modelled without any learnable
    parameter. For T tasks (the paper has two) the objective is

        objective = sum_t log(L_t + eps),

    whose gradient is sum_t grad L_t / (L_t + eps): the dynamic weights

        w_t = 1 / (L_t + eps)

    (reported as `weights`, the derivative of the objective with respect
    to L_t). The constant factor 0.5 is dropped.

    Properties: stateless, one backward pass, invariant to loss scaling:
    replacing L_t by c * L_t (c > 0) adds the constant log c to the
    objective and leaves every gradient unchanged (up to eps). This is the
    same as uncertainty weighting at the optimum of its sigma_t, without
    the lag of learning sigma_t.

    Missing tasks: with a `task_mask` (a model compiled with
    `missing_labels`), the objective is the sum over the present tasks
    only; an absent task (whose loss is 0) contributes no log(eps) term and
    gets weight 0. No state.

    Args:
        epsilon: eps > 0 added inside the log so that a zero loss gives a
            finite objective and weight. Default 1e-8 (the value LibMTL
            uses for the log losses of DB-MTL; the paper's value, if any,
            is unverified).
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.logse import LogSE
    >>> strategy = LogSE()
    >>> total, weights = strategy(keras.ops.convert_to_tensor([0.5, 4.0]))
    >>> round(float(total), 4), [round(float(w), 3) for w in weights]
    (0.6931, [2.0, 0.25])

    References:
        Faezeh Ghasemi-Naraghi, Ahmad Nickabadi, Saeed Bagheri Shouraki
        Safabakhsh. "LogSE: An Uncertainty-Based Multi-Task Loss Function
        for Learning Two Regression Tasks". Journal of Universal Computer
        Science 28(2):141-159, 2022. doi:10.3897/jucs.70549. No official
        code known.

    Note:
        Derived from the abstract and the paper's stated principle
        (methods.md A3): whether the paper takes the log of the batch sum
        or the mean of squared errors (a constant offset only), its eps,
        and its form for more than two tasks (here the same sum) are
        unverified. Task losses must be non-negative; a negative loss makes
        the log undefined (NaN).
    """

    supports_missing_tasks = True

    def __init__(self, epsilon=1e-8, **kwargs):
        super().__init__(**kwargs)
        try:
            epsilon = float(epsilon)
        except (TypeError, ValueError):
            epsilon = float("nan")
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(
                f"LogSE `epsilon` must be a finite number > 0, got {epsilon!r}."
            )
        self.epsilon = epsilon

    def call(self, losses, training=True, task_mask=None):
        self._check_num_tasks(losses)
        shifted = losses + ops.cast(self.epsilon, losses.dtype)
        present = present_or_all(task_mask, ops.shape(losses)[0])
        # An absent task's (zero) loss never reaches the log or the division.
        shifted = ops.where(present, shifted, 1.0)
        objective = ops.sum(ops.where(present, ops.log(shifted), 0.0))
        weights = ops.where(present, 1.0 / shifted, 0.0)
        return objective, ops.stop_gradient(weights)

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config
