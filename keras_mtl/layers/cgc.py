"""Customized Gate Control, the single extraction level of PLE (Tang et al.,
RecSys 2020)."""

from __future__ import annotations

from keras import ops

from keras_mtl.layers.ple import ProgressiveLayeredExtraction
from keras_mtl.utils.serialization import register_serializable


@register_serializable
class CustomizedGateControl(ProgressiveLayeredExtraction):
    """CGC: shared and task-specific experts, one gate per task.

    m_s shared experts E_s and, for each task k, m_k experts E_k of its own
    read the same input x. Task k's gate mixes its own experts and the
    shared ones, never another task's:

        S^k(x) = [E_k,1(x), ..., E_k,m_k(x), E_s,1(x), ..., E_s,m_s(x)]
        g^k(x) = softmax(W_k x)                   in R^(m_k + m_s)
        h^k(x) = sum_i g^k_i(x) S^k_i(x)          task k's tower input

    The layer returns [h^1, ..., h^T]; put one tower (task head) on each.
    A task's loss reaches only the shared experts, its own experts and its
    own gate: private experts and gates of the other tasks get no gradient
    from it.

    Relation to `ProgressiveLayeredExtraction`: PLE stacks CGC levels (with
    a shared gate between levels), and one level of it is exactly a CGC.
    This class is a PLE with `num_levels=1` (no shared gate is built, since
    the last level's shared output is never read): it reuses PLE's level
    (`self.levels[0]`), experts (`ExpertBank`) and gates (`Gate`) and only
    fixes the depth, so the two cannot drift apart. Special cases:
    `num_task_experts=0` is MMoE; `num_shared_experts=0` gives T separate
    mixtures of experts.

    Inputs of any rank work: experts and gates act on the last axis
    `(..., D)`, the outputs are `(..., expert_units[-1])`.

    Args:
        num_tasks: T (int >= 1).
        expert_units: width of each expert: an int (one layer) or a list of
            ints (an MLP; the last is the output width).
        num_shared_experts: m_s (int >= 0). Default 1.
        num_task_experts: m_k, an int for every task or a list of T ints.
            Default 1. Every task needs m_k + m_s >= 1.
        expert_activation: activation after every expert layer. Default
            `"relu"`.
        gate_use_bias: whether gates have a bias (default False: the
            paper's gates are `softmax(W x)`).
        kernel_initializer: initializer of expert and gate kernels (each
            expert and gate gets its own draw).
        bias_initializer: initializer of the expert biases.
        kernel_regularizer: optional regularizer of the expert kernels.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> from keras_mtl.layers.cgc import CustomizedGateControl
    >>> inputs = keras.Input((6,))
    >>> towers = CustomizedGateControl(
    ...     num_tasks=2, expert_units=[8, 4], num_shared_experts=2,
    ...     num_task_experts=[1, 2])(inputs)
    >>> model = keras_mtl.MultiTaskModel(
    ...     inputs,
    ...     {"ctr": keras.layers.Dense(1)(towers[0]),
    ...      "cvr": keras.layers.Dense(1)(towers[1])},
    ... )
    >>> [tuple(t.shape) for t in towers]
    [(None, 4), (None, 4)]

    References:
        Hongyan Tang, Junning Liu, Ming Zhao, Xudong Gong. "Progressive
        Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model
        for Personalized Recommendations". RecSys 2020.
        doi:10.1145/3383313.3412236.

    Note:
        Deviations and conventions. Gates read the last axis of the input;
        LibMTL's `CGC` (architecture/CGC.py, LibMTL 1.1.5) gates on the
        flattened input, which is the same for `(batch, D)` inputs. The
        expert order inside a gate is [task-specific..., shared...];
        LibMTL orders [shared..., task-specific...].
        This only permutes the gate's outputs, but matters when porting
        weights. Expert and gate weights are initialised with
        `kernel_initializer` (LibMTL uses PyTorch's defaults).
    """

    def __init__(
        self,
        num_tasks,
        expert_units,
        num_shared_experts=1,
        num_task_experts=1,
        expert_activation="relu",
        gate_use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(
            num_tasks=num_tasks,
            expert_units=expert_units,
            num_levels=1,
            num_shared_experts=num_shared_experts,
            num_task_experts=num_task_experts,
            expert_activation=expert_activation,
            gate_use_bias=gate_use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            **kwargs,
        )

    def gate_weights(self, inputs):
        """The task gates' softmax weights: a list of T tensors, task k's of
        shape `(..., m_k + m_s)` (its own experts first, then the shared)."""
        inputs = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        if not self.built:
            self.build(tuple(inputs.shape))
        return [gate(inputs) for gate in self.levels[0].task_gates]

    def get_config(self):
        config = super().get_config()
        del config["num_levels"]
        return config
