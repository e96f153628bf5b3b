"""`attach_heads`: task heads on intermediate layers of a functional trunk."""

from __future__ import annotations

from collections.abc import Mapping

import keras

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

    `MultiTaskModel` splits variables into shared and task variables layer
    by layer. When one layer returns several outputs that heads read
    separately (a `StackedBiRNN` returning every depth), that split would
    count all its variables as shared. With `refine_variable_roles=True`
    (default), a layer that has an `output_variables(output_index)` method
    (listing the variables one output depends on, as `StackedBiRNN` does)
    is split per output instead, so that `shared_variables` holds only the
    variables below both attachment points, and variables above every
    attachment point belong to no task.

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
        refine_variable_roles: whether to split multi-output layers' variables
            per output (see above) with `MultiTaskModel.set_variable_roles`.
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


def _tensor_tasks(model):
    """Dict id(KerasTensor) -> the set of tasks whose output needs it."""
    tasks = {}
    for task in model.task_names:
        stack, seen = [model.output[task]], set()
        while stack:
            tensor = stack.pop()
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            tasks.setdefault(id(tensor), set()).add(task)
            history = getattr(tensor, "_keras_history", None)
            if history is None:
                continue
            operation, node_index, _ = history
            stack.extend(operation._inbound_nodes[node_index].input_tensors)
    return tasks


def _refined_owners(model):
    """Dict id(variable) -> set of tasks, for variables of multi-output
    layers that say which variables each output needs (`output_variables`)."""
    tensor_tasks = _tensor_tasks(model)
    owners = {}
    for layer in model.layers:
        hook = getattr(layer, "output_variables", None)
        if not callable(hook):
            continue
        nodes = [
            node
            for node in layer._inbound_nodes
            if any(id(t) in tensor_tasks for t in node.output_tensors)
        ]
        if len(nodes) != 1:
            continue  # called several times: keep the layer-level roles
        layer_owners = {id(v): set() for v in layer.trainable_variables}
        for index, tensor in enumerate(nodes[0].output_tensors):
            for variable in hook(index):
                if id(variable) in layer_owners:
                    layer_owners[id(variable)] |= tensor_tasks.get(id(tensor), set())
        owners.update(layer_owners)
    return owners


def _refine_variable_roles(model):
    refined = _refined_owners(model)
    if not refined:
        return
    automatic = {id(v): set(model.task_names) for v in model.shared_variables}
    for task, variables in model.task_variables.items():
        automatic.update({id(v): {task} for v in variables})
    shared, tasks = [], {task: [] for task in model.task_names}
    for variable in model.trainable_variables:
        owners = refined.get(id(variable), automatic.get(id(variable), set()))
        if len(owners) > 1:
            shared.append(variable)
        elif owners:
            tasks[next(iter(owners))].append(variable)
    same_shared = [id(v) for v in shared] == [id(v) for v in model.shared_variables]
    current = model.task_variables
    same_tasks = all(
        [id(v) for v in tasks[t]] == [id(v) for v in current[t]]
        for t in model.task_names
    )
    if not (same_shared and same_tasks):
        model.set_variable_roles(shared=shared, tasks=tasks)
