"""MoDo: multi-objective gradient with double sampling (Chen et al., 2023)."""

from __future__ import annotations

from keras import ops

from keras_mtl.weighting._argument_ops import as_float
from keras_mtl.weighting._multi_batch_aggregation import MultiBatchAggregation
from keras_mtl.weighting._simplex_ops import project_shifted_onto_simplex
from keras_mtl.weighting.registry import register_strategy


@register_strategy("modo")
class MoDo(MultiBatchAggregation):
    """Task weights by one projected stochastic step per training step.

    Notation: J^(b) the `(T, P)` per-task gradients on mini-batch b, Delta
    the probability simplex, Pi its Euclidean projection, lambda in Delta
    the task weights (state, uniform at first). Each training step draws
    three independent mini-batches (the model splits the batch of `fit`
    into three consecutive parts, `batches_per_step = 3`) and

        A       = J^(1) J^(2)^T                       (T x T, not symmetric)
        lambda <- Pi(lambda - gamma (A lambda + rho lambda))
        update  = sum_t lambda_t g_t^(3)

    with the NEW lambda. Since E[A] is the Gramian of the expected
    gradients, A lambda is an unbiased estimate of the gradient of
    1/2 lambda^T G lambda: the lambda step is one projected stochastic
    gradient step on the min-norm problem of MGDA, regularised by
    rho/2 ||lambda||^2, and the double sampling removes the bias a single
    batch's Gramian would give. The update uses a third batch.

    Scale: lambda is on the simplex, so the update has the scale of a MEAN
    of task gradients (LibMTL's and TorchJD's), not of a sum.

    Heads: each task's own variables receive the mean of its gradients on
    the three sub-batches, unweighted (LibMTL divides the accumulated head
    gradients by 3).

    `compute_weights(matrix)` performs the lambda step on any `(T, T)`
    matrix (TorchJD's `MoDoWeighting`, given J^(1) J^(2)^T); given one
    `(T, P)` matrix J, `call` takes A = J J^T and updates with J (the
    biased single-batch use TorchJD warns about). With `training=False` the
    step is computed but not stored.

    Properties: stateful (lambda, per task); three forward passes and 3T
    backward passes per step, on three sub-batches of a third of the batch
    each (double the batch size of `fit` to keep the sub-batches as large
    as another method's batch); not invariant to gradient scales (gamma
    multiplies A); no `rep_grad`, no missing labels (LibMTL has neither).

    Args:
        gamma: > 0, the step size of the lambda update (default 0.1,
            TorchJD's and the authors'; LibMTL's default is 1e-3).
        rho: >= 0, the l2 regularisation of lambda (default 0.1).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.modo import MoDo
    >>> strategy = MoDo(gamma=0.1, rho=0.1)
    >>> a = keras.ops.convert_to_tensor([[1.0, 1.0], [2.0, 3.0]])
    >>> [round(float(v), 4) for v in strategy.compute_weights(a)]
    [0.575, 0.425]
    >>> [round(float(v), 4) for v in strategy.compute_weights(a)]
    [0.6455, 0.3545]

    References:
        Lisha Chen, Heshan Fernando, Yiming Ying, Tianyi Chen. "Three-Way
        Trade-Off in Multi-Objective Learning: Optimization, Generalization
        and Conflict-Avoidance". Advances in Neural Information Processing
        Systems 36 (NeurIPS), 2023; JMLR 25, 2024. arXiv:2305.20057.
        Code: LibMTL (median-research-group/LibMTL `LibMTL/weighting/MoDo.py`,
        commit 7a2cbe2); TorchJD 0.18.0 (`torchjd/aggregation/_modo.py`,
        `MoDoWeighting`).

    Note:
        Batches as in LibMTL's trainer: J^(1), J^(2) from the first two of
        the three batches, the update from the third (LibMTL draws three
        consecutive loader batches per step; here they are the three parts
        of one `fit` batch, so a batch of 3B samples here is LibMTL's three
        batches of B). The orientation is LibMTL's, A = J^(1) J^(2)^T (pass
        the same A to TorchJD's weighting). The authors' repository uses
        two batches and updates with the sum over both (twice the scale).

        Checked against TorchJD 0.18.0's `MoDoWeighting` on 50 sequences of
        four calls (T from 2 to 40; random cross-batch products, rank-one,
        zero, zero-row, mixed-scale and 1e-15 to 1e15-scaled matrices), with
        gamma 0.1 and LibMTL's 1e-3: the same weights to 5.6e-16 (float64)
        and 2.4e-7 (float32) wherever TorchJD's stay on the simplex. Where
        lambda - gamma A lambda has entries beyond about 1e8 (float32; 1e16
        in float64), TorchJD's projection rounds every entry of y - tau to
        0 and returns all-zero, then uniform, weights (12 of the 50 float32
        sequences); this one subtracts the largest entry before projecting
        (the projection is shift-invariant) and returns the vertex. LibMTL's
        `MoDo.py` runs the same recursion (read, not run: its trainer needs
        torchvision).
    """

    def __init__(self, gamma=0.1, rho=0.1, **kwargs):
        super().__init__(**kwargs)
        gamma = as_float(gamma, "gamma", "MoDo", allow_bool=False)
        rho = as_float(rho, "rho", "MoDo", allow_bool=False)
        if not gamma > 0.0 or gamma == float("inf"):
            raise ValueError(f"MoDo `gamma` must be a positive number, got {gamma!r}.")
        if not 0.0 <= rho < float("inf"):
            raise ValueError(f"MoDo `rho` must be a number >= 0, got {rho!r}.")
        self.gamma = gamma
        self.rho = rho

    def build(self, input_shape):
        super().build(input_shape)
        self.task_weights = self.add_uniform_weights("task_weights")

    def reset_state(self):
        self.reset_uniform(self.task_weights)

    def compute_weights(self, matrix, losses=None, training=True):
        """One lambda step on the `(T, T)` matrix A; returns the new lambda."""
        matrix = ops.convert_to_tensor(matrix)
        self.build_for_matrix(matrix)
        self._check_num_tasks(matrix, "a matrix")
        current = ops.cast(ops.stop_gradient(self.task_weights), matrix.dtype)
        direction = ops.matmul(matrix, current) + self.rho * current
        weights = project_shifted_onto_simplex(current - self.gamma * direction)
        if training:
            self.task_weights.assign(ops.cast(weights, self.task_weights.dtype))
        return weights

    def call(self, grads, losses=None, training=True):
        first, second, update_batch = self.batch_matrices(grads)
        weights = self.compute_weights(
            ops.matmul(first, ops.transpose(second)), training=training
        )
        return ops.matmul(weights[None, :], update_batch)[0], weights

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "rho": self.rho})
        return config
