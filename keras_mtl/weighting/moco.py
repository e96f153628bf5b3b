"""MoCo: multi-objective gradient correction (Fernando et al., ICLR 2023)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_mtl.weighting._task_state_ops import add_task_vector, gradient_width
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Added to each gradient norm before the loss-scaled normalisation
# (LibMTL MoCo.py).
_NORM_EPS = 1e-8


def _row_norms(matrix):
    """Euclidean norm of each row, without overflow for huge entries."""
    scale = ops.max(ops.abs(matrix), axis=1, keepdims=True)
    safe = ops.where(scale > 0, scale, ops.ones_like(scale))
    return scale[:, 0] * ops.sqrt(ops.sum(ops.square(matrix / safe), axis=1))


@register_strategy("moco", "mo_co")
class MoCo(GradientAggregation):
    """MoCo: tracked task gradients combined by a stochastic MGDA dual step.

    Notation: T tasks, L_t the loss of task t, g_t its gradient on the
    shared parameters (row t of the `(T, P)` input), k the step number (1 at
    the first training step), Y the `(T, P)` tracking variable (zero before
    the first step) and lambda in the simplex the task weights (1/T before
    the first step).

    Each step, with beta_k = beta / k^beta_sigma and
    gamma_k = gamma / k^gamma_sigma:

        h_t    = g_t / (||g_t|| + 1e-8) * L_t          (loss-scaled direction)
        Y      <- Y - beta_k (Y - H)                    (tracking, H rows h_t)
        lambda <- softmax(lambda - gamma_k (Y Y^T + rho I) lambda)
        update = Y^T lambda.

    Y tracks the (normalised) task gradients to reduce the bias of the
    stochastic MGDA direction; lambda takes one gradient step of the MGDA
    dual objective 0.5 ||Y^T lambda||^2 (+ 0.5 rho ||lambda||^2) and is
    mapped back to the simplex with a softmax, as in the authors' code.

    Scale: lambda sums to one, so the update has the scale of a convex
    combination (a mean) of the tracked directions, each of norm about L_t;
    this is the reference's convention (it is not multiplied by T).

    Defaults follow LibMTL's `config.py` (`MoCo_beta` = 0.5,
    `MoCo_beta_sigma` = 0.5, `MoCo_gamma` = 0.1, `MoCo_gamma_sigma` = 0.5,
    `MoCo_rho` = 0), which ports the authors' code.

    Properties: stateful (Y `(T, P)`, lambda `(T,)`, the step count and the
    per-task step counts; `reset_state()` restores zero, 1/T, 0 and 0),
    needs the task losses, T backward passes, weights on the simplex,
    invariant to the scale of each g_t (but not of L_t). The returned
    weights are lambda.

    Missing tasks: with a `task_mask`, the rows of absent tasks are
    dropped. Only the present tasks' tracked rows Y_t move, each with
    beta_k computed from the number of steps in which that task was
    present (`task_steps`, per task, so that an absent task's running mean
    is not decayed by steps it missed); gamma_k follows the shared step
    count. The dual step uses the present block of Y Y^T and lambda, and
    the softmax runs over the present tasks: their weights sum to one,
    absent tasks get weight 0 and keep their stored lambda (the stored
    vector then no longer sums to one until the next step with all tasks,
    whose softmax renormalises it). These are the weights and the update of
    a MoCo built for the present tasks with their slices of the state
    (including `task_steps`) and the same step count; with a single present
    task its weight is 1.

    Args:
        beta: learning rate of the tracking variable, > 0. Default 0.5.
        beta_sigma: decay exponent of beta_k, >= 0. Default 0.5.
        gamma: learning rate of lambda, >= 0. Default 0.1.
        gamma_sigma: decay exponent of gamma_k, >= 0. Default 0.5.
        rho: l2 regularisation of lambda's update, >= 0. Default 0.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.moco import MoCo
    >>> strategy = MoCo()
    >>> grads = np.array([[2.0, 0.0], [0.0, 1.0]], "float32")
    >>> update = strategy.aggregate(grads, losses=[1.0, 1.0])
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [0.25, 0.25]

    References:
        Heshan Fernando, Han Shen, Miao Liu, Subhajit Chaudhury, Keerthiram
        Murugesan, Tianyi Chen. "Mitigating Gradient Bias in Multi-objective
        Learning: A Provably Convergent Approach". ICLR 2023.
        arXiv:2210.12624. Reference implementation: LibMTL
        (median-research-group/LibMTL, `LibMTL/weighting/MoCo.py`, ported
        from the authors' code; defaults in `LibMTL/config.py`).

    Note:
        Follows LibMTL's `MoCo.py`: the gradients are normalised and scaled
        by their losses before tracking, lambda is updated with the new Y
        and mapped to the simplex with a softmax (the paper writes a
        Euclidean projection), and the update is Y^T lambda. Only the row
        norms are computed with a rescaling that avoids overflow.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(
        self,
        beta=0.5,
        beta_sigma=0.5,
        gamma=0.1,
        gamma_sigma=0.5,
        rho=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.beta = _check("beta", beta, positive=True)
        self.beta_sigma = _check("beta_sigma", beta_sigma)
        self.gamma = _check("gamma", gamma)
        self.gamma_sigma = _check("gamma_sigma", gamma_sigma)
        self.rho = _check("rho", rho)

    def build(self, input_shape):
        super().build(input_shape)
        num_tasks = self.num_tasks
        self.tracking = self.add_weight(
            shape=(num_tasks, gradient_width(self, input_shape)),
            initializer="zeros",
            trainable=False,
            name="tracking",
            task_axis=0,
        )
        self.lambd = add_task_vector(
            self, "lambda", initializer=keras.initializers.Constant(1.0 / num_tasks)
        )
        self.step = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", trainable=False, name="step"
        )
        # The number of steps in which each task was present: the k of its
        # tracking rate beta_k (equal to `step` when no task is ever absent).
        self.task_steps = add_task_vector(self, "task_steps", dtype="int32")

    def reset_state(self):
        self.tracking.assign(ops.zeros_like(self.tracking.value))
        self.lambd.assign(ops.ones_like(self.lambd.value) / self.num_tasks)
        self.step.assign(0)
        self.task_steps.assign(ops.zeros_like(self.task_steps.value))

    def call(self, grads, losses=None, training=True, task_mask=None):
        self._check_num_tasks(grads, "gradients")
        if losses is None:
            raise ValueError(
                "MoCo needs the task losses: it tracks g_t / ||g_t|| * L_t. "
                "Pass `losses`."
            )
        dtype = grads.dtype
        losses = ops.reshape(ops.cast(losses, dtype), (-1,))
        self._check_num_tasks(losses, "losses")
        num_tasks = self.num_tasks
        step = self.step + 1
        k = ops.cast(step, dtype)
        gamma_k = self.gamma / ops.power(k, self.gamma_sigma)
        if task_mask is None:
            task_steps = self.task_steps + 1
        else:
            present = ops.cast(ops.convert_to_tensor(task_mask) > 0, dtype)
            keep = present > 0
            # Drop the absent rows (zero by contract; zeroed to be sure).
            grads = grads * present[:, None]
            losses = losses * present
            task_steps = self.task_steps + ops.cast(keep, "int32")
        # beta_k per task, each computed as a scalar as for the shared step
        # (a vectorised power may differ in the last bit); k >= 1 keeps a
        # never-present task finite.
        task_k = ops.cast(ops.maximum(task_steps, 1), dtype)
        beta_k = ops.stack(
            [
                self.beta / ops.power(task_k[t], self.beta_sigma)
                for t in range(num_tasks)
            ]
        )
        directions = grads / (_row_norms(grads) + _NORM_EPS)[:, None] * losses[:, None]
        tracking = ops.cast(self.tracking, dtype)
        new_tracking = tracking - beta_k[:, None] * (tracking - directions)
        lambd = ops.cast(self.lambd, dtype)
        if task_mask is None:
            tracking = new_tracking
            gramian = ops.matmul(tracking, ops.transpose(tracking))
            gramian = gramian + self.rho * ops.eye(num_tasks, dtype=dtype)
            if num_tasks > 1:  # with one task lambda stays 1
                lambd = ops.softmax(
                    lambd - gamma_k * ops.matmul(gramian, lambd), axis=-1
                )
        else:
            tracking = ops.where(keep[:, None], new_tracking, tracking)
            gramian = ops.matmul(tracking, ops.transpose(tracking))
            gramian = gramian + self.rho * ops.eye(num_tasks, dtype=dtype)
            # The dual step and the softmax over the present tasks only.
            logits = lambd - gamma_k * ops.matmul(gramian, lambd * present)
            logits = ops.where(keep, logits, ops.full_like(logits, -1e30))
            lambd = ops.softmax(logits, axis=-1) * present
            lambd = ops.where(keep, lambd, ops.cast(self.lambd, dtype))
        weights = lambd if task_mask is None else lambd * present
        update = ops.matmul(weights[None, :], tracking)[0]
        if training:
            self.tracking.assign(tracking)
            self.lambd.assign(lambd)
            self.step.assign(step)
            self.task_steps.assign(task_steps)
        return update, weights

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta": self.beta,
                "beta_sigma": self.beta_sigma,
                "gamma": self.gamma,
                "gamma_sigma": self.gamma_sigma,
                "rho": self.rho,
            }
        )
        return config


def _check(name, value, positive=False):
    value = float(value)
    ok = math.isfinite(value) and (value > 0.0 if positive else value >= 0.0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"MoCo `{name}` must be finite and {bound}, got {value!r}.")
    return value
