"""IMTL-L, the loss-balancing half of Impartial MTL (Liu et al., ICLR 2021)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

from keras_mtl.weighting._task_state_ops import LearnedTaskScales, present_or_all
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy


@register_strategy("imtl_l", "imtl_loss")
class IMTLL(LearnedTaskScales, LossWeighting):
    """Learns loss scales that make every scaled task loss equal to 1.

    Each task t owns a learnable scale parameter s_t (initialised to 0),
    trained by the model's optimizer together with the network. The
    objective is

        objective = sum_t (exp(s_t) * L_t - s_t).

    The network receives the gradient of the scaled losses, so the effective
    weight of task t's loss gradient is

        w_t = d objective / d L_t = exp(s_t),

    and s receives d objective / d s_t = exp(s_t) * L_t - 1, which vanishes
    exactly when the scaled loss exp(s_t) * L_t equals 1. At that point the
    weights are w_t = 1 / L_t: every task contributes the gradient of
    log L_t, whatever the scale of its loss (the "impartial" loss balance;
    the -s_t term keeps s from running to -inf, which would make every
    scaled loss 0).

    Compared with uncertainty weighting (`"uw"`: 0.5 exp(-s) L + 0.5 s, whose
    optimum gives w = 1 / (2 L)), IMTL-L targets the same 1 / L balance; the
    paper presents it as the loss-scale part of IMTL, to be combined with
    the gradient-direction part IMTL-G (LibMTL's "IMTL" applies both: it
    feeds exp(s_t) L_t - s_t to IMTL-G).

    Properties: stateful (the trainable s; `reset_state()` restores
    `init`), one backward pass, approximately invariant to loss scales once
    s has adapted (multiplying L_t by c shifts the optimum s_t by -log c and
    leaves the scaled loss and the model gradient unchanged). The objective
    may be negative.

    Missing tasks: with a `task_mask` (a model compiled with
    `missing_labels`), the objective sums the terms exp(s_t) L_t - s_t of
    the present tasks only: an absent task's s_t gets a zero gradient (its
    -s_t term is left out, else s_t would grow without bound while the task
    is absent) and its weight is 0. The present tasks' objective, weights
    and s-gradients are those of the method built for them alone. s is
    per-task state: the model puts back an absent task's s_t after the step.

    Args:
        init: initial value of every s_t (float, default 0 as in the paper
            and LibMTL), or a sequence of one float per task.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.imtl_l import IMTLL
    >>> strategy = IMTLL()
    >>> total, weights = strategy(keras.ops.convert_to_tensor([0.5, 4.0]))
    >>> float(total), keras.ops.convert_to_numpy(weights).tolist()
    (4.5, [1.0, 1.0])

    References:
        Liyang Liu, Yi Li, Zhanghui Kuang, Jing-Hao Xue, Yimin Chen, Wenming
        Yang, Qingmin Liao, Wayne Zhang. "Towards Impartial Multi-task
        Learning". ICLR 2021. https://openreview.net/forum?id=IMPnRXEWpvr.
        No official code; LibMTL (median-research-group/LibMTL,
        `LibMTL/weighting/IMTL.py`, `loss_scale` initialised to 0 as an
        `nn.Parameter` trained by the model's optimizer).

    Note:
        The scale s is a trainable variable of this layer: the model's
        optimizer must include the strategy's `trainable_variables` (as for
        uncertainty weighting), with the model's learning rate. The paper
        remarks that s could be set in closed form (s_t = -log L_t) but is
        learned by gradient descent for a smoother balance (recalled, not
        re-checked against the PDF). Losses must be positive: with L_t = 0
        the objective decreases without bound in s_t.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, init=0.0, **kwargs):
        super().__init__(**kwargs)
        self.init = _validate_init(init)

    def build(self, input_shape):
        super().build(input_shape)
        self.loss_scales = self._add_task_scales("loss_scales")

    def call(self, losses, training=True, task_mask=None):
        self._check_num_tasks(losses)
        losses = ops.cast(losses, self.compute_dtype)
        s = ops.convert_to_tensor(self.loss_scales)
        scale = ops.exp(s)
        terms = scale * losses - s
        present = present_or_all(task_mask, self.num_tasks)
        return self._present_objective(terms, scale, present)

    def reset_state(self):
        self._reset_task_scales(self.loss_scales)

    def get_config(self):
        config = super().get_config()
        config["init"] = list(self.init) if isinstance(self.init, list) else self.init
        return config


def _validate_init(init):
    if isinstance(init, Sequence) and not isinstance(init, str):
        try:
            values = [float(v) for v in init]
        except (TypeError, ValueError):
            values = []
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError(
                "IMTLL `init` must be a finite float or a non-empty sequence "
                f"of finite floats, got init={init!r}."
            )
        return values
    try:
        value = float(init)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(init, bool) or not math.isfinite(value):
        raise ValueError(f"IMTLL `init` must be a finite float, got init={init!r}.")
    return value
