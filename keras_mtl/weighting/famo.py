"""FAMO: Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

from keras_mtl.weighting._present_task_ops import masked_softmax
from keras_mtl.weighting._task_state_ops import (
    add_task_vector,
    assign_zeros,
    present_or_all,
)
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

# torch.optim.Adam defaults, used by the official code for the logits.
_BETA_1 = 0.9
_BETA_2 = 0.999
_ADAM_EPSILON = 1e-8


@register_strategy("famo")
class FAMO(LossWeighting):
    """Balances the decrease rates of the task log-losses in O(1) memory.

    Notation: T tasks, losses L_t, optional lower bounds L*_t (`min_losses`,
    default 0), eps = 1e-8, logits xi in R^T (initialised to 0) and task
    weights z = softmax(xi). Write D_t = L_t - L*_t + eps.

    Model update. The model is trained on

        c         = sum_t z_t / D_t                  (treated as a constant)
        objective = sum_t (z_t / c) * log D_t

    so the effective weight of task t's loss gradient is

        w_t = d objective / d L_t = z_t / (c * D_t),     sum_t w_t = 1,

    i.e. the update is a convex combination of the gradients of the
    log-losses, with the loss scales removed.

    Weight update. After the optimizer step the model recomputes the task
    losses on the same batch (forward pass only) and calls
    `update_after_step(losses, new_losses)`, which sets

        delta_t = log D_t(old) - log D_t(new)        (decrease of log L_t)
        g       = J_softmax(xi)^T delta = z * (delta - sum_j z_j delta_j)
        xi      <- Adam(xi, g; lr, weight_decay)

    Adam is torch's (the official code uses `torch.optim.Adam`), with
    betas (0.9, 0.999), eps 1e-8, bias correction and an L2 `weight_decay`
    added to the gradient (g + weight_decay * xi, not decoupled), and it
    *descends* on g: a task whose log-loss decreased more than the
    z-weighted average has g_t > 0, so its logit and weight go down, and a
    task that lagged gets more weight at the next step. The Adam state
    (xi, m, v, step) lives in this layer's variables; no Keras optimizer
    is involved.

    Defaults: `learning_rate=0.025` (official `w_lr` and LibMTL
    `FAMO_w_lr`), `weight_decay=1e-3` (LibMTL `FAMO_w_gamma` and the
    official QM9 script; the official class default is 1e-5, its CelebA
    script and `famo.py` example use 1e-2: tune it).

    Missing tasks: with a `task_mask` (see `Strategy`) everything is
    computed over the K present tasks alone: z = softmax of their logits
    (absent tasks get z_t = 0 and weight 0), c sums over them, the weights
    of the present tasks sum to 1, and `update_after_step(losses,
    new_losses, task_mask)` takes the Adam step on their logits only (the
    softmax Jacobian and the z-weighted mean of delta over the present
    tasks; weight decay on their logits). An absent task's logit, moments
    and Adam step count t_t (kept per task, `adam_steps`) are untouched,
    so its bias correction resumes where it stopped. The loss of an absent
    task (0) never enters a logarithm.

    Properties: stateful (xi and its Adam state); one backward pass plus one
    extra forward pass per step (`uses_post_step_losses = True`); invariant
    to loss scales (multiplying L_t, and L*_t, by a constant changes
    neither delta nor the direction of the model update, only its length
    through c; up to eps);
    the weights sum to 1, as in the official code, not T (equal weighting in
    this library sums to T): with the same learning rate the steps are
    about T times shorter than with `"ew"`.

    Args:
        learning_rate: positive float, Adam learning rate of the logits xi.
        weight_decay: non-negative float, L2 coefficient on xi added to its
            gradient (the official `gamma`).
        min_losses: None (all 0) or one float per task, the lower bounds
            L*_t of the losses (the official `set_min_losses`); known
            minima make the log-losses meaningful for losses that do not go
            to 0.
        epsilon: positive float added to L_t - L*_t inside the logarithms
            (official value 1e-8).
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.famo import FAMO
    >>> strategy = FAMO()
    >>> losses = keras.ops.convert_to_tensor([1.0, 4.0])
    >>> total, weights = strategy(losses)
    >>> [round(float(w), 3) for w in weights]
    [0.8, 0.2]
    >>> strategy.update_after_step(losses, keras.ops.convert_to_tensor([0.5, 3.9]))
    >>> [round(float(x), 3) for x in strategy.logits.numpy()]
    [-0.025, 0.025]

    References:
        Bo Liu, Yihao Feng, Peter Stone, Qiang Liu. "FAMO: Fast Adaptive
        Multitask Optimization". NeurIPS 2023. arXiv:2306.03792. Official
        code: https://github.com/Cranial-XIX/FAMO (`methods/weight_methods.py`,
        class `FAMO`, and the stand-alone `famo.py`); also in LibMTL
        (median-research-group/LibMTL, `LibMTL/weighting/FAMO.py`).

    Note:
        The official code keeps the previous losses inside the object; here
        the model passes both loss vectors to `update_after_step`, inside the
        same compiled step. L_t - L*_t is clipped at 0 before eps is added,
        so a loss below its declared minimum gives log(eps) instead of NaN.
        The official code also clips the shared gradient norm at `max_norm`
        = 1; that is a property of the training loop (use the optimizer's
        `clipnorm`), not of this strategy.
    """

    stateful = True
    uses_post_step_losses = True
    supports_missing_tasks = True

    def __init__(
        self,
        learning_rate=0.025,
        weight_decay=1e-3,
        min_losses=None,
        epsilon=1e-8,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.weight_decay = _non_negative("weight_decay", weight_decay)
        self.epsilon = _positive("epsilon", epsilon)
        self.min_losses = _validate_min_losses(min_losses)

    def build(self, input_shape):
        super().build(input_shape)
        num_tasks = self.num_tasks
        if self.min_losses is not None and len(self.min_losses) != num_tasks:
            raise ValueError(
                f"FAMO has {len(self.min_losses)} `min_losses` but is used with "
                f"{num_tasks} tasks."
            )
        self.logits = add_task_vector(self, "logits")
        self.adam_m = add_task_vector(self, "adam_m")
        self.adam_v = add_task_vector(self, "adam_v")
        # Adam's step count t of each logit (its bias corrections): per task,
        # since an absent task's logit and moments do not move.
        self.adam_steps = add_task_vector(self, "adam_steps", dtype="int32")

    @property
    def adam_step(self):
        """The number of logit updates so far: the largest entry of
        `adam_steps` (every entry when no task was ever absent)."""
        return ops.max(self.adam_steps.value)

    # --- Math -----------------------------------------------------------

    def _log_gap(self, losses):
        """log(L - L* + eps), with L - L* clipped at 0."""
        losses = ops.cast(losses, self.compute_dtype)
        if self.min_losses is not None:
            losses = losses - ops.convert_to_tensor(self.min_losses, losses.dtype)
        return ops.log(ops.maximum(losses, 0.0) + self.epsilon)

    def call(self, losses, training=True, task_mask=None):
        self._check_num_tasks(losses)
        present = present_or_all(task_mask, self.num_tasks)
        z = masked_softmax(ops.convert_to_tensor(self.logits.value), present)
        # An absent task's loss (0) never reaches a logarithm.
        safe = ops.where(present, losses, ops.ones_like(losses))
        log_gap = ops.where(present, self._log_gap(safe), 0.0)
        # 1 / D_t
        inverse_gap = ops.stop_gradient(ops.where(present, ops.exp(-log_gap), 0.0))
        c = ops.sum(z * inverse_gap)
        c = ops.where(ops.any(present), c, 1.0)  # no task present
        objective = ops.sum(z / c * log_gap)
        weights = z * inverse_gap / c
        return objective, ops.stop_gradient(weights)

    def update_after_step(self, losses, new_losses, task_mask=None):
        """One Adam step on the logits from the losses before and after the
        model update (same batch); with `task_mask`, on the logits of the
        present tasks only."""
        if not self.built:
            raise ValueError(
                "FAMO.update_after_step() was called before the strategy was "
                "built; call the strategy on the task losses first."
            )
        self._check_num_tasks(losses)
        self._check_num_tasks(new_losses, what="new_losses")
        xi = ops.convert_to_tensor(self.logits.value)
        present = present_or_all(task_mask, self.num_tasks)
        old = ops.where(present, losses, ops.ones_like(losses))
        new = ops.where(present, new_losses, ops.ones_like(new_losses))
        delta = ops.where(present, self._log_gap(old) - self._log_gap(new), 0.0)
        z = masked_softmax(xi, present)
        delta = ops.stop_gradient(delta)
        grad = z * (delta - ops.sum(z * delta)) + self.weight_decay * xi
        step = self.adam_steps.value + ops.cast(present, "int32")
        # At least 1: an absent task's (unused) bias correction stays finite.
        t = ops.cast(ops.maximum(step, 1), xi.dtype)
        m = _BETA_1 * self.adam_m.value + (1.0 - _BETA_1) * grad
        v = _BETA_2 * self.adam_v.value + (1.0 - _BETA_2) * ops.square(grad)
        # 1 - beta^t as -expm1(t log beta): exact to float32 precision even
        # for beta_2 = 0.999 (1 - 0.999 in float32 is off by 1e-5).
        m_hat = m / -ops.expm1(t * math.log(_BETA_1))
        v_hat = v / -ops.expm1(t * math.log(_BETA_2))
        new_xi = xi - self.learning_rate * m_hat / (ops.sqrt(v_hat) + _ADAM_EPSILON)
        # An absent task's logit and moments stay as they were.
        self.logits.assign(ops.where(present, new_xi, xi))
        self.adam_m.assign(ops.where(present, m, self.adam_m.value))
        self.adam_v.assign(ops.where(present, v, self.adam_v.value))
        self.adam_steps.assign(step)

    def reset_state(self):
        if self.built:
            assign_zeros(self.logits, self.adam_m, self.adam_v, self.adam_steps)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay,
                "min_losses": None
                if self.min_losses is None
                else list(self.min_losses),
                "epsilon": self.epsilon,
            }
        )
        return config


def _as_float(name, value):
    if isinstance(value, bool):
        value = float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"FAMO `{name}` must be a float, got {name}={value!r}."
        ) from None


def _positive(name, value):
    number = _as_float(name, value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(
            f"FAMO `{name}` must be a positive finite float, got {name}={value!r}."
        )
    return number


def _non_negative(name, value):
    number = _as_float(name, value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(
            f"FAMO `{name}` must be a non-negative finite float, got {name}={value!r}."
        )
    return number


def _validate_min_losses(min_losses):
    if min_losses is None:
        return None
    if not isinstance(min_losses, Sequence) or isinstance(min_losses, str):
        raise ValueError(
            "FAMO `min_losses` must be None or a sequence of floats, got "
            f"min_losses={min_losses!r}."
        )
    values = [_as_float("min_losses", v) for v in min_losses]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(
            "FAMO `min_losses` must be a non-empty sequence of finite floats, "
            f"got min_losses={min_losses!r}."
        )
    return values
