"""Smooth Tchebycheff scalarization (Lin et al., ICML 2024)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from keras import ops

from keras_mtl.weighting._present_task_ops import (
    masked_logsumexp,
    masked_softmax,
    present_count,
)
from keras_mtl.weighting._task_state_ops import (
    add_task_vector,
    assign_ones,
    assign_zeros,
    present_or_all,
)
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

# Added inside the logarithms, as in LibMTL's STCH.py.
_LOG_EPSILON = 1e-20
# Lower bound of the normalisers (a task whose loss was exactly 0 during the
# normalisation epoch would otherwise divide by 0).
_MIN_NORMALIZER = 1e-12


@register_strategy("stch", "smooth_tchebycheff")
class SmoothTchebycheff(LossWeighting):
    """Minimises a smooth maximum of the (normalised) task losses.

    Notation: T tasks with losses L_t, a preference vector lambda (default
    all ones), an ideal point z (default 0) and a smoothing parameter
    mu > 0. The smooth Tchebycheff scalarization of objectives f_t is

        g_mu(f) = mu * log sum_t exp(lambda_t (f_t - z_t) / mu),

    a smooth upper bound of the Tchebycheff scalarization
    max_t lambda_t (f_t - z_t), with max <= g_mu <= max + mu log T; it tends
    to the maximum as mu -> 0; the paper shows that its minimisers are
    weakly Pareto optimal.

    The model is trained on T * g_mu(f) (the factor T, from LibMTL, makes
    the weights sum to T like equal weighting's when lambda = 1). The
    gradient combines the objectives' gradients with softmax weights p:

        p_t = softmax_t(lambda_t (f_t - z_t) / mu)
        d objective / d f_t = T * p_t * lambda_t.

    Objectives f_t (`normalize`):

    - `normalize=True` (default, LibMTL / official STCH_MTL): the losses are
      first divided by normalisers n_t and put in log scale,
      f_t = log(L_t / n_t + 1e-20), after a warm-up that follows LibMTL's
      `STCH.py`. With W = `warmup_epochs` and epochs counted from 0:
        epochs 0 .. W-1: objective = sum_t log(L_t + 1e-20);
        epoch W:         same objective, and the training losses of every
                         step are accumulated;
        after epoch W:   n_t = mean of task t's training losses over epoch W,
                         and the objective is T * g_mu(f).
      The epoch counter advances in `on_epoch_end()`, which the model calls
      at the end of every training epoch. The effective weight of L_t's
      gradient is then 1 / (L_t + 1e-20) during the warm-up and
      T p_t lambda_t / (L_t + 1e-20 n_t) afterwards.
    - `normalize=False`: f_t = L_t, no warm-up, objective T * g_mu(L) from
      the first step, weights w_t = T p_t lambda_t (summing to T when
      lambda = 1).

    Defaults: `mu=1.0` and `warmup_epochs=4` (LibMTL `STCH_mu`,
    `STCH_warmup_epoch`, as in the official STCH_MTL code); uniform
    preference and a zero ideal point (in log-normalised space, i.e. the
    normalised loss 1), as in LibMTL.

    Properties: stateful (epoch counter, loss sums, normalisers; nothing
    changes unless `training=True` or in `on_epoch_end`); one backward pass;
    with `normalize=True` invariant to loss scales after the warm-up (a
    scaled loss is divided by its scaled normaliser) and during it (log
    losses); focuses the update on the worst-off task as mu -> 0.

    Missing tasks: with a `task_mask` (a model compiled with
    `missing_labels`) and K present tasks, the objective is the method's
    over the present tasks alone,

        K * mu * log sum_{t present} exp(lambda_t (f_t - z_t) / mu),

    so p is the softmax over the present tasks and the factor is K instead
    of T; during the warm-up it is sum_{t present} log(L_t + 1e-20). Absent
    tasks get weight 0 and their zero loss never enters a logarithm. The
    normaliser n_t is the mean of task t's losses over the steps of epoch W
    in which it is present (`task_loss_count` counts them per task;
    `loss_count` counts the steps of epoch W); a task absent during the
    whole of epoch W keeps n_t = 1, the rule for an epoch without steps
    (its normalised objective is then log L_t). The epoch counter is
    shared. With no task present the objective is 0.

    Args:
        mu: positive float, the smoothing parameter.
        warmup_epochs: int >= 0, W above (used when `normalize=True`).
        preference: None (all ones) or one positive float per task, the
            preference vector lambda.
        ideal_point: None (all zeros) or one float per task, z above, in
            the space of f (log-normalised losses when `normalize=True`).
        normalize: bool, whether to use LibMTL's warm-up and log-normalised
            losses (True) or the raw losses (False).
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.smooth_tchebycheff import SmoothTchebycheff
    >>> strategy = SmoothTchebycheff(mu=0.1, normalize=False)
    >>> total, weights = strategy(keras.ops.convert_to_tensor([1.0, 1.5]))
    >>> round(float(total), 3), [round(float(w), 3) for w in weights]
    (3.001, [0.013, 1.987])

    References:
        Xi Lin, Xiaoyuan Zhang, Zhiyuan Yang, Fei Liu, Zhenkun Wang, Qingfu
        Zhang. "Smooth Tchebycheff Scalarization for Multi-Objective
        Optimization". ICML 2024. arXiv:2402.19078. Official code:
        https://github.com/Xi-L/STCH (`STCH_MTL/LibMTL/weighting/STCH.py`,
        defaults in `STCH_MTL/LibMTL/config.py`); also in LibMTL
        (median-research-group/LibMTL, `LibMTL/weighting/STCH.py`).

    Note:
        LibMTL subtracts the (detached) largest term before the
        log-sum-exp, which changes the reported objective by a constant but
        not its gradient; the value here is the unshifted T * g_mu (computed
        stably), so that it tends to T * max as mu -> 0. The normalisers are
        floored at 1e-12. The preference vector and the ideal point are
        extensions of the LibMTL code (which uses lambda = 1, z = 0) to the
        paper's general form. LibMTL reports weights of 1 for every task;
        the weights here are the true derivatives of the objective.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(
        self,
        mu=1.0,
        warmup_epochs=4,
        preference=None,
        ideal_point=None,
        normalize=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        mu_value = _as_float(mu)
        if not (math.isfinite(mu_value) and mu_value > 0):
            raise ValueError(
                "SmoothTchebycheff `mu` must be a positive finite float, got "
                f"mu={mu!r}."
            )
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, numbers.Integral)
            or warmup_epochs < 0
        ):
            raise ValueError(
                "SmoothTchebycheff `warmup_epochs` must be an int >= 0, got "
                f"warmup_epochs={warmup_epochs!r}."
            )
        if not isinstance(normalize, bool):
            raise ValueError(
                "SmoothTchebycheff `normalize` must be a bool, got "
                f"normalize={normalize!r}."
            )
        self.mu = mu_value
        self.warmup_epochs = int(warmup_epochs)
        self.preference = _float_list("preference", preference, positive=True)
        self.ideal_point = _float_list("ideal_point", ideal_point, positive=False)
        self.normalize = normalize

    def build(self, input_shape):
        super().build(input_shape)
        num_tasks = self.num_tasks
        for name in ("preference", "ideal_point"):
            values = getattr(self, name)
            if values is not None and len(values) != num_tasks:
                raise ValueError(
                    f"SmoothTchebycheff has {len(values)} `{name}` values but "
                    f"is used with {num_tasks} tasks."
                )
        self.epoch = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", trainable=False, name="epoch"
        )
        self.loss_sum = add_task_vector(self, "loss_sum")
        self.loss_count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="loss_count"
        )
        self.normalizers = add_task_vector(self, "normalizers", initializer="ones")
        self.task_loss_count = add_task_vector(self, "task_loss_count")

    # --- Math -----------------------------------------------------------

    def _vector(self, values, default, dtype):
        if values is None:
            return ops.full((self.num_tasks,), default, dtype=dtype)
        return ops.convert_to_tensor(values, dtype=dtype)

    def _tchebycheff(self, objectives, present):
        """K * g_mu(f) and its gradient K * p * lambda with respect to f,
        over the K `present` tasks (K = T without a mask)."""
        dtype = objectives.dtype
        preference = self._vector(self.preference, 1.0, dtype)
        ideal = self._vector(self.ideal_point, 0.0, dtype)
        scaled = preference * (objectives - ideal) / self.mu
        count = present_count(present, dtype)
        value = count * self.mu * masked_logsumexp(scaled, present)
        softmax = masked_softmax(ops.stop_gradient(scaled), present)
        return value, count * softmax * preference

    def call(self, losses, training=True, task_mask=None):
        self._check_num_tasks(losses)
        losses = ops.cast(losses, self.compute_dtype)
        present = present_or_all(task_mask, self.num_tasks)
        if not self.normalize:
            objective, weights = self._tchebycheff(losses, present)
            return objective, ops.stop_gradient(weights)

        if training:
            accumulate = ops.cast(
                ops.equal(self.epoch.value, self.warmup_epochs), losses.dtype
            )
            counted = accumulate * ops.cast(present, losses.dtype)
            self.loss_sum.assign_add(
                ops.where(present, accumulate * ops.stop_gradient(losses), 0.0)
            )
            self.task_loss_count.assign_add(counted)
            self.loss_count.assign_add(accumulate)

        normalizers = ops.convert_to_tensor(self.normalizers.value)
        # The normalised objective over the present tasks alone: an absent
        # task's (zero) loss is replaced by a value whose log is finite; its
        # terms are then left out.
        safe_losses = ops.where(present, losses, ops.ones_like(losses))

        def warm_up():
            logs = ops.log(safe_losses + _LOG_EPSILON)
            objective = ops.sum(ops.where(present, logs, 0.0))
            weights = ops.where(present, 1.0 / (safe_losses + _LOG_EPSILON), 0.0)
            return objective, weights

        def tchebycheff():
            objectives = ops.log(safe_losses / normalizers + _LOG_EPSILON)
            objective, grad = self._tchebycheff(objectives, present)
            weights = grad / (safe_losses + _LOG_EPSILON * normalizers)
            return objective, ops.where(present, weights, 0.0)

        # A cond (not a where) so that the branch not taken contributes no
        # gradient at all, not even 0 * inf.
        objective, weights = ops.cond(
            self.epoch.value <= self.warmup_epochs, warm_up, tchebycheff
        )
        return objective, ops.stop_gradient(weights)

    def on_epoch_end(self):
        if not self.built or not self.normalize:
            return
        count = ops.convert_to_tensor(self.task_loss_count.value)  # per task
        mean = self.loss_sum.value / ops.maximum(count, 1.0)
        mean = ops.where(count > 0, mean, ops.ones_like(mean))
        is_last_warmup_epoch = ops.equal(self.epoch.value, self.warmup_epochs)
        self.normalizers.assign(
            ops.where(
                is_last_warmup_epoch,
                ops.maximum(mean, _MIN_NORMALIZER),
                self.normalizers.value,
            )
        )
        self.epoch.assign_add(1)

    def reset_state(self):
        if self.built:
            self.epoch.assign(0)
            self.loss_count.assign(0.0)
            assign_zeros(self.loss_sum, self.task_loss_count)
            assign_ones(self.normalizers)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "mu": self.mu,
                "warmup_epochs": self.warmup_epochs,
                "preference": None
                if self.preference is None
                else list(self.preference),
                "ideal_point": None
                if self.ideal_point is None
                else list(self.ideal_point),
                "normalize": self.normalize,
            }
        )
        return config


def _as_float(value):
    if isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _float_list(name, values, positive):
    if values is None:
        return None
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(
            f"SmoothTchebycheff `{name}` must be None or a non-empty sequence of "
            f"floats, got {name}={values!r}."
        )
    numbers_ = [_as_float(v) for v in values]
    ok = all(math.isfinite(v) and (v > 0 or not positive) for v in numbers_)
    if not ok:
        kind = "positive finite" if positive else "finite"
        raise ValueError(
            f"SmoothTchebycheff `{name}` entries must be {kind} floats, got "
            f"{name}={values!r}."
        )
    return numbers_
