"""`DefaultArchitecture`: the MLP / CNN the tuner builds without a user model."""

from __future__ import annotations

from collections.abc import Mapping

import keras

from keras_mtl.models.add_auxiliary_module import add_auxiliary_module
from keras_mtl.models.multi_task_model import MultiTaskModel
from keras_mtl.models.task_routed_model import task_routed_model

_KINDS = ("auto", "mlp", "cnn")


class DefaultArchitecture:
    """A hard-sharing MLP or small CNN, as an architecture function.

    An architecture function for `MultiTaskHyperModel` that takes keyword
    choices (it lists them in its `choices` attribute) and returns a new
    `MultiTaskModel` at every call:

        inputs -> [shared block] x shared_layers -> head_t -> output_t

    - MLP (vector inputs; other inputs are flattened): a shared block is
      `Dense(units, relu)`.
    - CNN (inputs of rank 3, channels last): shared block i is
      `Conv2D(filters * 2^i, 3, relu)` followed by a 2x2 max pooling while
      the feature map is at least 4 pixels wide, then a global average
      pooling.
    - Each head: `Dense(head_units, relu)` then `Dense(units_t, activation_t)`.

    With `routing=True` the shared blocks are routed per task (Task Routing,
    `keras_mtl.models.task_routed_model.task_routed_model`) and
    `routing_sigma` is a choice. With `auxiliary=True` a training-only
    auxiliary module reads every shared block
    (`keras_mtl.models.add_auxiliary_module`) and `aux_weight` is a choice.

    Args:
        input_shape: the shape of one example, e.g. `(64,)` or `(28, 28, 1)`.
        heads: dict `{task: units}` (a linear output: logits or a
            regression) or `{task: (units, activation)}`.
        units: width of the shared Dense layers. Default 64.
        filters: filters of the first shared convolution. Default 16.
        kind: "auto" (CNN for rank-3 inputs, else MLP), "mlp" or "cnn".
        routing: route the shared blocks per task (adds `routing_sigma`).
        auxiliary: add an auxiliary module (adds `aux_weight`).
        seed: seed of the routing masks (None: random).
        name: the models' name.

    Example:

    >>> from keras_mtl.tuner.default_architecture import DefaultArchitecture
    >>> architecture = DefaultArchitecture((8,), {"a": 3, "b": (1, "sigmoid")})
    >>> architecture.choices
    ('shared_layers', 'head_units')
    >>> model = architecture(shared_layers=2, head_units=4)
    >>> model.task_names, len(model.shared_variables)
    (('a', 'b'), 4)
    """

    def __init__(
        self,
        input_shape,
        heads,
        units=64,
        filters=16,
        kind="auto",
        routing=False,
        auxiliary=False,
        seed=None,
        name="multi_task_model",
    ):
        self.input_shape = tuple(int(d) for d in input_shape)
        if not self.input_shape or any(d < 1 for d in self.input_shape):
            raise ValueError(f"input_shape must be positive ints, got {input_shape!r}.")
        if not isinstance(heads, Mapping) or not heads:
            raise ValueError(
                f"heads must be a non-empty dict {{task: units}}, got {heads!r}."
            )
        self.heads = {}
        for task, spec in heads.items():
            units_t, activation = (spec, None) if isinstance(spec, int) else spec
            if int(units_t) < 1:
                raise ValueError(f"Head {task!r} needs units >= 1, got {spec!r}.")
            self.heads[task] = (int(units_t), activation)
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
        if kind == "auto":
            kind = "cnn" if len(self.input_shape) == 3 else "mlp"
        if kind == "cnn" and len(self.input_shape) != 3:
            raise ValueError(
                f"kind='cnn' needs inputs (height, width, channels), got "
                f"{self.input_shape}."
            )
        if routing and auxiliary:
            raise ValueError(
                "routing=True and auxiliary=True cannot be combined: the "
                "auxiliary module reads hard-shared layers, which routing "
                "replaces by task-folded ones."
            )
        self.units = int(units)
        self.filters = int(filters)
        self.kind = kind
        self.routing = bool(routing)
        self.auxiliary = bool(auxiliary)
        self.seed = seed
        self.name = name

    @property
    def choices(self):
        """The keyword choices this architecture takes."""
        names = ("shared_layers", "head_units")
        if self.routing:
            names += ("routing_sigma",)
        if self.auxiliary:
            names += ("aux_weight",)
        return names

    def __call__(
        self, shared_layers=2, head_units=32, routing_sigma=0.5, aux_weight=1.0
    ):
        shared_layers, head_units = int(shared_layers), int(head_units)
        if shared_layers < 1 or head_units < 1:
            raise ValueError(
                "shared_layers and head_units must be >= 1, got "
                f"{shared_layers} and {head_units}."
            )
        inputs = keras.Input(self.input_shape, name="inputs")
        if self.routing:
            # The routing layer and then the activation follow each block.
            blocks = self._blocks(shared_layers, activation=None)
            heads = {
                task: keras.Sequential(self._head_layers(task, head_units), name=task)
                for task in self.heads
            }
            return task_routed_model(
                inputs,
                blocks,
                heads,
                sigma=float(routing_sigma),
                seed=self.seed,
                top=[keras.layers.GlobalAveragePooling2D()]
                if self.kind == "cnn"
                else None,
                name=self.name,
            )
        blocks = self._blocks(shared_layers, activation="relu")
        x = inputs
        for block in blocks:
            for layer in block:
                x = layer(x)
        if self.kind == "cnn":
            x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        outputs = {}
        for task in self.heads:
            y = x
            for layer in self._head_layers(task, head_units):
                y = layer(y)
            outputs[task] = y
        model = MultiTaskModel(inputs, outputs, name=self.name)
        if not self.auxiliary:
            return model
        return add_auxiliary_module(
            model,
            taps=[block[-1].name for block in blocks],
            heads={
                task: keras.layers.Dense(units_t, activation, name=f"{task}_aux_out")
                for task, (units_t, activation) in self.heads.items()
            },
            units=head_units,
            aux_weight=float(aux_weight),
            pooling="global" if self.kind == "cnn" else "none",
            name=self.name,
        )

    def _blocks(self, shared_layers, activation):
        blocks = []
        if self.kind == "mlp":
            for i in range(shared_layers):
                block = [keras.layers.Dense(self.units, activation, name=f"shared_{i}")]
                if i == 0 and len(self.input_shape) > 1:
                    block.insert(0, keras.layers.Flatten(name="flatten"))
                blocks.append(block)
            return blocks
        size = min(self.input_shape[:2])
        for i in range(shared_layers):
            block = []
            if i > 0 and size >= 4:
                block.append(keras.layers.MaxPooling2D(name=f"pool_{i}"))
                size //= 2
            block.append(
                keras.layers.Conv2D(
                    self.filters * 2**i,
                    3,
                    padding="same",
                    activation=activation,
                    name=f"shared_{i}",
                )
            )
            blocks.append(block)
        return blocks

    def _head_layers(self, task, head_units):
        units_t, activation = self.heads[task]
        return [
            keras.layers.Dense(head_units, activation="relu", name=f"{task}_hidden"),
            keras.layers.Dense(units_t, activation=activation, name=f"{task}_out"),
        ]

    def __repr__(self):
        return (
            f"DefaultArchitecture(input_shape={self.input_shape}, kind={self.kind!r}, "
            f"heads={self.heads}, routing={self.routing}, auxiliary={self.auxiliary})"
        )


__all__ = ["DefaultArchitecture"]
