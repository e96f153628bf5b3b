"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018)."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.layers._experts import (
    ExpertBank,
    ExpertTowers,
    Gate,
    check_count,
    mix,
    normalize_units,
)
from keras_mtl.utils.serialization import register_serializable


@register_serializable
class MMoE(ExpertTowers, keras.layers.Layer):
    """Multi-gate Mixture-of-Experts: shared experts, one softmax gate per task.

    E expert networks f_1..f_E (identical MLPs with their own weights) read
    the same input x. Each task k has its own gate, a linear map followed by
    a softmax over the experts, and receives the gate-weighted mixture:

        g^k(x) = softmax(W_k x + b_k)             in R^E, sum_i g^k_i = 1
        h^k(x) = sum_i g^k_i(x) f_i(x)            task k's tower input

    The layer returns the list [h^1, ..., h^T]; put one tower (task head) on
    each. With E = 1 every gate is 1 and MMoE is the shared-bottom model;
    with one gate for all tasks it would be the one-gate MoE of the paper.

    Inputs of any rank work: experts and gates act on the last axis
    `(..., D)`, and the outputs are `(..., expert_units[-1])`.

    Args:
        num_tasks: T, the number of gates and outputs (int >= 1).
        num_experts: E, the number of experts (int >= 1).
        expert_units: width of each expert: an int (one layer) or a list of
            ints (an MLP; the last is the output width).
        expert_activation: activation after every expert layer (the paper's
            experts are ReLU layers). Default `"relu"`.
        gate_use_bias: whether gates have a bias. The paper's gate is
            `softmax(W_k x)`, so the default is False.
        kernel_initializer: initializer of expert and gate kernels. Each
            expert gets its own draw (a seeded initializer uses seed + i).
        bias_initializer: initializer of the expert biases.
        kernel_regularizer: optional regularizer of the expert kernels.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> from keras_mtl.layers.mmoe import MMoE
    >>> inputs = keras.Input((6,))
    >>> towers = MMoE(num_tasks=2, num_experts=3, expert_units=[8, 4])(inputs)
    >>> model = keras_mtl.MultiTaskModel(
    ...     inputs,
    ...     {"ctr": keras.layers.Dense(1)(towers[0]),
    ...      "cvr": keras.layers.Dense(1)(towers[1])},
    ... )
    >>> [tuple(t.shape) for t in towers]
    [(None, 4), (None, 4)]

    References:
        Jiaqi Ma, Zhe Zhao, Xinyang Yi, Jilin Chen, Lichan Hong, Ed H. Chi.
        "Modeling Task Relationships in Multi-task Learning with Multi-gate
        Mixture-of-Experts". KDD 2018. doi:10.1145/3219819.3220007.
    """

    def __init__(
        self,
        num_tasks,
        num_experts,
        expert_units,
        expert_activation="relu",
        gate_use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tasks = check_count(num_tasks, "num_tasks", 1)
        self.num_experts = check_count(num_experts, "num_experts", 1)
        self.expert_units = normalize_units(expert_units)
        self._set_expert_options(
            expert_activation,
            gate_use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
        )

    def build(self, input_shape):
        self._check_feature_axis(input_shape)
        self.experts = ExpertBank(
            self.num_experts,
            self.expert_units,
            activation=self.expert_activation,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            dtype=self.dtype_policy,
            name="experts",
        )
        self.experts.build(input_shape)
        self.gates = []
        for task in range(self.num_tasks):
            gate = Gate(
                self.num_experts,
                use_bias=self.gate_use_bias,
                kernel_initializer=self.kernel_initializer,
                seed_offset=1000 + task,
                dtype=self.dtype_policy,
                name=f"gate_{task}",
            )
            gate.build(input_shape)
            self.gates.append(gate)

    def call(self, inputs):
        experts = self.experts(inputs)
        return [mix(gate(inputs), experts) for gate in self.gates]

    def gate_weights(self, inputs):
        """The gates' softmax weights, shape `(..., num_tasks, num_experts)`."""
        inputs = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        if not self.built:
            self.build(tuple(inputs.shape))
        return ops.stack([gate(inputs) for gate in self.gates], axis=-2)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_tasks=self.num_tasks,
            num_experts=self.num_experts,
            expert_units=list(self.expert_units),
            **self._expert_options_config(),
        )
        return config
