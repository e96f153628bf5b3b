"""`attach_heads`: task heads on intermediate layers of a functional trunk."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import keras
import tensorflow as tf

from keras_mtl.models.multi_task_model import MultiTaskModel


def attach_heads(trunk, heads, refine_variable_roles=True, name=None):
    """Builds a `MultiTaskModel` with each head on a chosen trunk layer.

    Each task's head reads the output of a named (or indexed) layer of a
    functional trunk, not only the last one: low-level tasks can be
    supervised at lower layers and high-level tasks at higher ones
    (Søgaard & Goldberg). Task t's loss then trains only the layers below
    its attachment point:

        out_t = head_t(trunk.get_layer(where_t).output)

    Trunk layers that no head reads from (directly or indirectly) are left
    out of the model.

    With `refine_variable_roles=True` (default), the model's split into
    shared and task variables (`MultiTaskModel.shared_variables`,
    `task_variables`) follows what each task's output really depends on,
    found by tracing the gradient of every output once. This matters when
    one layer produces several outputs that heads read separately (a
    `StackedBiRNN` returning every depth): the layer-level analysis would
    count all its variables as shared, the traced one counts as shared
    only the variables below both attachment points.

    Args:
        trunk: a functional `keras.Model` (built from `keras.Input`).
        heads: dict `{task: (where, head)}`. `head` is a layer or model
            applied to the chosen output. `where` picks the output:
            - a layer name (str): that layer's output in the trunk;
            - an int i: the output of `trunk.layers[i]` (Keras'
              `get_layer(index=i)`; index 0 is usually the input layer);
            - a pair `(name_or_index, k)`: output k of a layer that returns
              several tensors (depth k + 1 of a `StackedBiRNN`);
            - a KerasTensor of the trunk's graph.
        refine_variable_roles: whether to trace which variables each task
            depends on and set the model's variable roles from it.
        name: the model's name.

    Returns:
        A `MultiTaskModel` with one output per task, in the order of
        `heads`.

    Example:

    >>> from keras_mtl.layers.stacked_birnn import StackedBiRNN
    >>> from keras_mtl.models.attach_heads import attach_heads
    >>> tokens = keras.Input((None,), dtype="int32")
    >>> embedded = keras.layers.Embedding(30, 8, mask_zero=True)(tokens)
    >>> depths = StackedBiRNN(3, 4, name="birnn")(embedded)
    >>> trunk = keras.Model(tokens, depths)
    >>> model = attach_heads(
    ...     trunk,
    ...     {"pos": (("birnn", 0), keras.layers.Dense(5)),
    ...      "chunk": (("birnn", 2), keras.layers.Dense(3))},
    ... )
    >>> model.task_names
    ('pos', 'chunk')
    >>> len(model.shared_variables)  # the embedding and BiLSTM layer 1
    7

    References:
        Anders Søgaard, Yoav Goldberg. "Deep multi-task learning with low
        level tasks supervised at lower layers". ACL 2016 (short papers).
        doi:10.18653/v1/P16-2038.

    Note:
        Variable roles set here are not stored in a saved model: a model
        reloaded with `keras.models.load_model` gets the layer-level split
        again (call `set_variable_roles` after loading when it matters).
    """
    if not isinstance(trunk, keras.Model) or not getattr(trunk, "inputs", None):
        raise ValueError(
            "attach_heads needs a functional keras.Model built from keras.Input "
            f"as `trunk`, got {type(trunk).__name__}."
        )
    if not isinstance(heads, Mapping) or not heads:
        raise ValueError(
            "attach_heads needs `heads` as a non-empty dict "
            f"{{task: (layer_name_or_index, head)}}, got {heads!r}."
        )
    outputs = {}
    for task, spec in heads.items():
        if not isinstance(spec, tuple | list) or len(spec) != 2:
            raise ValueError(
                f"heads[{task!r}] must be a pair (layer_name_or_index, head), "
                f"got {spec!r}."
            )
        where, head = spec
        if not callable(head):
            raise ValueError(
                f"The head of task {task!r} must be a Keras layer or model, "
                f"got {type(head).__name__}."
            )
        outputs[task] = head(_attachment_point(trunk, where, task))
    model = MultiTaskModel(trunk.input, outputs, name=name)
    if refine_variable_roles:
        _refine_variable_roles(model)
    return model


def _layer_of(trunk, key, task):
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise ValueError(
            f"Task {task!r}: a layer is named by a string or an int index, got {key!r}."
        )
    try:
        if isinstance(key, str):
            return trunk.get_layer(name=key)
        return trunk.get_layer(index=key)
    except ValueError as error:
        raise ValueError(f"Task {task!r}: {error}") from error


def _layer_outputs(trunk, layer, task):
    """The output tensors of `layer` in the trunk's graph (a list)."""
    trunk_nodes = getattr(trunk, "_nodes", None)
    nodes = layer._inbound_nodes
    if trunk_nodes is not None:
        nodes = [
            node
            for index, node in enumerate(layer._inbound_nodes)
            if f"{id(layer)}_ib-{index}" in trunk_nodes
        ]
    if len(nodes) != 1:
        raise ValueError(
            f"Task {task!r}: layer {layer.name!r} is called {len(nodes)} times "
            "in the trunk, so its output is ambiguous; pass the KerasTensor "
            "to attach to instead of the layer's name."
        )
    return list(nodes[0].output_tensors)


