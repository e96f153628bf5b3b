"""The base of gradient methods that take per-task gradients on several
independent mini-batches per step (MoDo, SDMGrad)."""

from __future__ import annotations

from typing import ClassVar

from keras import ops

from keras_mtl.weighting.gradient_aggregation import GradientAggregation


class MultiBatchAggregation(GradientAggregation):
    """A gradient method fed k independent per-task gradient matrices.

    The model splits each batch of `fit` into `batches_per_step` = k
    consecutive sub-batches of (nearly) equal size, takes the `(T, P)`
    per-task gradients J^(i) on each, and calls the strategy with their
    `(k, T, P)` stack (and the `(k, T)` sub-batch losses). Cross-batch
    products such as A = J^(1) J^(2)^T are then unbiased estimates of the
    Gramian of the expected gradients, which same-batch Gramians are not.

    Given one `(T, P)` matrix J (standalone use), the strategy uses it as
    every J^(i): the "single-matrix" use of TorchJD's weightings (biased,
    as its documentation warns, but well defined).

    Subclasses implement `call` on `batch_matrices(grads)`, the list of the
    k matrices. Each task's own (head) variables receive the MEAN of its
    gradients on the k sub-batches times `head_gradient_scales`.
    """

    batches_per_step: ClassVar[int] = 3
    stateful = True

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) == 3:
            input_shape = input_shape[1:]
        super().build(input_shape)

    def add_uniform_weights(self, name):
        """A `(T,)` per-task state variable holding 1/T (exactly, in the
        strategy's dtype: Keras' `Constant` initializer rounds through
        float32)."""
        return self.add_weight(
            shape=(self.num_tasks,),
            initializer=lambda shape, dtype=None: ops.full(
                shape, 1.0 / self.num_tasks, dtype=dtype
            ),
            trainable=False,
            name=name,
            task_axis=0,
        )

    def reset_uniform(self, variable):
        """Sets `variable` back to 1/T in every entry."""
        variable.assign(ops.full(variable.shape, 1.0 / self.num_tasks, variable.dtype))

    def build_for_matrix(self, matrix):
        """Builds the strategy for a `(T, T)` matrix given to
        `compute_weights` before any call (standalone use)."""
        if not self.built:
            self.build(tuple(matrix.shape))

    def batch_matrices(self, grads):
        """The k `(T, P)` matrices of `grads` (`(k, T, P)`, or one `(T, P)`
        matrix standing for each of them)."""
        count = self.batches_per_step
        if len(grads.shape) == 2:
            self._check_num_tasks(grads, "gradients")
            return [grads] * count
        if len(grads.shape) != 3 or grads.shape[0] != count:
            raise ValueError(
                f"{type(self).__name__} expects per-task gradients of shape "
                f"({count}, T, P) (one (T, P) matrix per mini-batch) or "
                f"(T, P), got shape {tuple(grads.shape)}."
            )
        matrices = [grads[i] for i in range(count)]
        self._check_num_tasks(matrices[0], "gradients")
        return matrices
