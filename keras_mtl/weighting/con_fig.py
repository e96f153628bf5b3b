"""ConFIG: conflict-free update with equal cosine to every task gradient."""

import numpy as np
from keras import ops

from keras_mtl.weighting._dual_cone_aggregation import _check_pref_vector
from keras_mtl.weighting._solver_ops import float64_function
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy


def _matvec(matrix, vector):
    """The `(T,)` product of a `(T, T)` matrix with a `(T,)` vector."""
    return ops.matmul(matrix, vector[:, None])[:, 0]


#: Upper bound on the relative cut-off of the pseudo-inverse (see the Note).
_MAX_RCOND = 1e-4


@register_strategy("config", "con_fig", "conflict_free")
class ConFIG(GradientAggregation):
    """ConFIG: the update whose cosine with every task gradient is equal.

    Notation: G is the `(T, P)` matrix of task gradients g_t, u_t = g_t /
    ||g_t|| their directions (u_t = 0 when g_t = 0), U the `(T, P)` matrix of
    the u_t and p the preference vector (default p_t = 1, equal weights).

        d      = pinv(U) p        (u_t . d = p_t when U has full row rank)
        d_hat  = d / ||d||
        update = (sum_t g_t . d_hat) d_hat

    The direction solves U d = p in the least-squares, minimum-norm sense:
    with p = 1 it makes the same angle with every task gradient, so it
    conflicts with none; its length is the sum of the projections of the raw
    gradients onto it (ConFIG's default `ProjectionLength`), so the update has
    the scale of a SUM of gradients. The pseudo-inverse is computed from the
    `(T, T)` cosine matrix C = U U^T in float64: pinv(U) p = U^T C^+ p, so
    the update is the combination sum_t w_t g_t with
    w = (sum_t g_t . d_hat) / ||d|| * C^+ p / ||g||.

    Defaults follow the official code (`conflictfree/grad_operator.py`,
    `ConFIG_update` with `EqualWeight` and `ProjectionLength`) and TorchJD's
    `ConFIG` (`src/torchjd/aggregation/_config.py`, preference = ones).

    Properties: stateless; for T <= P with linearly independent gradients,
    cos(update, g_t) is the same for every task, and every g_t . update >= 0
    (non-conflicting); invariant to the scale of each single gradient in
    direction, positively homogeneous as a whole (scaling all gradients by
    c > 0 scales the update by c); with one task the update is that task's
    gradient; with identical rows it is their sum; permutation equivariant.
    Needs the gradients themselves (`requires = "gradients"`).

    Missing tasks: with a `task_mask`, the rows of absent tasks are
    dropped: they get preference 0 and direction u_t = 0 (a zero singular
    value, cut off by the pseudo-inverse), the cut-off `rcond` counts only
    the K present rows, and the length sums the projections of the present
    gradients. The update and the present tasks' weights are those of a
    ConFIG built for the present tasks (with their entries of
    `pref_vector`); absent tasks get weight 0.

    Args:
        pref_vector: None (equal weights 1) or one finite float per task: the
            target cosines p of the direction before normalisation, i.e. the
            update makes cosines proportional to p with the task gradients.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.con_fig import ConFIG
    >>> grads = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], "float32")
    >>> update = ConFIG().aggregate(grads)
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [0.159, 2.071, 2.071]

    References:
        Liu, Q., Chu, M. and Thuerey, N. "ConFIG: Towards Conflict-free
        Training of Physics Informed Neural Networks." ICLR 2025,
        arXiv:2408.11104. Official code: https://github.com/tum-pbs/ConFIG
        (`conflictfree/grad_operator.py`, `length_model.py`).

    Note:
        The pseudo-inverse treats singular values of U below
        `rcond * max(singular values)` as zero with
        `rcond = min(float32_eps * max(T, P), 1e-4)`. The first term is the
        default of `torch.linalg.pinv` / `torch.linalg.lstsq` used by the
        references; the cap is ours: without it, the reference's cut-off
        grows with the parameter count and exceeds 1 (everything truncated,
        a zero update) for P above about 8.4 million. The cut-off rule is
        the references' whenever max(T, P) <= 838. The computation uses the
        float64 Gramian of the gradients (a float64 copy of the `(T, P)`
        matrix is made), so it is more accurate than the float32
        references; where the answer is decided by rounding (exactly
        opposite gradients, whose exact update is 0) the references return
        a rounding-dependent vector and we return about 0. For two tasks the
        official `ConFIGOperator` uses a closed form (`ConFIG_update_double`)
        that gives the same update for non-parallel gradients (and NaN for
        parallel ones, where this implementation returns the sum).
    """

    requires = "gradients"
    supports_missing_tasks = True

    def __init__(self, pref_vector=None, **kwargs):
        super().__init__(**kwargs)
        self.pref_vector = _check_pref_vector("ConFIG", pref_vector)

    def build(self, input_shape):
        super().build(input_shape)
        if self.pref_vector is not None and len(self.pref_vector) != self.num_tasks:
            raise ValueError(
                f"ConFIG `pref_vector` has {len(self.pref_vector)} entries but "
                f"the strategy is built for {self.num_tasks} tasks."
            )

    def get_config(self):
        config = super().get_config()
        config["pref_vector"] = (
            None if self.pref_vector is None else list(self.pref_vector)
        )
        return config

    def call(self, grads, losses=None, training=True, task_mask=None):
        self._check_num_tasks(grads, "gradients")
        grads = ops.convert_to_tensor(grads)
        num_tasks = grads.shape[0]
        if self.pref_vector is None:
            pref = ops.ones((num_tasks,), grads.dtype)
        else:
            pref = ops.convert_to_tensor(self.pref_vector, dtype=grads.dtype)
        if task_mask is None:
            present = ops.ones((num_tasks,), grads.dtype)
        else:
            present = ops.cast(ops.convert_to_tensor(task_mask) > 0, grads.dtype)
        weights = _config_weights(grads, pref, present, task_mask is not None)
        weights = ops.cast(weights, grads.dtype)
        update = ops.matmul(weights[None, :], grads)[0]
        return update, weights


