"""Geometric loss strategy (Chennupati et al., CVPR Workshops 2019)."""

from __future__ import annotations

from keras import ops

from keras_mtl.weighting._present_task_ops import present_count
from keras_mtl.weighting._task_state_ops import present_or_all
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

# Losses are floored at this value before taking logarithms, so that a zero
# loss gives finite (if huge) numbers instead of -inf / NaN.
_FLOOR = 1e-30


@register_strategy("gls", "geometric", "geometric_loss")
class GeometricLossStrategy(LossWeighting):
    """Minimises the geometric mean of the task losses.

    With T tasks and losses L_1, ..., L_T > 0 the objective is

        objective = (prod_t L_t)^(1/T) = exp(mean_t log L_t)

    and the effective weight of task t's loss gradient is

        w_t = d objective / d L_t = objective / (T * L_t).

    The objective is computed in log space, `exp(mean(log L))`, which
    avoids the overflow / underflow of the product for many tasks or large
    losses; losses are floored at 1e-30 before the logarithm so that a zero
    loss gives finite values.

    Because log(objective) = mean_t log L_t, the gradient is the objective
    times the gradient of the mean log-loss: each task's loss gradient is
    divided by its own loss.
    Multiplying one task's loss by a constant c > 0 therefore multiplies the
    whole model gradient by c^(1/T) and leaves its direction unchanged (the
    method is invariant to loss scales up to the step size). Tasks with a
    small loss receive a large weight.

    Properties: stateless, one backward pass, no hyperparameters. The
    weights are not constants: the objective is differentiated as a whole
    (this is what `call` returns), which is the same as weighting the loss
    gradients by `w` above.

    Args:
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.geometric_loss_strategy import (
    ...     GeometricLossStrategy)
    >>> strategy = GeometricLossStrategy()
    >>> total, weights = strategy(keras.ops.convert_to_tensor([1.0, 4.0]))
    >>> round(float(total), 4), [round(float(w), 3) for w in weights]
    (2.0, [1.0, 0.25])

    References:
        Sumanth Chennupati, Ganesh Sistu, Senthil Yogamani, Samir A Rawashdeh.
        "MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss
        Strategy for Multi-Task Learning". CVPR Workshops (WAD) 2019.
        arXiv:1904.08492. No official code; LibMTL
        (median-research-group/LibMTL, `LibMTL/weighting/GLS.py`) is the
        reference implementation.

    Note:
        LibMTL forms the product of the losses directly; the log-space form
        used here has the same value and gradient for positive losses but
        does not overflow. LibMTL logs `L_t / (T * prod_j L_j)` as the task
        weights, which is not the derivative of its objective; the weights
        here are the derivative (the model update is the same, since both
        differentiate the geometric mean). A zero loss (impossible for the
        positive losses the method assumes) is treated as 1e-30: its task
        then gets a very large weight and the other tasks a weight near 0,
        as in the limit.
    """

    supports_missing_tasks = True

    def call(self, losses, training=True, task_mask=None):
        self._check_num_tasks(losses)
        losses = ops.cast(losses, self.compute_dtype)
        present = present_or_all(task_mask, ops.shape(losses)[0])
        # The mean of log L_t over the K present tasks (K = T without a
        # mask); log 1 = 0 for the absent tasks.
        log_losses = ops.log(ops.where(present, ops.maximum(losses, _FLOOR), 1.0))
        count = present_count(present, losses.dtype)
        safe_count = ops.maximum(count, 1.0)
        mean_log = ops.sum(log_losses) / safe_count
        objective = ops.where(count > 0, ops.exp(mean_log), 0.0)
        # objective / (K * L_t), formed in log space so it cannot overflow
        # before the division.
        weights = ops.where(present, ops.exp(mean_log - log_losses) / safe_count, 0.0)
        return objective, ops.stop_gradient(weights)