def _attachment_point(trunk, where, task):
    if isinstance(where, keras.KerasTensor):
        return where
    output_index = None
    if isinstance(where, tuple | list):
        if len(where) != 2:
            raise ValueError(
                f"Task {task!r}: expected (layer_name_or_index, output_index), "
                f"got {where!r}."
            )
        where, output_index = where
    layer = _layer_of(trunk, where, task)
    tensors = _layer_outputs(trunk, layer, task)
    if output_index is None:
        if len(tensors) != 1:
            raise ValueError(
                f"Task {task!r}: layer {layer.name!r} has {len(tensors)} "
                "outputs; pick one with (layer_name, output_index)."
            )
        return tensors[0]
    if (
        isinstance(output_index, bool)
        or not isinstance(output_index, int)
        or not -len(tensors) <= output_index < len(tensors)
    ):
        raise ValueError(
            f"Task {task!r}: output_index must be an int in "
            f"[0, {len(tensors)}) for layer {layer.name!r}, got {output_index!r}."
        )
    return tensors[output_index]


def _task_dependencies(model):
    """Dict task -> ids of the trainable variables its output depends on.

    Traces (without running) one forward pass and the gradient of each
    task's output; a variable the output does not depend on gets None.
    """
    variables = list(model.trainable_variables)
    found = {}

    def spec(tensor):
        return tf.TensorSpec(tensor.shape, tensor.dtype)

    specs = keras.tree.map_structure(spec, model.input)

    def probe(inputs):
        with tf.GradientTape(persistent=True) as tape:
            outputs = model(inputs, training=False)
        for task in model.task_names:
            output = outputs[task]
            if not output.dtype.is_floating:
                found[task] = None
                continue
            grads = tape.gradient(output, variables)
            found[task] = {id(v) for v, g in zip(variables, grads) if g is not None}
        return tf.constant(0)

    tf.function(probe, autograph=False).get_concrete_function(specs)
    return found


def _refine_variable_roles(model):
    try:
        dependencies = _task_dependencies(model)
    except Exception as error:  # noqa: BLE001 - keep the layer-level roles
        warnings.warn(
            "attach_heads could not trace which variables each task depends "
            f"on ({type(error).__name__}: {error}); keeping the layer-level "
            "variable roles.",
            stacklevel=3,
        )
        return
    if any(dep is None for dep in dependencies.values()):
        return
    shared, tasks = [], {task: [] for task in model.task_names}
    for variable in model.trainable_variables:
        owners = [t for t in model.task_names if id(variable) in dependencies[t]]
        if len(owners) > 1:
            shared.append(variable)
        elif owners:
            tasks[owners[0]].append(variable)
    same_shared = [id(v) for v in shared] == [id(v) for v in model.shared_variables]
    current = model.task_variables
    same_tasks = all(
        [id(v) for v in tasks[t]] == [id(v) for v in current[t]]
        for t in model.task_names
    )
    if not (same_shared and same_tasks):
        model.set_variable_roles(shared=shared, tasks=tasks)