@float64_function
def _config_weights(grads, pref, present, masked):
    """ConFIG's `(T,)` weights, computed in float64 (also on JAX)."""
    num_tasks, num_params = grads.shape
    f64 = "float64"
    pref = ops.cast(pref, f64)
    wide = ops.cast(grads, f64)
    num_rows = float(num_tasks)
    if masked:
        # Drop the absent rows: zero preference and zero rows (u_t = 0),
        # whose zero singular values the cut-off removes; the cut-off
        # counts the K present rows.
        present = ops.cast(present, f64)
        pref = pref * present
        wide = wide * present[:, None]
        num_rows = ops.sum(present)
    gramian = ops.matmul(wide, ops.transpose(wide))
    norms = ops.sqrt(ops.maximum(ops.diagonal(gramian), 0.0))
    inv_norms = ops.where(norms > 0, 1.0 / ops.where(norms > 0, norms, 1.0), 0.0)
    cosines = inv_norms[:, None] * gramian * inv_norms[None, :]
    # C^+ p with the singular values of U (square roots of the
    # eigenvalues of C) below rcond * max cut off.
    eigvals, eigvecs = ops.eigh(cosines)
    sing = ops.sqrt(ops.maximum(eigvals, 0.0))
    eps32 = float(np.finfo(np.float32).eps)
    size = ops.cast(ops.maximum(num_rows, float(num_params)), f64)
    rcond = ops.minimum(eps32 * size, _MAX_RCOND)
    keep = sing > rcond * ops.max(sing)
    inv_eig = ops.where(keep, 1.0 / ops.where(keep, eigvals, 1.0), 0.0)
    along = _matvec(ops.transpose(eigvecs), pref)
    coeffs = _matvec(eigvecs, inv_eig * along)
    # d = G^T (coeffs / norms); ||d||^2 = coeffs^T C coeffs.
    direction = coeffs * inv_norms
    sq_norm = ops.sum(coeffs * _matvec(cosines, coeffs))
    denom = ops.maximum(ops.sqrt(ops.maximum(sq_norm, 0.0)), 1e-12)
    length = ops.sum(_matvec(gramian, direction)) / denom
    return length * direction / denom
