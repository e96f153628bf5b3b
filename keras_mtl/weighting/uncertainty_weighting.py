"""Uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from keras import ops

from keras_mtl.weighting._task_state_ops import LearnedTaskScales, present_or_all
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

_TASK_TYPES = ("regression", "classification")
# Factor c_t in front of exp(-s_t) * L_t for each task type.
_FACTORS = {"regression": 0.5, "classification": 1.0}


@register_strategy("uw", "uncertainty", "uncertainty_weighting")
class UncertaintyWeighting(LearnedTaskScales, LossWeighting):
    """Weights task losses by learned homoscedastic uncertainties.

    Each task t owns a learnable log-variance s_t = log sigma_t^2, trained
    by the model's optimizer together with the network. The objective is

        regression:      0.5 * exp(-s_t) * L_t + 0.5 * s_t
        classification:        exp(-s_t) * L_t + 0.5 * s_t
        objective = sum_t term_t

    (the Gaussian and the temperature-scaled softmax likelihoods of the
    paper, with log sigma_t written as s_t / 2). Writing c_t = 0.5 for
    regression and c_t = 1 for classification, the effective weight of the
    task's loss gradient, reported as `weights`, is

        w_t = d objective / d L_t = c_t * exp(-s_t).

    For fixed losses, the objective is minimised over s_t at
    exp(s_t) = 2 c_t L_t, i.e. exp(s_t) = L_t (regression) or 2 L_t
    (classification), where in both cases w_t = 1 / (2 L_t): at the optimum
    every task contributes the gradient of 0.5 * log L_t, so uncertainty
    weighting adapts to a rescaling of a task's loss.

    With `task_types=None` every task uses the regression form
    `L_t / (2 exp(s_t)) + s_t / 2`, the convention of LibMTL (`UW.py`),
    which also initialises s_t = -0.5 (`init=-0.5`, so w_t = 0.82 at the
    start).

    Properties: stateful (the trainable s, `reset_state()` restores
    `init`), one backward pass, approximately invariant to loss scaling
    once s has adapted. The objective may be negative (s_t < 0).

    Missing tasks: with a `task_mask` (a model compiled with
    `missing_labels`), the objective is the sum of the terms of the present
    tasks only, so an absent task contributes neither its loss nor its
    regulariser 0.5 * s_t: its s_t receives a zero gradient and its weight
    is 0. The present tasks' objective, weights and s-gradients are those
    of the method built for them alone. s is per-task state: the model puts
    back an absent task's s_t after the step (the optimizer's momentum would
    otherwise still move it).

    Args:
        task_types: None (every task uses the regression form, as LibMTL),
            a sequence of `"regression"` / `"classification"` in the model's
            task order, or a dict `{task_name: type}` naming every task
            (resolved with the task names the model sets through
            `set_task_names`).
        init: the initial value of every s_t (float), or a sequence of one
            float per task. Default -0.5 (LibMTL). The authors' follow-up
            code (mtcrawshaw/meta) uses s_t = -log(2 w0_t) to start from
            initial weights w0_t.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.uncertainty_weighting import (
    ...     UncertaintyWeighting)
    >>> strategy = UncertaintyWeighting(init=0.0)
    >>> total, weights = strategy(keras.ops.convert_to_tensor([1.0, 3.0]))
    >>> float(total), np.round(keras.ops.convert_to_numpy(weights), 3).tolist()
    (2.0, [0.5, 0.5])

    References:
        Alex Kendall, Yarin Gal, Roberto Cipolla. "Multi-Task Learning Using
        Uncertainty to Weigh Losses for Scene Geometry and Semantics". CVPR
        2018. arXiv:1705.07115. No official code; LibMTL
        (median-research-group/LibMTL, `LibMTL/weighting/UW.py`) is the
        reference for the default convention.

    Note:
        The paper's classification form relies on an approximation of the
        softmax likelihood with a temperature; like every implementation we
        know of, the task loss L_t is used as given (it is not recomputed
        with scaled logits). The learned s_t is a trainable variable of this
        layer; the model's optimizer must include the strategy's
        `trainable_variables` in its update.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, task_types=None, init=-0.5, **kwargs):
        super().__init__(**kwargs)
        self.task_types = _validate_task_types(task_types)
        self.init = _validate_init(init)
        self._resolved_types = None

    # --- Task binding ---------------------------------------------------

    def set_task_names(self, task_names):
        super().set_task_names(task_names)
        names = list(self.task_names)
        if isinstance(self.task_types, dict):
            missing = sorted(set(names) - set(self.task_types))
            extra = sorted(set(self.task_types) - set(names))
            if missing or extra:
                raise ValueError(
                    "UncertaintyWeighting `task_types` names tasks "
                    f"{sorted(self.task_types)} but the model's tasks are "
                    f"{names}: missing {missing}, unknown {extra}."
                )
        elif isinstance(self.task_types, list) and len(self.task_types) != len(names):
            raise ValueError(
                f"UncertaintyWeighting has {len(self.task_types)} `task_types` "
                f"but the model has {len(names)} tasks {names}."
            )

    def build(self, input_shape):
        super().build(input_shape)
        num_tasks = self.num_tasks
        if self.task_types is None:
            types = ["regression"] * num_tasks
        elif isinstance(self.task_types, dict):
            if self.task_names is None:
                raise ValueError(
                    "UncertaintyWeighting with a dict of `task_types` needs "
                    "the task names: compile it with a MultiTaskModel (which "
                    "calls set_task_names), or pass a list."
                )
            types = [self.task_types[name] for name in self.task_names]
        else:
            types = list(self.task_types)
        if len(types) != num_tasks:
            raise ValueError(
                f"UncertaintyWeighting has {len(types)} `task_types` but is "
                f"used with {num_tasks} tasks."
            )
        self.log_variances = self._add_task_scales("log_variances")
        self._resolved_types = types
        self._factors = [_FACTORS[t] for t in types]

    # --- Math -----------------------------------------------------------

    def call(self, losses, training=True, task_mask=None):
        self._check_num_tasks(losses)
        s = ops.cast(self.log_variances, losses.dtype)
        factors = ops.convert_to_tensor(self._factors, dtype=losses.dtype)
        scale = factors * ops.exp(-s)
        terms = scale * losses + 0.5 * s
        present = present_or_all(task_mask, self.num_tasks)
        return self._present_objective(terms, scale, present)

    def reset_state(self):
        self._reset_task_scales(self.log_variances)

    def get_config(self):
        config = super().get_config()
        task_types = self.task_types
        if isinstance(task_types, dict):
            task_types = dict(task_types)
        elif isinstance(task_types, list):
            task_types = list(task_types)
        init = list(self.init) if isinstance(self.init, list) else self.init
        config.update({"task_types": task_types, "init": init})
        return config


