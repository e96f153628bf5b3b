"""Dynamic Task Prioritization (Guo, Haque, Huang, Yeung, Fei-Fei, ECCV 2018)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from keras import ops

from keras_mtl.weighting._argument_ops import as_float
from keras_mtl.weighting._task_state_ops import add_task_vector, assign_zeros
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy


@register_strategy("dtp", "dynamic_task_prioritization")
class DynamicTaskPrioritization(LossWeighting):
    """Gives more weight to tasks whose key performance indicator is low.

    Notation: T tasks; kappa_t in [0, 1] the key performance indicator
    (KPI) of task t, higher is better (an accuracy, or any score mapped to
    [0, 1]); kbar_t its exponential moving average; gamma_t >= 0 the
    task-level focusing parameter. At every training step

        kbar_t <- alpha * kappa_t + (1 - alpha) * kbar_t   (kbar_t = kappa_t
                                                            at the first step)
        k_t     = clip(kbar_t, epsilon, max_kpi)
        w_t     = -(1 - k_t)^gamma_t * log(k_t),

    and the objective is sum_t w_t L_t with the weights held constant (the
    task-level focal loss of the paper). w_t is decreasing in the KPI and
    tends to 0 as the KPI tends to 1: tasks that are already good are
    de-prioritised. The weights are not normalised (as in the paper), so
    the overall step size shrinks as every task improves.

    The KPI values come from the model: the strategy's `kpi_metric`
    attribute names a per-task metric (for example `"accuracy"`), and
    `MultiTaskModel` passes that metric's running values as
    `call(losses, kpis=...)`, a `(T,)` tensor.

    Defaults and their sources (the paper's values could not be checked;
    see the Note):

    - `gamma=1.0`: methods.md gives 1 to 2. With gamma = 2 (the focal-loss
      default of Lin et al.) a task at 80% accuracy already gets weight
      0.009, a fifth of its gamma = 1 weight (0.045), so training KPIs that
      routinely exceed 0.9 would nearly switch tasks off; gamma = 1 is the
      milder choice, and the plain sum of the two focal factors.
    - `alpha=0.1`: a slow EMA, since the running metric the model passes is
      already an average over the epoch so far; in the paper's notation
      this is the weight of the newest KPI.
    - `epsilon=1e-3`, `max_kpi=0.99`: the KPI is clipped before the log so
      that w stays finite at kappa = 0 (w <= 6.9 with gamma = 1) and, with
      max_kpi < 1, a perfect task keeps a tiny positive weight (1e-4 at
      max_kpi = 0.99). A third-party port clips to [0.1, 0.99].
    - `warmup_steps=0`: with a positive value the weights are 1 for the
      first `warmup_steps` training steps while kbar is already tracked.

    Missing tasks: with a `task_mask` (see `Strategy`) an absent task gets
    weight 0 and its KPI (the metric received no sample of it) is not
    read: kbar_t and its step count stay as they were. The step count is
    kept per task, so a task's first present step initialises its kbar_t
    and `warmup_steps` counts the steps in which the task was present. The
    weights of the present tasks are not normalised, so they are exactly
    those of DTP on the present tasks alone.

    Properties: stateful (kbar and a step count), one backward pass, needs
    a per-task KPI metric, not invariant to loss scaling.

    Args:
        kpi: name of the per-task metric used as KPI; stored as the
            instance attribute `kpi_metric` for the model. Required (there
            is no loss-based fallback: a loss is not bounded in [0, 1] and
            its scale would change the weights).
        gamma: focusing parameter, a float >= 0 or a sequence of one per
            task (the paper allows a gamma_t per task). Default 1.0.
        alpha: EMA weight of the newest KPI, in (0, 1]. Default 0.1;
            alpha = 1 uses the current KPI only.
        epsilon: lower clip of the KPI, in (0, max_kpi). Default 1e-3.
        max_kpi: upper clip of the KPI, in (epsilon, 1]. Default 0.99.
        warmup_steps: number of initial training steps with unit weights.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.dynamic_task_prioritization import (
    ...     DynamicTaskPrioritization)
    >>> dtp = DynamicTaskPrioritization(kpi="accuracy", alpha=1.0)
    >>> losses = keras.ops.convert_to_tensor([1.0, 1.0])
    >>> _, w = dtp(losses, kpis=keras.ops.convert_to_tensor([0.5, 0.9]))
    >>> [round(float(x), 3) for x in w]
    [0.347, 0.011]

    References:
        Michelle Guo, Albert Haque, De-An Huang, Serena Yeung, Li Fei-Fei.
        "Dynamic Task Prioritization for Multitask Learning". ECCV 2018.
        No official code was released.

    Note:
        Reconstructed from the paper's equations as recalled in methods.md
        (task-level focal weight, EMA of the KPI); the paper's values of
        gamma and alpha, and its treatment of KPIs near 0 and 1, are
        unverified. The example-level focal loss the paper also uses inside
        each task belongs in the task loss, not in this strategy.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(
        self,
        kpi="accuracy",
        gamma=1.0,
        alpha=0.1,
        epsilon=1e-3,
        max_kpi=0.99,
        warmup_steps=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(kpi, str) or not kpi.strip():
            raise ValueError(
                "DynamicTaskPrioritization needs `kpi`, the name of a "
                "per-task metric in [0, 1] (higher is better) such as "
                f"'accuracy', got {kpi!r}."
            )
        if isinstance(gamma, Sequence) and not isinstance(gamma, str):
            gammas = [_as_float(g, "gamma") for g in gamma]
            if not gammas:
                raise ValueError("DynamicTaskPrioritization `gamma` must not be empty.")
            gamma = gammas
        else:
            gammas = [_as_float(gamma, "gamma")]
            gamma = gammas[0]
        if not all(g >= 0 and math.isfinite(g) for g in gammas):
            raise ValueError(
                "DynamicTaskPrioritization `gamma` must be finite and >= 0, "
                f"got {gamma!r}."
            )
        alpha = _as_float(alpha, "alpha")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(
                f"DynamicTaskPrioritization `alpha` must be in (0, 1], got {alpha!r}."
            )
        epsilon = _as_float(epsilon, "epsilon")
        max_kpi = _as_float(max_kpi, "max_kpi")
        if not 0.0 < epsilon < max_kpi:
            raise ValueError(
                "DynamicTaskPrioritization `epsilon` must be in (0, max_kpi), "
                f"got epsilon={epsilon!r} with max_kpi={max_kpi!r}."
            )
        if not max_kpi <= 1.0:
            raise ValueError(
                "DynamicTaskPrioritization `max_kpi` must be in (epsilon, 1], "
                f"got {max_kpi!r}."
            )
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int):
            if not (isinstance(warmup_steps, float) and warmup_steps.is_integer()):
                raise ValueError(
                    "DynamicTaskPrioritization `warmup_steps` must be a "
                    f"non-negative integer, got {warmup_steps!r}."
                )
        warmup_steps = int(warmup_steps)
        if warmup_steps < 0:
            raise ValueError(
                "DynamicTaskPrioritization `warmup_steps` must be a "
                f"non-negative integer, got {warmup_steps!r}."
            )
        self.kpi = kpi
        # Read by MultiTaskModel: the metric whose values arrive as `kpis`.
        self.kpi_metric = kpi
        self.gamma = gamma
        self.alpha = alpha
        self.epsilon = epsilon
        self.max_kpi = max_kpi
        self.warmup_steps = warmup_steps

    def build(self, input_shape):
        super().build(input_shape)
        if isinstance(self.gamma, list) and len(self.gamma) != self.num_tasks:
            raise ValueError(
                f"DynamicTaskPrioritization has {len(self.gamma)} `gamma` "
                f"values but is used with {self.num_tasks} tasks."
            )
        self.kpi_average = add_task_vector(self, "kpi_average")
        # One count per task: with missing tasks, a task's first present
        # step initialises its average and its warm-up is its own.
        self.steps = add_task_vector(self, "steps")

    def call(self, losses, kpis=None, training=True, task_mask=None):
        self._check_num_tasks(losses)
        if kpis is None:
            raise ValueError(
                "DynamicTaskPrioritization needs the per-task KPIs: call it "
                "as strategy(losses, kpis=...) with a (T,) tensor of the "
                f"running values of the metric {self.kpi_metric!r} (a "
                "MultiTaskModel does this when the metric is compiled for "
                "every task)."
            )
        kpis = ops.convert_to_tensor(kpis)
        self._check_num_tasks(kpis, what="kpis")
        kpis = ops.cast(ops.stop_gradient(kpis), "float32")
        kpi_average = self.kpi_average.value
        prior_steps = self.steps.value
        if task_mask is not None:
            present = ops.convert_to_tensor(task_mask) > 0
            # An absent task's KPI (a metric without new samples, possibly
            # NaN) is never read: its average stays as it was.
            kpis = ops.where(present, kpis, kpi_average)
        first = prior_steps < 1.0
        average = ops.where(
            first, kpis, self.alpha * kpis + (1.0 - self.alpha) * kpi_average
        )
        steps = prior_steps + 1.0
        if task_mask is not None:
            average = ops.where(present, average, kpi_average)
            steps = ops.where(present, steps, prior_steps)
        if training:
            self.kpi_average.assign(average)
            # Capped: only "first step" and "still warming up" are read.
            self.steps.assign(ops.minimum(steps, float(self.warmup_steps) + 1.0))
        kappa = ops.clip(average, self.epsilon, self.max_kpi)
        gamma = ops.convert_to_tensor(self.gamma, dtype="float32")
        weights = -ops.power(1.0 - kappa, gamma) * ops.log(kappa)
        if self.warmup_steps > 0:
            weights = ops.where(
                steps <= float(self.warmup_steps), ops.ones_like(weights), weights
            )
        if task_mask is not None:
            weights = ops.where(present, weights, 0.0)
        weights = ops.stop_gradient(ops.cast(weights, losses.dtype))
        return ops.sum(weights * losses), weights

    def reset_state(self):
        if self.built:
            assign_zeros(self.kpi_average, self.steps)

    def get_config(self):
        config = super().get_config()
        gamma = list(self.gamma) if isinstance(self.gamma, list) else self.gamma
        config.update(
            {
                "kpi": self.kpi,
                "gamma": gamma,
                "alpha": self.alpha,
                "epsilon": self.epsilon,
                "max_kpi": self.max_kpi,
                "warmup_steps": self.warmup_steps,
            }
        )
        return config


def _as_float(value, name):
    return as_float(value, name, "DynamicTaskPrioritization")
