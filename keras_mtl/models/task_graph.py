"""Which layers and variables of a functional model serve which task.

A multi-task model is a functional graph from its inputs to one output per
task. Walking the graph backwards from each task's output gives the set of
layers that task's loss depends on. A trainable variable is *shared* when
the layers of more than one task own it, and *task-specific* when only one
task's layers do. The *shared representation* is the set of tensors that
shared layers hand to task-specific layers: the cut between trunk and heads.

Nested models (a trunk built as its own `keras.Model`) count as one layer.
"""

from __future__ import annotations

import dataclasses

import keras


@dataclasses.dataclass(frozen=True)
class TaskGraph:
    """The result of `analyze_task_graph`.

    Attributes:
        shared_variables: trainable variables that more than one task's loss
            depends on, in model order.
        task_variables: dict task -> trainable variables only that task's
            loss depends on, in model order.
        shared_representations: the KerasTensors produced by shared layers
            and consumed by task-specific layers (model inputs excluded).
    """

    shared_variables: list
    task_variables: dict
    shared_representations: list
    last_shared_variables: list = dataclasses.field(default_factory=list)

    def with_roles(self, model, shared=None, tasks=None):
        """This graph with the split into shared and task variables
        overridden (see `MultiTaskModel.set_variable_roles`).

        Args:
            model: the model (every variable named must be one of its
                trainable variables).
            shared: the variables to treat as shared (None: keep).
            tasks: dict task -> that task's own variables; tasks not named
                keep theirs, minus any now listed as shared.
        """
        trainable = {id(v) for v in model.trainable_variables}
        task_names = model.task_names
        new_shared = list(self.shared_variables if shared is None else shared)
        new_tasks = {t: list(v) for t, v in self.task_variables.items()}
        if tasks is not None:
            unknown = sorted(set(tasks) - set(task_names))
            if unknown:
                raise ValueError(
                    f"set_variable_roles got unknown tasks {unknown}; the "
                    f"model's tasks are {list(task_names)}."
                )
            new_tasks.update({t: list(v) for t, v in tasks.items()})
        shared_ids = {id(v) for v in new_shared}
        new_tasks = {
            t: [v for v in vs if id(v) not in shared_ids] for t, vs in new_tasks.items()
        }
        for variable in new_shared + [v for vs in new_tasks.values() for v in vs]:
            if id(variable) not in trainable:
                raise ValueError(
                    f"Variable {variable.path!r} is not a trainable variable "
                    f"of model {model.name!r}."
                )
        owners = {}
        for task, variables in new_tasks.items():
            for variable in variables:
                if id(variable) in owners:
                    raise ValueError(
                        f"Variable {variable.path!r} is assigned to tasks "
                        f"{owners[id(variable)]!r} and {task!r}; list it as "
                        "shared instead."
                    )
                owners[id(variable)] = task
        last = [v for v in self.last_shared_variables if id(v) in shared_ids]
        return type(self)(
            new_shared,
            new_tasks,
            list(self.shared_representations),
            last or new_shared,
        )


def _node_of(tensor):
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def _ancestor_nodes(tensor):
    """Returns {id(node): (operation, node)} for every node `tensor` needs."""
    found = {}
    stack = [tensor]
    while stack:
        current = stack.pop()
        history = getattr(current, "_keras_history", None)
        if history is None:
            continue
        operation, node = _node_of(current)
        if id(node) in found:
            continue
        found[id(node)] = (operation, node)
        stack.extend(node.input_tensors)
    return found


def _tensor_tasks(outputs):
    """Returns {id(tensor): tasks whose output depends on that tensor}."""
    result = {}
    for task, tensor in outputs.items():
        seen, stack = set(), [tensor]
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            result.setdefault(id(current), set()).add(task)
            if getattr(current, "_keras_history", None) is not None:
                stack.extend(_node_of(current)[1].input_tensors)
    return result


def analyze_task_graph(outputs: dict, variables_in_order) -> TaskGraph:
    """Finds shared and task-specific variables of a functional graph.

    Args:
        outputs: dict task name -> KerasTensor (the task's output).
        variables_in_order: the model's trainable variables; the result
            keeps their order.

    Returns:
        A `TaskGraph`.
    """
    node_tasks = {}  # id(node) -> set of task names
    nodes = {}  # id(node) -> (operation, node)
    for task, tensor in outputs.items():
        for key, value in _ancestor_nodes(tensor).items():
            nodes[key] = value
            node_tasks.setdefault(key, set()).add(task)

    # Tasks per operation (a layer called at several nodes serves the union).
    operation_tasks = {}
    operations = {}
    for key, (operation, _) in nodes.items():
        operations[id(operation)] = operation
        operation_tasks.setdefault(id(operation), set()).update(node_tasks[key])

    # Tasks per variable (a variable owned by several layers: the union).
    # A layer with several outputs may say which variables each output uses
    # (`output_variables(index)`, e.g. StackedBiRNN): its variables then
    # serve only the tasks that read the outputs depending on them.
    tensor_tasks = _tensor_tasks(outputs)
    variable_tasks = {}
    for key, operation in operations.items():
        per_output = getattr(operation, "output_variables", None)
        if callable(per_output):
            for op, node in nodes.values():
                if op is not operation:
                    continue
                for index, tensor in enumerate(node.outputs):
                    tasks = tensor_tasks.get(id(tensor), set())
                    for variable in per_output(index):
                        variable_tasks.setdefault(id(variable), set()).update(tasks)
            continue
        for variable in getattr(operation, "trainable_variables", []):
            variable_tasks.setdefault(id(variable), set()).update(operation_tasks[key])

    shared, per_task = [], {task: [] for task in outputs}
    for variable in variables_in_order:
        tasks = variable_tasks.get(id(variable), ())
        if len(tasks) > 1:
            shared.append(variable)
        elif len(tasks) == 1:
            per_task[next(iter(tasks))].append(variable)

    representations = []
    rep_ids = set()
    for key, (_, node) in nodes.items():
        if len(node_tasks[key]) != 1:
            continue
        for tensor in node.input_tensors:
            history = getattr(tensor, "_keras_history", None)
            if history is None:
                continue
            producer, producer_node = _node_of(tensor)
            if isinstance(producer, keras.layers.InputLayer):
                continue
            if len(node_tasks[id(producer_node)]) > 1 and id(tensor) not in rep_ids:
                rep_ids.add(id(tensor))
                representations.append(tensor)
    shared_ids = {id(v) for v in shared}
    last_ids = set()
    for tensor in representations:
        last_ids.update(id(v) for v in _nearest_weights(tensor))
    last = [v for v in shared if id(v) in last_ids and id(v) in shared_ids]
    return TaskGraph(shared, per_task, representations, last)


def _nearest_weights(tensor):
    """Trainable variables of the closest layers with weights upstream of
    `tensor` (descending into nested models): the "last shared layer"."""
    stack, seen, found = [tensor], set(), []
    while stack:
        current = stack.pop()
        if getattr(current, "_keras_history", None) is None or id(current) in seen:
            continue
        seen.add(id(current))
        operation, node = _node_of(current)
        inner_outputs = getattr(operation, "outputs", None)
        if isinstance(operation, keras.Model) and inner_outputs:
            index = current._keras_history.tensor_index
            flat = keras.tree.flatten(inner_outputs)
            stack.append(flat[min(index, len(flat) - 1)])
        elif getattr(operation, "trainable_variables", None):
            found.extend(operation.trainable_variables)
        else:
            stack.extend(node.input_tensors)
    return found
