"""SoftAdapt (Heydari, Thompson, Mehmood, arXiv 2019)."""

from __future__ import annotations

import math
import numbers
from fractions import Fraction

from keras import ops

from keras_mtl.weighting._present_task_ops import (
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

_VARIANTS = ("plain", "normalized", "loss_weighted")
# Added to denominators, as in the official code (`_EPSILON = 1e-8`).
_EPSILON = 1e-8


def forward_difference_coefficients(order):
    """Forward finite-difference weights of the first derivative.

    Returns the p + 1 coefficients c_0..c_p (p = `order`) such that
    sum_k c_k f(x_k) approximates f'(x_0) on the unit grid x_k = x_0 + k with
    error O(h^p): c_0 = -(1 + 1/2 + ... + 1/p) and
    c_k = (-1)^(k+1) * binomial(p, k) / k for k >= 1 (the derivatives at x_0
    of the Lagrange basis polynomials). Orders 1, 3 and 5 give the official
    code's constants, e.g. (-1, 1) and (-11/6, 3, -3/2, 1/3); even orders
    give the `findiff` forward coefficients it uses for them.
    """
    order = int(order)
    coefficients = [-sum(Fraction(1, j) for j in range(1, order + 1))]
    for k in range(1, order + 1):
        coefficients.append(Fraction((-1) ** (k + 1) * math.comb(order, k), k))
    return [float(c) for c in coefficients]


@register_strategy("softadapt", "soft_adapt")
class SoftAdapt(LossWeighting):
    """Weights the tasks by a softmax of the recent rates of change of their
    losses.

    Notation: T tasks; the strategy keeps the last n + 1 values of every
    task loss (n = `accuracy_order`), oldest first: L_t(k - n), ..., L_t(k).
    The rate of change of task t is the forward finite difference

        s_t = sum_{j=0..n} c_j L_t(k - n + j)

    with the coefficients of `forward_difference_coefficients(n)` (n = 1
    gives s_t = L_t(k) - L_t(k - 1), the paper's main definition). A task
    whose loss decreases slowly (or increases) has a large s_t. The weights
    are a softmax with the focus parameter beta, in the numerically stable
    form (shifted by the maximum):

        "plain":          a_t = exp(beta s_t) / sum_j exp(beta s_j)
        "normalized":     s_t <- s_t / (sum_j |s_j| + 1e-8) first, then
                          the plain formula (invariant to a common scaling
                          of the losses)
        "loss_weighted":  a_t = f_t exp(beta s_t) / sum_j f_j exp(beta s_j),
                          f_t = mean of task t's stored loss values
        w_t = T * a_t.

    With beta > 0 the slower tasks get larger weights; beta < 0 favours the
    faster ones; beta = 0 gives equal weights (plain and normalized).

    Schedule: every training step appends the current losses to the
    history. Until n + 1 values are stored the weights are 1 (the official
    examples start from weights 1). From then on the weights are recomputed
    every `update_every` steps, on the step itself (they already weight
    that step's losses), and kept in between. `SoftAdapt(accuracy_order=4,
    update_every=5)` reproduces the official usage (weights from the last 5
    recorded values, refreshed every 5 records).

    Scale: the paper's weights a_t sum to 1; here they are multiplied by T
    so that they sum to T like equal weighting's (w = 1 when all rates are
    equal), keeping the learning rate of an equal-weighting baseline
    meaningful. Divide the learning rate by T for the paper's scale.

    Properties: stateful (loss history, step counter, current weights); one
    backward pass; not invariant to loss scales except the "normalized"
    variant, and only up to a common scale (the loss-weighted variant
    favours large losses).

    Missing tasks: with a `task_mask` (a model compiled with
    `missing_labels`) and K present tasks, each task's history records only
    the steps in which it is present (its column of `loss_history` shifts
    only then, and `task_steps` counts its records), so its slope is the
    finite difference of its own last n + 1 labelled losses. The weights
    of the present tasks are the formulas above over the present tasks
    alone (softmax, slope normalisation and loss weighting over them,
    times K); absent tasks get 0. The schedule follows the shared
    `step_count`; on a due step the weights are recomputed if every present
    task has a full history, otherwise (and on the steps in between) the
    held weights of the present tasks are used, rescaled to sum to K: the
    softmax of the last computed slopes restricted to the present tasks
    (exactly for "plain", and for "loss_weighted" up to its 1e-8; for
    "normalized" the slope normaliser of the last update included the tasks
    present then). With `training=False` the held weights are rescaled the
    same way.

    Args:
        beta: float, the focus parameter (default 0.1, the official code's
            default).
        variant: "plain" (default; the paper's original SoftAdapt),
            "normalized" (normalised slopes) or "loss_weighted".
        accuracy_order: int >= 1, the accuracy order n of the forward
            difference, which uses n + 1 stored values (default 1, the
            difference of consecutive losses).
        update_every: int >= 1, recompute the weights every this many steps
            once the history is full (default 1).
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.soft_adapt import SoftAdapt
    >>> strategy = SoftAdapt(beta=1.0)
    >>> _ = strategy(keras.ops.convert_to_tensor([1.0, 1.0]))
    >>> _, weights = strategy(keras.ops.convert_to_tensor([0.5, 1.0]))
    >>> [round(float(w), 3) for w in weights]  # task 2 did not improve
    [0.755, 1.245]

    References:
        A. Ali Heydari, Craig A. Thompson, Asif Mehmood. "SoftAdapt:
        Techniques for Adaptive Loss Weighting of Neural Networks with
        Multi-Part Loss Functions". arXiv:1912.12355, 2019. Official code:
        https://github.com/dr-aheydari/SoftAdapt (`softadapt/algorithms/`,
        `softadapt/base/_softadapt_base_class.py`,
        `softadapt/utilities/_finite_difference.py`).

    Note:
        Deviations from the official code: (1) weights sum to T, not 1 (see
        above); (2) the normalised variant divides by the L1 norm of the
        slopes, as in the paper and the first official release
        (`SoftAdapt/SoftAdapt.py`); the current package divides by their
        signed sum, which flips the ordering when all losses decrease; (3)
        the history is a rolling window of per-step losses, whereas the
        official examples record one value per epoch and clear their lists
        after each update; (4) the finite-difference stencil is the official
        forward one (the slope at the oldest stored point), for every order
        instead of odd orders up to 5 and even orders.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(
        self, beta=0.1, variant="plain", accuracy_order=1, update_every=1, **kwargs
    ):
        super().__init__(**kwargs)
        if isinstance(beta, bool):
            beta = float("nan")
        try:
            beta_value = float(beta)
        except (TypeError, ValueError):
            beta_value = float("nan")
        if not math.isfinite(beta_value):
            raise ValueError(
                f"SoftAdapt `beta` must be a finite float, got beta={beta!r}."
            )
        key = (
            variant.strip().lower().replace("-", "_")
            if isinstance(variant, str)
            else None
        )
        if key == "normalised":
            key = "normalized"
        if key not in _VARIANTS:
            raise ValueError(
                f"SoftAdapt `variant` must be one of {_VARIANTS}, got "
                f"variant={variant!r}."
            )
        self.beta = beta_value
        self.variant = key
        self.accuracy_order = _positive_int("accuracy_order", accuracy_order)
        self.update_every = _positive_int("update_every", update_every)
        self._coefficients = forward_difference_coefficients(self.accuracy_order)

    def build(self, input_shape):
        super().build(input_shape)
        num_tasks = self.num_tasks
        self.loss_history = self.add_weight(
            shape=(self.accuracy_order + 1, num_tasks),
            initializer="zeros",
            trainable=False,
            name="loss_history",
            task_axis=1,
        )
        self.step_count = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="step_count",
        )
        self.task_weights = add_task_vector(self, "task_weights", initializer="ones")
        # Per task, how many losses its history holds (capped at n + 1).
        self.task_steps = add_task_vector(self, "task_steps", dtype="int32")

    # --- Math -----------------------------------------------------------

    def weights_from_history(self, history, task_mask=None):
        """The SoftAdapt weights (summing to T) of a `(n + 1, T)` history,
        oldest row first; with a `task_mask`, the weights (summing to K) of
        the present tasks alone and 0 for the others."""
        history = ops.cast(history, self.compute_dtype)
        coefficients = ops.convert_to_tensor(self._coefficients, history.dtype)
        slopes = ops.sum(coefficients[:, None] * history, axis=0)
        present = present_or_all(task_mask, ops.shape(history)[1])
        count = present_count(present, history.dtype)
        slopes = ops.where(present, slopes, 0.0)
        if self.variant == "normalized":
            slopes = slopes / (ops.sum(ops.abs(slopes)) + _EPSILON)
        if self.variant != "loss_weighted":
            return count * masked_softmax(self.beta * slopes, present)
        logits = self.beta * slopes
        shift = ops.max(ops.where(present, logits, ops.min(logits)))
        exp = ops.where(present, ops.exp(ops.where(present, logits - shift, 0.0)), 0.0)
        numerator = ops.mean(history, axis=0) * exp
        return count * numerator / (ops.sum(numerator) + _EPSILON)

    def _held_weights(self, present):
        """The stored weights of the present tasks, rescaled to sum to K."""
        held = ops.where(present, ops.convert_to_tensor(self.task_weights.value), 0.0)
        total = ops.sum(held)
        count = present_count(present, held.dtype)
        return ops.where(
            total > 0, count * held / ops.where(total > 0, total, 1.0), held
        )

    def compute_weights(self, losses, training=True, task_mask=None):
        present = present_or_all(task_mask, self.num_tasks)
        if task_mask is None:
            # Kept as they are: they sum to T up to rounding, and the
            # rescaling of `_held_weights` would change their last bits.
            held = ops.convert_to_tensor(self.task_weights.value)
        else:
            held = self._held_weights(present)
        if not training:
            return held
        losses = ops.stop_gradient(ops.cast(losses, self.compute_dtype))
        shifted = ops.concatenate(
            [self.loss_history.value[1:], losses[None, :]], axis=0
        )
        history = ops.where(present[None, :], shifted, self.loss_history.value)
        step = self.step_count.value + 1
        window = self.accuracy_order + 1
        task_steps = ops.where(
            present,
            ops.minimum(self.task_steps.value + 1, window),
            self.task_steps.value,
        )
        full = ops.all(ops.logical_or(task_steps >= window, ops.logical_not(present)))
        due = ops.logical_and(
            ops.logical_and(full, ops.any(present)),
            ops.equal((step - window) % self.update_every, 0),
        )
        fresh = self.weights_from_history(history, ops.cast(present, history.dtype))
        weights = ops.where(due, fresh, held)
        self.loss_history.assign(history)
        self.step_count.assign(step)
        self.task_weights.assign(ops.where(present, weights, self.task_weights.value))
        self.task_steps.assign(task_steps)
        return weights

    def reset_state(self):
        if self.built:
            self.step_count.assign(0)
            assign_zeros(self.loss_history, self.task_steps)
            assign_ones(self.task_weights)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "variant": self.variant,
                "accuracy_order": self.accuracy_order,
                "update_every": self.update_every,
            }
        )
        return config


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"SoftAdapt `{name}` must be an int >= 1, got {name}={value!r}."
        )
    return int(value)
