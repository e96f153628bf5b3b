"""Aligned-MTL (Senushkin et al., CVPR 2023)."""

from __future__ import annotations

from typing import ClassVar

import keras
from keras import ops

from keras_mtl.weighting._solver_ops import solver_dtype, solver_function
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# torch.finfo().eps of the reference: float32's machine epsilon.
_FLOAT32_EPS = 1.1920928955078125e-07
_SCALE_MODES = ("min", "median", "rmse")


def aligned_mtl_matrix(gramian, scale_mode="min", task_mask=None):
    """Aligned-MTL's `(T, T)` matrix B from the `(T, T)` Gramian M.

    M = V diag(lambda) V^T; eigenvalues lambda_i <= max(lambda) T eps32 are
    dropped (with their eigenvectors); B = sigma V_r diag(lambda_r)^{-1/2}
    V_r^T with sigma^2 the smallest kept eigenvalue ("min"), their lower
    median ("median") or their mean ("rmse"). With no kept eigenvalue (zero
    gradients) B = 0. The task weights are alpha = B 1 (B is symmetric).

    With `task_mask` (`(T,)`, nonzero for the K present tasks), the rows
    and columns of absent tasks are zeroed: M is then block diagonal, each
    absent task adds a zero eigenvalue (eigenvector e_t) that the threshold
    max(lambda) K eps32 (K, not T) drops, and the kept eigenpairs are those
    of the present block, so B restricted to the present tasks is the
    K-task B, and its absent rows and columns are zeroed.
    """
    gramian = ops.convert_to_tensor(gramian)
    num = gramian.shape[0]
    dtype = gramian.dtype
    count = num
    if task_mask is not None:
        present = ops.cast(ops.convert_to_tensor(task_mask) > 0, dtype)
        gramian = gramian * present[:, None] * present[None, :]
        count = ops.sum(present)
    eigenvalues, eigenvectors = ops.eigh(gramian)
    largest = ops.max(eigenvalues)
    tol = largest * count * _FLOAT32_EPS
    keep = eigenvalues > tol
    rank = ops.sum(ops.cast(keep, "int32"))
    safe = ops.where(keep, eigenvalues, ops.ones_like(eigenvalues))
    if scale_mode == "min":
        inf = ops.full_like(eigenvalues, float("inf"))
        sigma_sq = ops.min(ops.where(keep, eigenvalues, inf))
    elif scale_mode == "median":
        # Kept eigenvalues are the last `rank` of the ascending list; torch's
        # median of n values is the lower one, sorted[(n - 1) // 2].
        index = num - rank + ops.floor_divide(rank - 1, 2)
        sigma_sq = ops.take(eigenvalues, ops.clip(index, 0, num - 1))
    else:
        kept = ops.where(keep, eigenvalues, ops.zeros_like(eigenvalues))
        sigma_sq = ops.sum(kept) / ops.cast(ops.maximum(rank, 1), dtype)
    sigma_sq = ops.where(rank > 0, sigma_sq, ops.zeros_like(sigma_sq))
    inv_sqrt = ops.where(keep, 1.0 / ops.sqrt(safe), ops.zeros_like(safe))
    matrix = ops.sqrt(sigma_sq) * ops.matmul(
        eigenvectors * inv_sqrt[None, :], ops.transpose(eigenvectors)
    )
    if task_mask is not None:
        # Exact zeros where the kept eigenvectors carry rounding noise.
        matrix = matrix * present[:, None] * present[None, :]
    return matrix


def aligned_mtl_weights(gramian, scale_mode="min", task_mask=None):
    """Aligned-MTL's task weights alpha = B 1 (`aligned_mtl_matrix`)."""
    return ops.sum(aligned_mtl_matrix(gramian, scale_mode, task_mask), axis=0)


# On JAX, in float64 whether or not `jax_enable_x64` is set (see
# `solver_function`); on TensorFlow, as written (the same results as ever).
_jax_float64 = keras.backend.backend() == "jax"
_aligned_mtl_weights = (
    solver_function(aligned_mtl_weights) if _jax_float64 else aligned_mtl_weights
)


