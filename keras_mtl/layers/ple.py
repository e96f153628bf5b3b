"""Progressive Layered Extraction (Tang et al., RecSys 2020)."""

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
class ProgressiveLayeredExtraction(ExpertTowers, keras.layers.Layer):
    """PLE: stacked CGC levels of shared and task-specific experts.

    One Customized Gate Control (CGC) level holds m_s shared experts E_s and,
    for each task k, m_k task-specific experts E_k. Task k's gate mixes its
    own experts and the shared ones (never another task's):

        S^k(x) = [E_k,1(x), ..., E_k,m_k(x), E_s,1(x), ..., E_s,m_s(x)]
        g^k(x) = softmax(W_k x)                      in R^(m_k + m_s)
        h^k(x) = sum_i g^k_i(x) S^k_i(x)

    PLE stacks `num_levels` such levels. At level j, task k's experts and
    gate read task k's output of level j-1, the shared experts read the
    shared output of level j-1, and every level but the last also has a
    shared gate over all experts of the level (all tasks' and the shared
    ones) that produces the next shared input:

        h^{k,j} = g^{k,j}(h^{k,j-1}) . [E_k^j(h^{k,j-1}), E_s^j(h^{s,j-1})]
        h^{s,j} = g^{s,j}(h^{s,j-1}) . [E_1^j(h^{1,j-1}), ..., E_T^j(..),
                                        E_s^j(h^{s,j-1})]     (j < L)

    with h^{k,0} = h^{s,0} = x. The layer returns [h^{1,L}, ..., h^{T,L}],
    one tower input per task. Special cases: `num_levels=1` is a single CGC
    (the `CustomizedGateControl` layer, a subclass that fixes it);
    `num_levels=1, num_task_experts=0` is MMoE; `num_shared_experts=0` gives
    T separate mixtures of experts with no path between tasks (no shared
    gate is created then, since nothing would read its output).

    Experts are MLPs of `expert_units` (the same in every level); gates are
    linear + softmax on the last axis, as in the paper.

    Args:
        num_tasks: T (int >= 1).
        expert_units: width of each expert: an int (one layer) or a list of
            ints (an MLP; the last is the output width).
        num_levels: number of stacked CGC levels L (int >= 1). Default 2.
        num_shared_experts: m_s, shared experts per level (int >= 0).
            Default 1.
        num_task_experts: m_k, task-specific experts per level: an int for
            every task or a list of T ints. Default 1. Every task needs
            m_k + m_s >= 1.
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

    >>> from keras_mtl.layers.ple import ProgressiveLayeredExtraction
    >>> inputs = keras.Input((6,))
    >>> ple = ProgressiveLayeredExtraction(
    ...     num_tasks=2, expert_units=4, num_levels=2,
    ...     num_shared_experts=2, num_task_experts=[1, 2])
    >>> towers = ple(inputs)
    >>> model = keras_mtl.MultiTaskModel(
    ...     inputs,
    ...     {"ctr": keras.layers.Dense(1)(towers[0]),
    ...      "vtr": keras.layers.Dense(1)(towers[1])},
    ... )
    >>> [tuple(t.shape) for t in towers]
    [(None, 4), (None, 4)]

    References:
        Hongyan Tang, Junning Liu, Ming Zhao, Xudong Gong. "Progressive
        Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) Model
        for Personalized Recommendations". RecSys 2020.
        doi:10.1145/3383313.3412236.

    Note:
        The paper allows different expert architectures per level; here all
        levels share `expert_units`. Gates read the previous level's output
        of their own branch (the paper's "selector" input).
    """

    def __init__(
        self,
        num_tasks,
        expert_units,
        num_levels=2,
        num_shared_experts=1,
        num_task_experts=1,
        expert_activation="relu",
        gate_use_bias=False,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_tasks = check_count(num_tasks, "num_tasks", 1)
        self.expert_units = normalize_units(expert_units)
        self.num_levels = check_count(num_levels, "num_levels", 1)
        self.num_shared_experts = check_count(
            num_shared_experts, "num_shared_experts", 0
        )
        if isinstance(num_task_experts, int) and not isinstance(num_task_experts, bool):
            counts = [num_task_experts] * self.num_tasks
        else:
            counts = list(num_task_experts)
            if len(counts) != self.num_tasks:
                raise ValueError(
                    f"`num_task_experts` must be an int or a list of "
                    f"num_tasks={self.num_tasks} ints, got {num_task_experts!r}."
                )
        for count in counts:
            check_count(count, "num_task_experts", 0)
            if count + self.num_shared_experts < 1:
                raise ValueError(
                    "Every task needs at least one expert: num_task_experts "
                    f"{num_task_experts!r} with num_shared_experts="
                    f"{num_shared_experts} leaves a task with none."
                )
        self.num_task_experts = num_task_experts
        self._task_counts = counts
        self._set_expert_options(
            expert_activation,
            gate_use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
        )

    def build(self, input_shape):
        self._check_feature_axis(input_shape)
        self.levels = []
        shape = tuple(input_shape)
        for level in range(self.num_levels):
            cgc = _CGCLevel(self, level, dtype=self.dtype_policy, name=f"cgc_{level}")
            cgc.build(shape)
            self.levels.append(cgc)
            shape = shape[:-1] + (self.expert_units[-1],)

    def call(self, inputs):
        task_inputs = [inputs] * self.num_tasks
        shared_input = inputs
        for cgc in self.levels:
            task_inputs, shared_input = cgc(task_inputs, shared_input)
        return task_inputs

    def get_config(self):
        config = super().get_config()
        num_task_experts = self.num_task_experts
        if not isinstance(num_task_experts, int):
            num_task_experts = list(num_task_experts)
        config.update(
            num_tasks=self.num_tasks,
            expert_units=list(self.expert_units),
            num_levels=self.num_levels,
            num_shared_experts=self.num_shared_experts,
            num_task_experts=num_task_experts,
            **self._expert_options_config(),
        )
        return config


class _CGCLevel(keras.layers.Layer):
    """One CGC level of a `ProgressiveLayeredExtraction` (built by it)."""

    def __init__(self, parent, level, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks = parent.num_tasks
        self.task_counts = list(parent._task_counts)
        self.num_shared = parent.num_shared_experts
        self.units = parent.expert_units
        self.is_last = level == parent.num_levels - 1
        self._bank_kwargs = dict(
            activation=parent.expert_activation,
            kernel_initializer=parent.kernel_initializer,
            bias_initializer=parent.bias_initializer,
            kernel_regularizer=parent.kernel_regularizer,
            dtype=parent.dtype_policy,
        )
        self._gate_kwargs = dict(
            use_bias=parent.gate_use_bias,
            kernel_initializer=parent.kernel_initializer,
            dtype=parent.dtype_policy,
        )
        # Distinct seed offsets for every expert and gate of the whole PLE.
        self._seed_base = 10_000 * (level + 1)

    def build(self, input_shape):
        offset = self._seed_base
        self.task_experts = []  # one bank per task with m_k > 0
        for task, count in enumerate(self.task_counts):
            if count > 0:
                bank = ExpertBank(
                    count,
                    self.units,
                    seed_offset=offset,
                    name=f"task_{task}_experts",
                    **self._bank_kwargs,
                )
                bank.build(input_shape)
                self.task_experts.append(bank)
            offset += 100
        self.shared_experts = []
        if self.num_shared > 0:
            bank = ExpertBank(
                self.num_shared,
                self.units,
                seed_offset=offset,
                name="shared_experts",
                **self._bank_kwargs,
            )
            bank.build(input_shape)
            self.shared_experts.append(bank)
        self.task_gates = []
        for task, count in enumerate(self.task_counts):
            gate = Gate(
                count + self.num_shared,
                seed_offset=offset + 1 + task,
                name=f"task_{task}_gate",
                **self._gate_kwargs,
            )
            gate.build(input_shape)
            self.task_gates.append(gate)
        self.shared_gates = []
        if not self.is_last and self.num_shared > 0:
            gate = Gate(
                sum(self.task_counts) + self.num_shared,
                seed_offset=offset + 1 + self.num_tasks,
                name="shared_gate",
                **self._gate_kwargs,
            )
            gate.build(input_shape)
            self.shared_gates.append(gate)

    def call(self, task_inputs, shared_input):
        banks = iter(self.task_experts)
        task_outputs = [
            next(banks)(task_inputs[task]) if count > 0 else None
            for task, count in enumerate(self.task_counts)
        ]
        shared = self.shared_experts[0](shared_input) if self.shared_experts else None
        outputs = []
        for task in range(self.num_tasks):
            parts = [p for p in (task_outputs[task], shared) if p is not None]
            experts = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-2)
            outputs.append(mix(self.task_gates[task](task_inputs[task]), experts))
        next_shared = shared_input
        if self.shared_gates:
            parts = [p for p in task_outputs if p is not None] + [shared]
            experts = ops.concatenate(parts, axis=-2) if len(parts) > 1 else parts[0]
            next_shared = mix(self.shared_gates[0](shared_input), experts)
        return outputs, next_shared
