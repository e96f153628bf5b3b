"""UPGrad: unconflicting projection of gradients (Jacobian descent)."""

from keras import ops

from keras_mtl.weighting._dual_cone_aggregation import DualConeAggregation
from keras_mtl.weighting._dual_cone_ops import project_weights
from keras_mtl.weighting.registry import register_strategy


@register_strategy("upgrad", "up_grad")
class UPGrad(DualConeAggregation):
    """UPGrad: projects every task gradient onto the dual cone, then averages.

    Notation: G is the `(T, P)` matrix of task gradients g_t, A = G G^T its
    Gramian, p the preference vector (default p_t = 1/T) and e_t the t-th
    basis vector. The dual cone of the rows of G is {d : g_t . d >= 0 for
    all t}; pi(x) is the Euclidean projection of x onto it.

        update = sum_i p_i pi(g_i) = sum_t w_t g_t

    By Proposition 1 of the paper, pi(G^T u) = G^T v(u) with

        v(u) = argmin_v v^T A' v   subject to   v >= u   (elementwise),

    so the weights are w = sum_i v(p_i e_i). As in TorchJD, the QP uses the
    normalised and regularised Gramian

        A' = A / trace(A) + reg_eps * I    (A' = reg_eps * I if trace(A) < norm_eps),

    which makes A' positive definite and the weights invariant to a common
    scaling of the gradients. The T small QPs are solved exactly in-graph by
    a batched active-set method (`_dual_cone_ops.project_weights`) instead of
    quadprog.

    Defaults (pref_vector = mean, norm_eps = reg_eps = 1e-4) are TorchJD's
    (`src/torchjd/aggregation/_upgrad.py`) and LibMTL's (`UPGrad.py`,
    `--UPGrad_norm_eps`, `--UPGrad_reg_eps`).

    Scale: with the default preference the update has the scale of the MEAN
    of the task gradients (as in TorchJD and LibMTL), not of their sum: when
    no two gradients conflict, w_t = 1/T and the update is exactly the mean.
    Pass `pref_vector=[1.0] * T` for the scale of a sum (the update is
    linear in the preference vector).

    Regularisation scale (`eps_mode`). `reg_eps` is added to the Gramian
    after its normalisation to unit trace, so it is already relative to
    trace(A); what is absolute in TorchJD is `norm_eps`: below a trace of
    1e-4 (every gradient of norm below about 1e-2 / sqrt(T)) the Gramian is
    replaced by zeros, A' = reg_eps * I, and the weights fall back to the
    preference p. The update is then the plain preference-weighted mean and
    may conflict with a task (measured: cosine -0.27 with a task at T = 20
    for gradients of norm 1e-5). With `eps_mode="relative"` there is no
    absolute threshold: A' = A / trace(A) + reg_eps * I whenever trace(A) > 0
    (the Gramian regularised by `reg_eps * trace(A)`), so the update is
    non-conflicting (up to the `reg_eps` bound below) and positively
    homogeneous at every scale, as long as the float32 Gramian does not
    underflow (gradient norms above about 1e-18); `norm_eps` is then unused.
    The default stays "absolute": it is TorchJD 0.18's and LibMTL's
    behaviour, which this class reproduces on every input, degenerate ones
    included; choose "relative" when gradients may be tiny (small losses
    or gradients near convergence).

    Properties: stateless; non-conflicting (g_t . update >= 0 for all t, up to
    the `reg_eps` regularisation: g_t . update >= -reg_eps * trace(A) * v_t,
    and while trace(A) >= norm_eps unless `eps_mode="relative"`);
    equal to the preference-weighted mean when no gradients conflict;
    positively homogeneous (scaling all gradients by c > 0 scales the update
    by c, while trace(A) >= norm_eps, or at every scale with
    `eps_mode="relative"`); permutation equivariant; needs only
    the Gramian (`requires = "gramian"`).

    Missing tasks: with a `task_mask`, the rows of absent tasks are dropped:
    every present task's gradient is projected onto the dual cone of the
    present rows, with the Gramian normalised by the trace of the present
    block, and absent tasks get weight 0. The default preference becomes 1/K
    over the K present tasks; a given `pref_vector` keeps its entries for
    the present tasks (not renormalised). The weights are those of a UPGrad
    built for the present tasks (with the preference entries of those
    tasks).

    Args:
        pref_vector: None (weights 1/T) or one finite float per task: the
            weights p used to combine the projected gradients.
        norm_eps: the Gramian is replaced by zeros when its trace (the
            squared Frobenius norm of G) is below this value, so that tiny
            gradients fall back to the preference-weighted mean.
        reg_eps: added to the diagonal of the normalised Gramian so that it
            is positive definite.
        eps_mode: "absolute" (default, TorchJD: the Gramian is zeroed when
            its trace is below `norm_eps`) or "relative" (zeroed only when
            its trace is 0; see "Regularisation scale" above).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.upgrad import UPGrad
    >>> grads = np.array([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], "float32")
    >>> update = UPGrad().aggregate(grads)
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [0.293, 1.9, 1.9]

    References:
        Quinton, P. and Rey, V. "Jacobian Descent for Multi-Objective
        Optimization." arXiv:2406.16232, 2024. Official code: TorchJD,
        https://github.com/TorchJD/torchjd (`aggregation/_upgrad.py`,
        `_utils/dual_cone.py`, `_utils/gramian.py`).

    Note:
        The reference's `solver="quadprog"` argument is not exposed: the QP
        is solved in-graph in float64 by an exact active-set method, which
        agrees with quadprog to about 1e-9 on the same matrix. As in the
        reference, the Gramian is normalised in float32 before the float64
        solve, so end-to-end results differ from TorchJD's only through
        float32 rounding of the Gramian: about 1e-7 relative on
        well-conditioned inputs, up to about 1e-4 in the weights (not in
        the update) when T > P, where only the `reg_eps` term makes A'
        definite. With `reg_eps = 0` and rank-deficient gradients (where
        quadprog fails) the result stays finite: a constraint whose row is
        numerically a combination of the others is never released. Not
        differentiable through the weights (they are used as constants).
    """

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        gramian = ops.convert_to_tensor(gramian)
        pref, matrix = self._preference_and_matrix(gramian, task_mask)
        projected = project_weights(ops.diag(pref), matrix)
        return ops.cast(ops.sum(projected, axis=0), gramian.dtype)
