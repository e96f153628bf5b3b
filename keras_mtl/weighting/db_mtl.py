"""Dual-Balancing Multi-Task Learning (Lin et al., arXiv 2308.12029)."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._task_state_ops import (
    TaskStepCounts,
    assign_zeros,
    gradient_width,
    present_or_all,
)
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Added to every loss inside the logarithm and to every gradient norm in
# the denominator of alpha, as in the reference implementation.
_LOSS_EPS = 1e-8
_NORM_EPS = 1e-8


def _row_norms(matrix):
    """Euclidean norm of each row, without overflow for huge entries."""
    scale = ops.max(ops.abs(matrix), axis=1, keepdims=True)
    safe = ops.where(scale > 0, scale, ops.ones_like(scale))
    return scale[:, 0] * ops.sqrt(ops.sum(ops.square(matrix / safe), axis=1))


@register_strategy("db_mtl", "dbmtl", "dual_balancing")
class DBMTL(TaskStepCounts, GradientAggregation):
    """Dual-Balancing Multi-Task Learning: log losses and equal-norm gradients.

    Notation: T tasks, L_t the loss of task t, g_t = dL_t/dtheta its
    gradient on the shared parameters (row t of the `(T, P)` input), k the
    step number (1 at the first training step), and gh_t the EMA buffer of
    task t (zero before the first step).

    DB-MTL balances the tasks twice. Loss-scale balancing trains on
    log(L_t + eps) instead of L_t, whose gradient is

        q_t = g_t / (L_t + eps),    eps = 1e-8;

    gradient-magnitude balancing keeps an exponential moving average of q_t
    and rescales every averaged gradient to the largest norm:

        beta_k = beta / k^beta_sigma
        gh_t  <- beta_k * gh_t + (1 - beta_k) * q_t       (buffer updated first)
        alpha_t = max_j ||gh_j|| / (||gh_t|| + 1e-8)
        update  = sum_t alpha_t * gh_t.

    The buffer starts at zero and is not bias-corrected, so with the default
    beta = 0.9 the first update is 0.1 times the balanced log-gradients. The
    update has the scale of a sum (T rows of norm max_j ||gh_j||).

    Defaults beta = 0.9 and beta_sigma = 0 are those of LibMTL's
    `config.py` (`DB_beta`, `DB_beta_sigma`), the authors' code.

    Properties: stateful (buffer gh `(T, P)` and step count k;
    `reset_state()` zeroes both), needs the task losses, T backward passes.
    Every scaled row alpha_t gh_t has norm max_j ||gh_j||. Invariant to a
    rescaling of any task's loss (L_t -> c L_t, g_t -> c g_t) up to eps.
    Not defined on representation gradients (as in LibMTL).

    Missing tasks: with a `task_mask` (see `Strategy`) an absent task's
    buffer gh_t and step count k_t (kept per task, `steps`) are untouched
    and it gets alpha_t = 0; the present tasks are balanced among
    themselves (max_j over present j), so alpha and the update are those
    of DB-MTL on the K present tasks alone. The zero loss of an absent task
    is never divided by.

    The returned weights are alpha, the scale of each task's averaged
    log-gradient in the update (not of the raw g_t).

    Args:
        beta: EMA coefficient beta in [0, 1). Default 0.9.
        beta_sigma: decay exponent of beta_k = beta / k^beta_sigma, >= 0.
            Default 0 (constant beta).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.db_mtl import DBMTL
    >>> strategy = DBMTL()
    >>> grads = np.array([[3.0, 0.0], [0.0, 1.0]], "float32")
    >>> update = strategy.aggregate(grads, losses=[1.0, 2.0])
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [0.3, 0.3]

    References:
        Baijiong Lin, Weisen Jiang, Feiyang Ye, Yu Zhang, Pengguang Chen,
        Ying-Cong Chen, Shu Liu, James T. Kwok. "Dual-Balancing for
        Multi-Task Learning". arXiv:2308.12029, 2023. Official code: LibMTL
        (median-research-group/LibMTL, `LibMTL/weighting/DB_MTL.py`,
        defaults in `LibMTL/config.py`).

    Note:
        Matches LibMTL's `DB_MTL.py` step for step (buffer update before the
        norms, eps 1e-8 in the log and in the norm denominator, no bias
        correction). Only the row norms are computed with a rescaling that
        avoids overflow of the squares for very large gradients. The
        returned weights are alpha (LibMTL returns ones).
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, beta=0.9, beta_sigma=0.0, **kwargs):
        super().__init__(**kwargs)
        beta = float(beta)
        if not (math.isfinite(beta) and 0.0 <= beta < 1.0):
            raise ValueError(f"DBMTL `beta` must be in [0, 1), got {beta!r}.")
        beta_sigma = float(beta_sigma)
        if not (math.isfinite(beta_sigma) and beta_sigma >= 0.0):
            raise ValueError(
                f"DBMTL `beta_sigma` must be finite and >= 0, got {beta_sigma!r}."
            )
        self.beta = beta
        self.beta_sigma = beta_sigma

    def build(self, input_shape):
        super().build(input_shape)
        self.grad_buffer = self.add_weight(
            shape=(self.num_tasks, gradient_width(self, input_shape)),
            initializer="zeros",
            trainable=False,
            name="grad_buffer",
            task_axis=0,
        )
        # The step count k of each task's buffer (it sets beta_k): per task,
        # since an absent task's buffer does not move.
        self.steps = self._add_task_steps()

    def reset_state(self):
        assign_zeros(self.grad_buffer, self.steps)

    def call(self, grads, losses=None, training=True, task_mask=None):
        self._check_num_tasks(grads, "gradients")
        if losses is None:
            raise ValueError(
                "DBMTL needs the task losses: it balances the gradients of "
                "log(L_t + 1e-8), i.e. g_t / (L_t + 1e-8). Pass `losses`."
            )
        losses = ops.reshape(ops.cast(losses, grads.dtype), (-1,))
        self._check_num_tasks(losses, "losses")
        old_buffer = ops.cast(self.grad_buffer, grads.dtype)
        present = present_or_all(task_mask, self.num_tasks)
        # An absent task's loss (0) and row are not divided.
        losses = ops.where(present, losses, ops.ones_like(losses))
        step = self.steps + ops.cast(present, "int32")
        k = ops.cast(ops.maximum(step, 1), grads.dtype)
        beta_k = self.beta / ops.power(k, self.beta_sigma)
        log_grads = grads / (losses[:, None] + _LOSS_EPS)
        buffer = log_grads + beta_k[:, None] * (old_buffer - log_grads)
        # An absent task's buffer stays as it was and takes no part.
        buffer = ops.where(present[:, None], buffer, old_buffer)
        norms = _row_norms(buffer)
        largest = ops.max(ops.where(present, norms, 0.0))
        alpha = ops.where(present, largest / (norms + _NORM_EPS), 0.0)
        update = ops.matmul(alpha[None, :], buffer)[0]
        if training:
            self.grad_buffer.assign(buffer)
            self.steps.assign(step)
        return update, alpha

    def head_gradient_scales(self, losses, weights):
        """Heads get the gradient of log(L_t + eps), as in LibMTL's DB-MTL
        (each log-loss is back-propagated through its own head)."""
        return 1.0 / (ops.cast(losses, "float32") + _LOSS_EPS)

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta, "beta_sigma": self.beta_sigma})
        return config