@register_strategy("aligned_mtl", "amtl")
class AlignedMTL(GradientAggregation):
    """Aligned-MTL: aligns the principal components of the task gradients.

    Notation: T tasks, G the `(T, P)` matrix of task gradients, M = G G^T
    with eigendecomposition V diag(lambda) V^T. Eigenvalues
    lambda_i <= max(lambda) T eps (eps = 1.19e-7, float32's epsilon, as in
    the reference) are dropped with their eigenvectors (V_r, lambda_r).
    Aligned-MTL replaces G by the aligned system B G with

        B = sqrt(lambda_min) V_r diag(lambda_r)^{-1/2} V_r^T,

    whose non-zero singular values all equal sqrt(lambda_min) (condition
    number 1: no dominating or conflicting component), and applies the sum
    of its rows:

        update = sum_t (B G)_t = sum_t alpha_t g_t,    alpha = B 1.

    Scale: the sum of the aligned rows, exactly the LibMTL and authors'
    update (`B.sum(0)`); it is bounded by the smallest singular value of G.
    The returned weights are alpha.

    Properties: stateless; T backward passes (or T head passes with
    `rep_grad=True`, the paper's Aligned-MTL-UB); rows of B G are orthogonal
    with equal norms. It reduces but does not remove the effect of
    rescaling one task (not scale invariant); alpha is invariant to a common
    rescaling of all gradients (the update scales with them).

    Missing tasks: with a `task_mask`, the rows of absent tasks are
    dropped: the eigendecomposition is that of the present block of M (the
    zero eigenvalue each absent row would add is discarded, and the rank
    threshold counts the K present tasks, max(lambda) K eps), so sigma,
    B and alpha are those of Aligned-MTL on the present rows; absent tasks
    get weight 0.

    Args:
        scale_mode: the scale sigma^2 of the aligned singular values:
            "min" (smallest kept eigenvalue, LibMTL and the paper's
            default), "median" or "rmse" (mean), the options of the
            authors' `ProcrustesSolver`.
        rep_grad: apply the method to the gradients of the shared
            representation (Aligned-MTL-UB).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.aligned_mtl import AlignedMTL
    >>> grads = np.array([[1.0, 0.0], [0.0, 2.0]], "float32")
    >>> update, weights = AlignedMTL()(grads)
    >>> np.round(weights.numpy().astype("float64"), 3).tolist()
    [1.0, 0.5]
    >>> np.round(update.numpy().astype("float64"), 3).tolist()
    [1.0, 1.0]

    References:
        Dmitry Senushkin, Nikolay Patakin, Arseny Kuznetsov, Anton Konushin.
        "Independent Component Alignment for Multi-Task Learning". CVPR
        2023. arXiv:2305.19000. Official code: SamsungLabs/MTL
        (`code/optim/aligned/solver.py`, commit 3f577f1); matched against
        LibMTL `LibMTL/weighting/Aligned_MTL.py` (commit 0aaada5).

    Note:
        The eigendecomposition runs in float64 (the reference: float32);
        the rank threshold keeps the reference's float32 epsilon. For an
        all-zero Gramian (where the reference fails on an empty
        eigenvalue list) the weights are 0.
    """

    requires: ClassVar[str] = "gramian"
    supports_rep_grad: ClassVar[bool] = True
    supports_missing_tasks: ClassVar[bool] = True

    def __init__(self, scale_mode="min", **kwargs):
        super().__init__(**kwargs)
        if scale_mode not in _SCALE_MODES:
            raise ValueError(
                f"AlignedMTL `scale_mode` must be one of {_SCALE_MODES}, got "
                f"{scale_mode!r}."
            )
        self.scale_mode = scale_mode

    def get_config(self):
        config = super().get_config()
        config["scale_mode"] = self.scale_mode
        return config

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        gramian = ops.cast(gramian, solver_dtype())
        if task_mask is None:
            weights = _aligned_mtl_weights(gramian, self.scale_mode)
        else:
            task_mask = ops.cast(task_mask, gramian.dtype)
            weights = _aligned_mtl_weights(gramian, self.scale_mode, task_mask)
        return ops.cast(weights, self.compute_dtype)
