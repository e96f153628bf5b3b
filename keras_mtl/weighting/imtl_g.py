"""IMTL-G, the gradient part of Impartial MTL (Liu et al., ICLR 2021), optionally
with IMTL-L's learnable loss scales (hybrid IMTL)."""

from __future__ import annotations

from typing import ClassVar

import keras
from keras import ops

from keras_mtl.weighting._present_task_ops import (
    first_present,
    present_block,
    present_tasks,
)
from keras_mtl.weighting._solver_ops import solver_dtype, solver_function
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Singular values below this fraction of the largest are treated as zero
# when solving the (equilibrated) linear system: the Gramian arrives in
# float32, so smaller ones are rounding noise.
_RCOND = 1e-6


def _min_norm_solve(matrix, rhs):
    """Minimum-norm least-squares solution of `matrix x = rhs` by SVD."""
    u, s, vh = ops.svd(matrix)
    cutoff = _RCOND * ops.max(s)
    keep = s > cutoff
    s_inv = ops.where(keep, 1.0 / ops.where(keep, s, ops.ones_like(s)), 0.0)
    # rhs^T U, i.e. U^T rhs.
    return ops.matmul(ops.transpose(vh), s_inv * ops.matmul(rhs, u))


def imtl_g_weights(gramian):
    """IMTL-G's closed-form weights from the `(T, T)` Gramian (float64).

    With n_t = ||g_t|| and u_t = g_t / n_t, IMTL-G's weights alpha solve the
    T linear equations

        d . (u_1 - u_t) = 0  for t = 2..T,    sum_t alpha_t = 1,

    with d = sum_t alpha_t g_t, i.e. LibMTL's
    alpha_{2:T} = g_1 U^T (D U^T)^{-1}, alpha_1 = 1 - sum alpha_{2:T}.
    They are solved in the variables beta_t = n_t alpha_t, where the first
    T - 1 equations only involve the cosines u_s . u_t and the last one is
    normalised to unit norm, which keeps the system well conditioned when
    the rows have very different scales. A singular system (for example
    identical rows) gets its minimum-norm solution instead of the
    reference's error.
    """
    num = gramian.shape[0]
    dtype = gramian.dtype
    if num == 1:
        return ops.ones([1], dtype)
    norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    positive = norms > 0
    safe_norms = ops.where(positive, norms, ops.ones_like(norms))
    inv = ops.where(positive, 1.0 / safe_norms, ops.zeros_like(norms))
    cosines = gramian * inv[:, None] * inv[None, :]
    differences = cosines[:1] - cosines[1:]
    last = 1.0 / safe_norms
    last_norm = ops.norm(last)
    system = ops.concatenate([differences, (last / last_norm)[None, :]], axis=0)
    rhs = ops.concatenate(
        [ops.zeros([num - 1], dtype), ops.reshape(1.0 / last_norm, [1])], axis=0
    )
    beta = _min_norm_solve(system, rhs)
    return beta / safe_norms


def present_imtl_g_weights(gramian, present):
    """`imtl_g_weights` for the present tasks alone.

    The K - 1 equations relate the first present task to the other present
    ones, the last one sums over the present tasks; the system is padded
    with zero rows and columns for the absent tasks (whatever the absent
    entries of the Gramian hold), which leaves its singular values (up to
    added zeros, cut off) and its minimum-norm solution unchanged, with 0 on
    the absent tasks. K = 1 gives that task weight 1, K = 0 all zeros.

    Args:
        gramian: `(T, T)` float64 tensor.
        present: `(T,)` booleans, True for the present tasks.
    """
    dtype = gramian.dtype
    keep = ops.cast(present, dtype)
    count = ops.sum(ops.cast(present, "int32"))
    gramian = present_block(gramian, present)
    norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    positive = norms > 0
    safe_norms = ops.where(positive, norms, ops.ones_like(norms))
    inv = ops.where(positive, 1.0 / safe_norms, ops.zeros_like(norms))
    cosines = gramian * inv[:, None] * inv[None, :]
    # Row of the first present task: the sum-to-one equation; rows of the
    # other present tasks: u_first - u_t; rows of absent tasks: 0.
    first = first_present(present, dtype)
    reference = ops.matmul(first, cosines)
    differences = (reference[None, :] - cosines) * (keep - first)[:, None]
    last = keep / safe_norms
    last_norm = ops.norm(last)
    safe_last_norm = ops.where(last_norm > 0, last_norm, ops.ones_like(last_norm))
    system = differences + first[:, None] * (last / safe_last_norm)[None, :]
    rhs = first / safe_last_norm
    beta = _min_norm_solve(system, rhs)
    alpha = ops.where(present, beta / safe_norms, ops.zeros_like(beta))
    return ops.where(count == 1, keep, alpha)


