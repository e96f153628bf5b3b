"""Private building blocks shared by the mixture-of-experts layers.

`ExpertBank` holds E expert MLPs of the same architecture as stacked
kernels, so that all experts run in one batched `einsum` per layer. It is
created by `MMoE`, `ProgressiveLayeredExtraction` (and its one-level
subclass `CustomizedGateControl`) and `DSelectK` inside their `build` from
their own constructor arguments, so it needs no configuration of its own.
"""

from __future__ import annotations

import keras
from keras import ops


def normalize_units(units, arg_name="expert_units"):
    """Returns `units` (an int or a sequence of ints) as a list of ints."""
    values = [units] if isinstance(units, int) else list(units or [])
    if not values or any(
        isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in values
    ):
        raise ValueError(
            f"`{arg_name}` must be a positive int or a non-empty list of "
            f"positive ints, got {units!r}."
        )
    return values


def check_count(value, arg_name, minimum):
    """Raises a ValueError unless `value` is an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{arg_name}` must be an int >= {minimum}, got {value!r}.")
    return value


def fresh_initializer(identifier, offset=0):
    """A new instance of the initializer `identifier`.

    Keras initializers repeat their values from call to call, so every
    expert or gate needs its own instance to get its own draw. A seeded
    initializer gets seed + `offset`: reproducible, yet different per slot.
    """
    config = keras.initializers.serialize(keras.initializers.get(identifier))
    if not isinstance(config, dict):
        return keras.initializers.get(config)
    config = {**config, "config": dict(config.get("config") or {})}
    seed = config["config"].get("seed")
    if isinstance(seed, int):
        config["config"]["seed"] = seed + offset
    return keras.initializers.deserialize(config)


def stacked_initializer(identifier, count, offset=0):
    """An initializer for a `(count, *shape)` variable: one independent draw
    of `identifier` per slice, so that fan-in and fan-out are those of one
    expert (not of the whole stack)."""

    def initialize(shape, dtype=None):
        return ops.stack(
            [
                fresh_initializer(identifier, offset + index)(
                    tuple(shape[1:]), dtype=dtype
                )
                for index in range(count)
            ]
        )

    return initialize


class ExpertBank(keras.layers.Layer):
    """E independent MLP experts applied to the same input.

    Maps `(..., D)` to `(..., E, units[-1])`; every layer of every expert is
    `activation(x @ W_e + b_e)`.
    """

    def __init__(
        self,
        num_experts,
        units,
        activation="relu",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        seed_offset=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.seed_offset = seed_offset
        self.units = list(units)
        self.activation = keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        fan_in = input_shape[-1]
        self.kernels, self.biases = [], []
        for index, width in enumerate(self.units):
            self.kernels.append(
                self.add_weight(
                    shape=(self.num_experts, fan_in, width),
                    initializer=stacked_initializer(
                        self.kernel_initializer,
                        self.num_experts,
                        self.seed_offset + index * self.num_experts,
                    ),
                    regularizer=self.kernel_regularizer,
                    name=f"kernel_{index}",
                )
            )
            if self.use_bias:
                self.biases.append(
                    self.add_weight(
                        shape=(self.num_experts, width),
                        initializer=self.bias_initializer,
                        name=f"bias_{index}",
                    )
                )
            fan_in = width

    def call(self, inputs):
        x = ops.einsum("...d,edu->...eu", inputs, self.kernels[0])
        for index, kernel in enumerate(self.kernels):
            if index > 0:
                x = ops.einsum("...ed,edu->...eu", x, kernel)
            if self.use_bias:
                x = x + self.biases[index]
            x = self.activation(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_experts, self.units[-1])


class Gate(keras.layers.Layer):
    """A softmax gate over `num_experts`: `softmax(x W + b)`, `(..., E)`."""

    def __init__(
        self,
        num_experts,
        use_bias=False,
        kernel_initializer="glorot_uniform",
        seed_offset=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_experts = num_experts
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.seed_offset = seed_offset

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.num_experts),
            initializer=fresh_initializer(self.kernel_initializer, self.seed_offset),
            name="kernel",
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(self.num_experts,), initializer="zeros", name="bias"
            )

    def call(self, inputs):
        logits = ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            logits = logits + self.bias
        if self.num_experts == 1:
            # softmax over one expert is 1 (Keras warns about it).
            return ops.ones_like(logits)
        return ops.softmax(logits, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_experts,)


class ExpertTowers:
    """Mixin of `MMoE`, `ProgressiveLayeredExtraction` and `DSelectK`:
    layers whose gated mixtures of expert MLPs give one output (tower input)
    per task.

    Holds the options their experts and gates share, checks the input's
    feature axis and gives the `num_tasks` output shapes.
    """

    def _set_expert_options(
        self,
        expert_activation,
        gate_use_bias,
        kernel_initializer,
        bias_initializer,
        kernel_regularizer,
    ):
        self.expert_activation = expert_activation
        self.gate_use_bias = bool(gate_use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        keras.activations.get(expert_activation)  # validates the name

    def _expert_options_config(self):
        """The shared options, serialized for `get_config`."""
        return dict(
            expert_activation=keras.activations.serialize(
                keras.activations.get(self.expert_activation)
            ),
            gate_use_bias=self.gate_use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        )

    def _check_feature_axis(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} needs a known last (feature) axis, got "
                f"input shape {input_shape}."
            )

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape[:-1]) + (self.expert_units[-1],)
        return [shape for _ in range(self.num_tasks)]


def mix(gate, experts):
    """Gate-weighted sum of experts: `(..., E)` x `(..., E, U)` -> `(..., U)`."""
    return ops.einsum("...e,...eu->...u", gate, experts)
