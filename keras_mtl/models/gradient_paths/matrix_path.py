"""The matrix path: the strategy gets the `(T, P)` per-task gradients."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.models.gradient_paths.parameter_path import ParameterGradientPath


class MatrixGradientPath(ParameterGradientPath):
    """`compile(per_task_gradients="matrix")`, the default for gradient
    methods: the per-task gradients of the shared variables are flattened
    into the `(T, P)` matrix G, summed over replicas, and the strategy
    returns the `(P,)` update, which is cut back into the variables'
    shapes."""

    def combine(self, tape, blocks, objectives, finite, losses, kwargs):
        update, weights = self.update_from_matrix(blocks, finite, losses, kwargs)
        grads, offset = [], 0
        for variable in self.model._task_graph.shared_variables:
            size = math.prod(variable.shape)
            piece = ops.reshape(update[offset : offset + size], variable.shape)
            grads.append(ops.cast(piece, variable.dtype))
            offset += size
        return grads, weights