# On JAX, in float64 whether or not `jax_enable_x64` is set (see
# `solver_function`); on TensorFlow, as written (the same results as ever).
if keras.backend.backend() == "jax":
    _imtl_g_weights = solver_function(imtl_g_weights)
    _present_imtl_g_weights = solver_function(present_imtl_g_weights)
else:
    _imtl_g_weights, _present_imtl_g_weights = imtl_g_weights, present_imtl_g_weights


@register_strategy("imtl", "imtl_g")
class IMTLG(GradientAggregation):
    """IMTL-G: the update has equal projections on every task's direction.

    Notation: T tasks, g_t the gradient of task t (row t of G), u_t =
    g_t / ||g_t|| its direction, D the `(T-1, P)` matrix with rows
    g_1 - g_t and U the one with rows u_1 - u_t (t = 2..T). IMTL-G finds
    the combination d = sum_t alpha_t g_t with sum_t alpha_t = 1 whose
    projections on all unit directions are equal, d . u_t = d . u_1, which
    has the closed form

        alpha_{2:T} = g_1 U^T (D U^T)^{-1},    alpha_1 = 1 - sum_{t>=2} alpha_t.

    Scale: the method's own (LibMTL's update sum_t alpha_t g_t with
    sum_t alpha_t = 1, the scale of a mean; identical rows give that row).
    The returned weights are alpha.

    Hybrid IMTL (`loss_scaling=True`, LibMTL's "IMTL"): each task also gets
    a learnable loss scale s_t (initialised to 0, IMTL-L). The model then
    computes the per-task gradients of the scaled losses

        L~_t = exp(s_t) L_t - s_t

    (returned by `transform_losses`), so g_t above is exp(s_t) grad L_t,
    and trains s with its optimizer on the gradient of sum_t L~_t, i.e.
    d/ds_t = exp(s_t) L_t - 1, which vanishes when the scaled loss
    exp(s_t) L_t is 1. IMTL-G itself is unchanged. The line of its shared
    update does not depend on s (scaling g_t scales alpha_t by the inverse,
    up to the sum-to-one normalisation, which sets the update's length and
    sign); s acts on that length and on the heads, which receive
    exp(s_t) grad L_t. The returned weights are those of the rows the
    strategy receives: the effective weight on grad L_t is alpha_t exp(s_t).

    Missing tasks: with a `task_mask`, the rows of absent tasks are
    dropped: the u_t, D and U are those of the K present tasks (K - 1
    differences with the first present task), so the weights are those of
    IMTL-G built for the K present tasks (one present task gets weight 1,
    none gives all zeros), 0 for absent tasks. With `loss_scaling=True` the
    scales s are per-task state: the model puts back an absent task's s_t
    after the step; `transform_losses(losses, task_mask)` leaves the
    absent terms out (an absent task's -s_t would otherwise give s_t a
    gradient of -1).

    Properties: stateless without loss scaling (with it, the trainable s;
    `reset_state()` sets it back to 0); T backward passes (or T head passes
    with `rep_grad=True`, as LibMTL allows); the line of the update is
    invariant to rescaling any task's gradient (alpha_k scales by 1/c when
    g_k is scaled by c, up to the sum-to-one normalisation, which can also
    flip the sign: nothing forces the common projection d . u_t to be
    positive). When the gradients are linearly dependent the
    equal-projection direction may be d = 0.

    Args:
        loss_scaling: if True, learn IMTL-L's loss scales s (hybrid IMTL,
            as LibMTL's IMTL); default False: IMTL-G alone (LibMTL's IMTL
            with s fixed at 0).
        rep_grad: apply the method to gradients of the shared
            representation instead of the shared parameters.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.imtl_g import IMTLG
    >>> grads = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    >>> update, weights = IMTLG()(grads)
    >>> np.round(weights.numpy().astype("float64"), 3).tolist()
    [0.667, 0.333]
    >>> np.round(update.numpy().astype("float64"), 3).tolist()
    [0.667, 0.667]
    >>> hybrid = IMTLG(loss_scaling=True)
    >>> hybrid.build((2, 2))
    >>> hybrid.transform_losses(keras.ops.convert_to_tensor([0.5, 4.0])).numpy()
    array([0.5, 4. ], dtype=float32)

    References:
        Liyang Liu, Yi Li, Zhanghui Kuang, Jing-Hao Xue, Yimin Chen, Wenming
        Yang, Qingmin Liao, Wayne Zhang. "Towards Impartial Multi-task
        Learning". ICLR 2021 (OpenReview IMPnRXEWpvr). No official code;
        matched against LibMTL `LibMTL/weighting/IMTL.py` (commit daa780e),
        whose gradient part this is.

    Note:
        LibMTL's "IMTL" combines IMTL-G with IMTL-L (learnable loss scales
        e^{s_t} L_t - s_t, s initialised to 0): that is this class with
        `loss_scaling=True`; the default is IMTL-G alone, i.e. LibMTL's
        IMTL at s = 0. (In the LibMTL commit cited s is an `nn.Parameter`
        trained by the model's optimizer; commit 2d842d6 makes it a plain
        tensor, which no optimizer updates.) The loss scales need positive
        losses: with L_t = 0, s_t grows without bound. The loss-weighting
        strategy `"imtl_l"` is IMTL-L alone. Where the reference inverts a
        singular matrix (identical or zero rows) we return the minimum-norm
        solution (finite; identical rows give alpha_t = 1/T); zero rows get
        u_t = 0 instead of the reference's NaN. Singular values below 1e-6
        of the largest count as zero (the Gramian is float32).
    """

    requires: ClassVar[str] = "gramian"
    supports_rep_grad: ClassVar[bool] = True
    supports_missing_tasks: ClassVar[bool] = True

    def __init__(self, loss_scaling=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(loss_scaling, bool):
            raise ValueError(
                f"IMTLG `loss_scaling` must be True or False, got {loss_scaling!r}."
            )
        self.loss_scaling = loss_scaling
        # The loss scales are state (trainable); without them IMTL-G is
        # stateless.
        self.stateful = loss_scaling

    def get_config(self):
        config = super().get_config()
        config["loss_scaling"] = self.loss_scaling
        return config

    def build(self, input_shape):
        super().build(input_shape)
        if self.loss_scaling:
            self.loss_scales = self.add_weight(
                shape=(self.num_tasks,),
                initializer="zeros",
                trainable=True,
                name="loss_scales",
                task_axis=0,
            )

    def transform_losses(self, losses, task_mask=None):
        """IMTL-L's scaled losses exp(s) L - s, or `losses` without scaling.

        The model differentiates these (per task, and their sum for s).
        With `task_mask`, an absent task's term is 0 (as in `"imtl_l"`), so
        its s_t gets no gradient.
        """
        if not self.loss_scaling:
            return losses
        losses = ops.convert_to_tensor(losses)
        if not self.built:
            self.build(tuple(losses.shape))
        self._check_num_tasks(losses)
        s = ops.convert_to_tensor(self.loss_scales)
        losses = ops.cast(losses, s.dtype)
        terms = ops.exp(s) * losses - s
        if task_mask is not None:
            terms = ops.where(present_tasks(task_mask), terms, 0.0)
        return terms

    def reset_state(self):
        if self.loss_scaling and self.built:
            self.loss_scales.assign(ops.zeros_like(self.loss_scales))

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        gramian = ops.cast(gramian, solver_dtype())
        if task_mask is None:
            weights = _imtl_g_weights(gramian)
        else:
            weights = _present_imtl_g_weights(gramian, present_tasks(task_mask))
        return ops.cast(weights, self.compute_dtype)
