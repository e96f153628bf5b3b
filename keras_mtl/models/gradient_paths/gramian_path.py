"""The Gramian path: the strategy gets G G^T, never G (TensorFlow)."""

from __future__ import annotations

from keras_mtl.models.gradient_paths import _tape_ops as tape_ops
from keras_mtl.models.gradient_paths.parameter_path import ParameterGradientPath


class GramianGradientPath(ParameterGradientPath):
    """`compile(per_task_gradients="gramian")` on a trunk with no cut
    worth making (see `StagedGramianGradientPath`).

    The Gramian is summed variable by variable, G G^T = sum_v G_v G_v^T
    (G_v: the `(T, P_v)` per-task gradients of shared variable v, summed
    over replicas), the strategy's `compute_weights` turns it into weights
    w, and the update sum_t w_t g_t is the gradient of sum_t w_t L_t: one
    more backward pass, so the `(T, P)` matrix is never formed.
    """

    def combine(self, tape, blocks, objectives, finite, losses, kwargs):
        gramian = tape_ops.gramian_of_blocks(blocks)
        weights = self.weights_from_gramian(gramian, finite, losses, kwargs)
        shared = self.model._task_graph.shared_variables
        return tape_ops.weighted_gradients(tape, objectives, shared, weights), weights
