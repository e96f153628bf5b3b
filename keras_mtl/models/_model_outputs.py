"""The outputs of a `MultiTaskModel`: one per task, and auxiliary ones."""

from __future__ import annotations

import math
from collections.abc import Mapping

import keras

from keras_mtl.models._task_losses import aux_key


def arrange_outputs(
    outputs, task_order, auxiliary_outputs, auxiliary_tasks, aux_weight
):
    """Checks a model's outputs; returns `(outputs, auxiliary_outputs)`, dicts
    keyed by task, the first in task order.

    Args:
        outputs: dict `{task: KerasTensor}` (from a config, it also holds the
            auxiliary outputs, keyed `<task>_aux`).
        task_order: None, or the task names in the order to keep.
        auxiliary_outputs: None, or dict `{task: KerasTensor}`.
        auxiliary_tasks: the tasks with an auxiliary output, when rebuilt
            from a config.
        aux_weight: the auxiliary losses' weight (checked).
    """
    if auxiliary_tasks and isinstance(outputs, Mapping):
        # Rebuilt from a config: the auxiliary outputs sit in `outputs`.
        outputs = dict(outputs)
        auxiliary_outputs = {
            task: outputs.pop(aux_key(task)) for task in auxiliary_tasks
        }
    if not isinstance(outputs, Mapping) or not outputs:
        raise ValueError(
            "MultiTaskModel needs `outputs` as a non-empty dict "
            "{task_name: tensor}, got "
            f"{type(outputs).__name__}: {outputs!r}."
        )
    for task, tensor in outputs.items():
        if not isinstance(task, str) or not task:
            raise ValueError(f"Task names must be non-empty strings, got {task!r}.")
        if not isinstance(tensor, keras.KerasTensor):
            raise ValueError(
                f"The output of task {task!r} must be a KerasTensor "
                f"(the result of calling layers on keras.Input), got "
                f"{type(tensor).__name__}."
            )
    if task_order is not None:
        if sorted(task_order) != sorted(outputs):
            raise ValueError(
                f"task_names {list(task_order)} do not match the outputs "
                f"{list(outputs)}."
            )
        outputs = {task: outputs[task] for task in task_order}
    auxiliary_outputs = dict(auxiliary_outputs or {})
    unknown = sorted(set(auxiliary_outputs) - set(outputs))
    if unknown:
        raise ValueError(
            f"auxiliary_outputs name tasks {unknown} that are not among the "
            f"outputs {list(outputs)}: an auxiliary output is trained with "
            "its task's loss and targets."
        )
    if not math.isfinite(aux_weight) or aux_weight < 0:
        raise ValueError(f"aux_weight must be finite and >= 0, got {aux_weight}.")
    for task in auxiliary_outputs:
        if aux_key(task) in outputs:
            raise ValueError(
                f"Task name {aux_key(task)!r} clashes with the auxiliary "
                f"output of task {task!r}."
            )
    return outputs, auxiliary_outputs


def heads_on_trunk(trunk, heads, inputs=None, trunk_output=None):
    """`(inputs, outputs)` of a model made of a shared `trunk` and a dict of
    task `heads` (see `MultiTaskModel.from_trunk`)."""
    if not isinstance(heads, Mapping) or not heads:
        raise ValueError(
            "from_trunk needs `heads` as a non-empty dict {task: layer}, "
            f"got {heads!r}."
        )
    if inputs is None:
        inputs = _trunk_inputs(trunk)
    features = trunk(inputs)
    if trunk_output is not None:
        features = _named_output(features, trunk_output)
    elif isinstance(features, Mapping):
        raise ValueError(
            f"The trunk returns a dict with keys {sorted(features)}: pass "
            "`trunk_output=` the key the heads read (keras-hub backbones: "
            '"sequence_output" for token-level heads, "pooled_output" for '
            "sentence-level heads)."
        )
    outputs = {}
    for task, head in heads.items():
        if not callable(head):
            raise ValueError(
                f"The head of task {task!r} must be a Keras layer or "
                f"model, got {type(head).__name__}."
            )
        outputs[task] = head(features)
    return inputs, outputs


def _trunk_inputs(trunk):
    """A functional trunk's inputs in the structure it was built with (a
    dict for keras-hub backbones, whose inputs are named)."""
    try:
        inputs = trunk.input
    except (AttributeError, ValueError):
        inputs = None
    if inputs is None or (isinstance(inputs, (list, tuple)) and not inputs):
        raise ValueError(
            "from_trunk could not find the trunk's inputs: pass "
            "`inputs=keras.Input(shape)`."
        )
    return inputs


def _named_output(features, key):
    if not isinstance(features, Mapping) or key not in features:
        keys = sorted(features) if isinstance(features, Mapping) else None
        raise ValueError(
            f"trunk_output={key!r}, but the trunk returns "
            + (f"a dict with keys {keys}." if keys else "a single tensor.")
        )
    return features[key]
