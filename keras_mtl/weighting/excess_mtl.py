"""ExcessMTL: robust multi-task weighting by excess risks (He et al., ICML 2024)."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._present_task_ops import present_softmax
from keras_mtl.weighting._task_state_ops import (
    TaskStepCounts,
    add_task_vector,
    assign_zeros,
    gradient_width,
    present_or_all,
)
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Added to the accumulated squared gradients under the square root
# (official code and LibMTL ExcessMTL.py).
_CURVATURE_EPS = 1e-7
# Bound on the exponent of the multiplicative update, so that a task whose
# first excess-risk estimate was 0 cannot produce an infinite weight.
_MAX_EXPONENT = 1e30


@register_strategy("excess_mtl", "excessmtl", "excess")
class ExcessMTL(TaskStepCounts, GradientAggregation):
    """ExcessMTL: exponentiated-gradient weights on estimated excess risks.

    Notation: T tasks, g_t the gradient of task t on the shared parameters
    (row t of the `(T, P)` input), S_t the running sum of its squared
    gradients (elementwise, zero before the first step), w the task weights
    (1 before the first step).

    Each step estimates the excess risk of task t with a diagonal
    (Adagrad-style) approximation of the curvature:

        S_t  <- S_t + g_t^2
        H_t   = sqrt(S_t + 1e-7)                       (elementwise)
        e_t   = sum_p g_tp^2 / H_tp  (= g_t^T diag(H_t)^-1 g_t).

    At the first step the estimates are stored, e0 = e, and the weights stay
    1. At every later step the estimates are normalised by the first ones
    and the weights take an exponentiated-gradient (mirror ascent) step,
    renormalised to sum to T:

        r_t = e_t / e0_t
        w_t <- T * w_t exp(eta r_t) / sum_j w_j exp(eta r_j)
        update = sum_t w_t g_t        (with the new w).

    Tasks far from their optimum (large excess risk) thus gain weight,
    while tasks with a large but irreducible loss (noise) do not. The
    update has the scale of a sum of task gradients (sum_t w_t = T).

    Missing tasks: with a `task_mask` (see `Strategy`) an absent task (zero
    gradient row) gets weight 0 in the update, and its S_t, e0_t, w_t and
    step count (kept per task, `steps`) are untouched. e0_t is recorded at
    the task's first present step (the weights stay as they are while
    every present task is at its first step, as at the reference's first
    step). The exponentiated-gradient step runs over the K present tasks
    (softmax over them) and keeps the sum of their weights, so the stored
    weights keep summing to T and an absent task keeps its weight relative
    to the others:

        w_t <- (sum_{j present} w_j) * w_t exp(eta r_t)
               / sum_{j present} w_j exp(eta r_j)        (t present).

    The present weights are thus those of ExcessMTL run on the K present
    tasks alone up to one positive factor (that method renormalises them
    to sum to K; with weights learnt over all T tasks, that would rescale
    the present tasks against the absent ones at every partial step).

    Default `robust_step_size` eta = 1e-2, from LibMTL's `config.py` and the
    authors' fork of it (`--robust_step_size`).

    Properties: stateful (S `(T, P)`, e0 `(T,)`, w `(T,)` and the step
    count; `reset_state()` restores zero, zero, ones and 0), T backward
    passes, weights positive and summing to T, the ratio r_t is invariant
    to the scale of g_t. The returned weights are w.

    Args:
        robust_step_size: step size eta >= 0 of the exponentiated-gradient
            update. Default 1e-2.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.excess_mtl import ExcessMTL
    >>> strategy = ExcessMTL(robust_step_size=1.0)
    >>> grads = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> keras.ops.convert_to_numpy(strategy.aggregate(grads)).tolist()
    [1.0, 1.0]
    >>> grads = np.array([[2.0, 0.0], [0.0, 1.0]], "float32")
    >>> update = strategy.aggregate(grads)
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [2.987, 0.506]

    References:
        Yifei He, Shiji Zhou, Guojun Zhang, Hyokun Yun, Yi Xu, Belinda Zeng,
        Trishul Chilimbi, Han Zhao. "Robust Multi-Task Learning with Excess
        Risks". ICML 2024. arXiv:2402.02009. Official code:
        yifei-he/ExcessMTL (`LibMTL/LibMTL/weighting/ExcessMTL.py`), ported
        to LibMTL as `LibMTL/weighting/ExcessMTL.py`.

    Note:
        Follows the official code step for step (S updated before the
        estimates, the first step only records e0, weights multiplied by
        exp(eta r) and renormalised to T). The multiplicative update is
        computed as T * softmax(log w + eta r), which is the same quantity
        without overflow. Where the reference would divide by a zero first
        estimate (a task whose first gradient was zero) and produce NaN,
        the ratio is taken as 0; the exponent is also bounded by 1e30. The
        reference's representation-gradient mode sums the gradients over the
        batch before estimating; the `(T, P)` input has no batch axis, so
        only parameter gradients are supported.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, robust_step_size=1e-2, **kwargs):
        super().__init__(**kwargs)
        robust_step_size = float(robust_step_size)
        if not (math.isfinite(robust_step_size) and robust_step_size >= 0.0):
            raise ValueError(
                "ExcessMTL `robust_step_size` must be finite and >= 0, got "
                f"{robust_step_size!r}."
            )
        self.robust_step_size = robust_step_size

    def build(self, input_shape):
        super().build(input_shape)
        self.grad_sq_sum = self.add_weight(
            shape=(self.num_tasks, gradient_width(self, input_shape)),
            initializer="zeros",
            trainable=False,
            name="grad_sq_sum",
            task_axis=0,
        )
        self.initial_excess = add_task_vector(self, "initial_excess")
        self.loss_weight = add_task_vector(self, "loss_weight", initializer="ones")
        # The number of steps each task took part in: e0_t is recorded at the
        # task's first one, which with missing tasks may come late.
        self.steps = self._add_task_steps()

    def reset_state(self):
        assign_zeros(self.grad_sq_sum, self.initial_excess)
        self.loss_weight.assign(ops.ones_like(self.loss_weight.value))
        assign_zeros(self.steps)

    def excess_risks(self, grads, grad_sq_sum):
        """Returns the `(T,)` estimates e_t from gradients and the new S."""
        curvature = ops.sqrt(grad_sq_sum + _CURVATURE_EPS)
        return ops.sum(ops.square(grads) / curvature, axis=1)

    def call(self, grads, losses=None, training=True, task_mask=None):
        self._check_num_tasks(grads, "gradients")
        dtype = grads.dtype
        present = present_or_all(task_mask, self.num_tasks)
        old_sq_sum = ops.cast(self.grad_sq_sum, dtype)
        grad_sq_sum = ops.where(
            present[:, None], old_sq_sum + ops.square(grads), old_sq_sum
        )
        excess = self.excess_risks(grads, grad_sq_sum)
        first = ops.equal(self.steps, 0)
        initial = ops.where(
            ops.logical_and(first, present),
            excess,
            ops.cast(self.initial_excess, dtype),
        )
        positive = ops.logical_and(initial > 0, present)
        ratio = ops.where(
            positive,
            excess / ops.where(positive, initial, ops.ones_like(initial)),
            ops.zeros_like(excess),
        )
        exponent = ops.minimum(self.robust_step_size * ratio, _MAX_EXPONENT)
        old_weight = ops.cast(self.loss_weight, dtype)
        if self.num_tasks == 1:  # a single weight normalised to sum to T = 1
            new_weight = ops.ones_like(old_weight)
        else:
            # The step on the present weights only, keeping their sum (and
            # so the total T): see "Missing tasks". Without a mask, kept = T.
            safe = ops.where(present, old_weight, ops.ones_like(old_weight))
            logits = ops.where(present, ops.log(safe) + exponent, 0.0)
            kept = self.num_tasks - ops.sum(ops.where(present, 0.0, old_weight))
            kept = ops.where(
                kept > 0.0, kept, ops.sum(ops.where(present, old_weight, 0.0))
            )
            new_weight = ops.where(
                present, kept * present_softmax(logits, present), old_weight
            )
        # Only record, as the reference's first step, while every present
        # task is at its first step.
        recording = ops.all(ops.logical_or(first, ops.logical_not(present)))
        weight = ops.where(recording, old_weight, new_weight)
        used = ops.where(present, weight, 0.0)
        update = ops.matmul(used[None, :], grads)[0]
        if training:
            self.grad_sq_sum.assign(grad_sq_sum)
            self.initial_excess.assign(initial)
            self.loss_weight.assign(weight)
            self.steps.assign(self.steps + ops.cast(present, "int32"))
        return update, used

    def head_gradient_scales(self, losses, weights):
        """Heads get w_t times their task's gradient: the reference code
        back-propagates sum_t w_t L_t through the whole network."""
        return ops.cast(weights, "float32")

    def get_config(self):
        config = super().get_config()
        config["robust_step_size"] = self.robust_step_size
        return config
