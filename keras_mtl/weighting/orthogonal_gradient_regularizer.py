"""Orthogonal-gradient regularisation (Suteu and Guo, 2019)."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._argument_ops import as_float
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

_REDUCTIONS = ("mean", "sum")
_GRADIENTS_OF = ("all", "last_layer")


@register_strategy("orthogonal", "orthogonal_gradients", "suteu_guo")
class OrthogonalGradientRegularizer(LossWeighting):
    """Adds a penalty that pushes the task gradients towards orthogonality.

    Notation: T tasks, L_t the batch loss of task t, g_t its gradient with
    respect to the shared variables (the per-task gradients the model
    passes as `shared_grads`), lambda the penalty and eps a small constant:

        cos_ij = g_i . g_j / (||g_i|| ||g_j|| + eps)
        R      = 1 / (T (T - 1)) * sum_{i != j} cos_ij^2    (reduction="mean")
                 sum_{i != j} cos_ij^2                      (reduction="sum")
        objective = sum_t L_t + lambda * R.

    R depends on the model's variables through the gradients g_t, so the
    model differentiates the objective through them (double
    back-propagation, `differentiable_gradients = True`): the update of the
    shared variables is sum_t grad L_t + lambda * grad R. With one task
    there is no pair and R = 0. The weights reported are 1 (each task's
    loss enters the objective with weight 1; the regulariser is extra).

    Missing tasks: with a `task_mask` (see `Strategy`) an absent task, whose
    loss is 0 and gradient row zero, gets weight 0 and enters no pair: R
    sums over the ordered pairs of present tasks and, for "mean", divides by
    their number K (K - 1), which is R of the K present tasks alone (0 when
    K < 2). The zero row already gives cos = 0; the mask changes the mean's
    denominator.

    The paper observes that well-performing multi-task models show a low
    variance of the angles between task gradients on the shared parameters,
    and regularises towards orthogonal task gradients, which neither
    conflict (cos < 0) nor duplicate (cos close to 1).

    Defaults: the squared cosine, averaged over the T (T - 1) ordered pairs
    with lambda = 10 (`penalty=10.0`), as in the third-party implementation
    `CosRegOptimizer` (gradient-regularisation optimisers, default penalty
    10.0); gradients of all shared variables (`gradients_of="all"`), its
    default too (`per_layer=False`, `wrt_rep=False`). eps = 1e-8.

    Properties: stateless; second order: T per-task gradients kept on the
    tape and one backward pass through them (about 2 to 3 times the cost of
    equal weighting); the penalty is invariant to rescaling any task's loss
    or gradient.

    Args:
        penalty: lambda >= 0. Default 10.0.
        reduction: `"mean"` (default) or `"sum"` over the pairs i != j.
        gradients_of: `"all"` (default, every shared variable) or
            `"last_layer"` (the variables of the last shared layer); sets
            the instance's `shared_gradients`.
        epsilon: eps > 0 in the cosine's denominator. Default 1e-8.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.orthogonal_gradient_regularizer import (
    ...     OrthogonalGradientRegularizer)
    >>> strategy = OrthogonalGradientRegularizer(penalty=1.0)
    >>> grads = keras.ops.convert_to_tensor([[1.0, 0.0], [1.0, 1.0]])
    >>> total, w = strategy(keras.ops.convert_to_tensor([1.0, 2.0]),
    ...                     shared_grads=grads)
    >>> round(float(total), 4), keras.ops.convert_to_numpy(w).tolist()  # 3 + cos^2(45)
    (3.5, [1.0, 1.0])

    References:
        Mihai Suteu, Yike Guo. "Regularizing Deep Multi-Task Networks using
        Orthogonal Gradients". arXiv:1912.06844, 2019. No official code.

    Note:
        The paper's exact normalisation (sum or mean over pairs) and its
        lambda were not verified from the paper itself; `reduction` and
        `penalty` expose both choices (another third-party version, for two
        tasks, is reported to use lambda * cos^2, which is
        `reduction="mean"` for T = 2). The per-layer variant (cosines
        averaged over shared layers) is not available: the model passes
        one flattened gradient per task.
        Zero gradients give cos = 0 with finite second derivatives.
    """

    differentiable_gradients = True
    supports_missing_tasks = True

    def __init__(
        self,
        penalty=10.0,
        reduction="mean",
        gradients_of="all",
        epsilon=1e-8,
        **kwargs,
    ):
        super().__init__(**kwargs)
        penalty = _as_float(penalty, "penalty")
        if not (penalty >= 0 and math.isfinite(penalty)):
            raise ValueError(
                "OrthogonalGradientRegularizer `penalty` must be a finite "
                f"number >= 0, got {penalty!r}."
            )
        if reduction not in _REDUCTIONS:
            raise ValueError(
                "OrthogonalGradientRegularizer `reduction` must be one of "
                f"{_REDUCTIONS}, got {reduction!r}."
            )
        if gradients_of not in _GRADIENTS_OF:
            raise ValueError(
                "OrthogonalGradientRegularizer `gradients_of` must be one of "
                f"{_GRADIENTS_OF}, got {gradients_of!r}."
            )
        epsilon = _as_float(epsilon, "epsilon")
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(
                "OrthogonalGradientRegularizer `epsilon` must be a finite "
                f"number > 0, got {epsilon!r}."
            )
        self.penalty = penalty
        self.reduction = reduction
        self.gradients_of = gradients_of
        self.epsilon = epsilon
        #: Tells the model which per-task gradients to pass as `shared_grads`.
        self.shared_gradients = gradients_of

    def cosine_matrix(self, shared_grads):
        """The `(T, T)` matrix of cos_ij, differentiable (also at g = 0)."""
        grads = ops.cast(shared_grads, "float32")
        squared = ops.sum(ops.square(grads), axis=1)
        positive = squared > 0.0
        # sqrt has an infinite derivative at 0: take it of 1 there instead.
        norms = ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)
        dots = ops.matmul(grads, ops.transpose(grads))
        return dots / (norms[:, None] * norms[None, :] + self.epsilon)

    def regularizer(self, shared_grads, task_mask=None):
        """The penalty R (before the factor lambda) of `(T, P)` gradients;
        with `task_mask`, over the pairs of present tasks only."""
        num_tasks = self.num_tasks or int(shared_grads.shape[0])
        if num_tasks < 2:
            return ops.zeros((), dtype="float32")
        off_diagonal = 1.0 - ops.eye(num_tasks, dtype="float32")
        squared = ops.square(self.cosine_matrix(shared_grads))
        if task_mask is None:
            total = ops.sum(squared * off_diagonal)
            if self.reduction == "mean":
                total = total / float(num_tasks * (num_tasks - 1))
            return total
        present = ops.cast(ops.convert_to_tensor(task_mask) > 0, "float32")
        pairs = off_diagonal * present[:, None] * present[None, :]
        total = ops.sum(ops.where(pairs > 0.0, squared, 0.0))
        if self.reduction == "mean":
            # K (K - 1) ordered pairs of present tasks; none when K < 2.
            total = total / ops.maximum(ops.sum(pairs), 1.0)
        return total

    def call(self, losses, shared_grads=None, training=True, task_mask=None):
        """Returns `(sum_t L_t + penalty * R, ones)`.

        Args:
            losses: `(T,)` task losses.
            shared_grads: `(T, P')` per-task gradients of the shared
                variables chosen by `gradients_of`, differentiable with
                respect to the model's variables (passed by the model).
            training: unused (the strategy is stateless).
            task_mask: None, or `(T,)` floats, 1.0 for the tasks present in
                the step (see `Strategy`); absent tasks get weight 0 and no
                pair.
        """
        self._check_num_tasks(losses)
        if shared_grads is None:
            raise ValueError(
                "OrthogonalGradientRegularizer needs the per-task gradients "
                "`shared_grads` (a (T, P) tensor); MultiTaskModel passes them "
                "during training."
            )
        self._check_num_tasks(shared_grads, what="shared_grads")
        if task_mask is None:
            weights = ops.ones_like(losses)
            objective = ops.sum(losses)
        else:
            present = ops.convert_to_tensor(task_mask) > 0
            weights = ops.cast(present, losses.dtype)
            objective = ops.sum(ops.where(present, losses, 0.0))
        if self.penalty > 0.0:
            penalty = self.penalty * self.regularizer(shared_grads, task_mask)
            objective = objective + ops.cast(penalty, losses.dtype)
        return objective, weights

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "penalty": self.penalty,
                "reduction": self.reduction,
                "gradients_of": self.gradients_of,
                "epsilon": self.epsilon,
            }
        )
        return config


def _as_float(value, name):
    return as_float(value, name, "OrthogonalGradientRegularizer", allow_bool=False)