def _validate_task_types(task_types):
    if task_types is None:
        return None

    def check(value):
        key = str(value).strip().lower() if isinstance(value, str) else value
        if key not in _TASK_TYPES:
            raise ValueError(
                "UncertaintyWeighting `task_types` entries must be one of "
                f"{_TASK_TYPES}, got {value!r} in task_types={task_types!r}."
            )
        return key

    if isinstance(task_types, Mapping):
        if not task_types:
            raise ValueError("UncertaintyWeighting `task_types` must not be empty.")
        return {str(k): check(v) for k, v in task_types.items()}
    if isinstance(task_types, Sequence) and not isinstance(task_types, str):
        if not task_types:
            raise ValueError("UncertaintyWeighting `task_types` must not be empty.")
        return [check(v) for v in task_types]
    raise ValueError(
        "UncertaintyWeighting `task_types` must be None, a sequence of "
        "'regression'/'classification' or a dict {task: type}, got "
        f"{task_types!r}."
    )


def _validate_init(init):
    if isinstance(init, Sequence) and not isinstance(init, str):
        values = [float(v) for v in init]
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError(
                "UncertaintyWeighting `init` must be a finite float or a "
                f"non-empty sequence of finite floats, got {init!r}."
            )
        return values
    try:
        value = float(init)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value):
        raise ValueError(
            f"UncertaintyWeighting `init` must be a finite float, got {init!r}."
        )
    return value
