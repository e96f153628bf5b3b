"""Attach an auxiliary module to a hard-sharing `MultiTaskModel`."""

from __future__ import annotations

from collections.abc import Mapping

from keras_mtl.layers.auxiliary_module import AuxiliaryModule
from keras_mtl.models.multi_task_model import MultiTaskModel


def add_auxiliary_module(
    model,
    taps,
    heads,
    units=64,
    aux_weight=1.0,
    cross_connect=True,
    pooling="none",
    name=None,
):
    """Returns `model` with a training-only auxiliary module attached.

    The new model shares every layer (and weight) of `model`, and adds an
    `AuxiliaryModule` reading the outputs of the shared layers named in
    `taps`, with one auxiliary head per task. Its training objective is the
    strategy's combination of the task losses plus

        aux_weight * sum_t L_t(auxiliary head t),

    each auxiliary loss computed with its task's loss and targets; their
    gradients reach the shared layers. The logs show each `<task>_aux_loss`.
    `new_model.inference_model()` gives back the hard-sharing network with
    exactly `model`'s parameters and predictions.

    Args:
        model: a `MultiTaskModel` (hard sharing).
        taps: names (or layer objects) of shared layers whose outputs the
            module reads, from the lowest to the highest.
        heads: dict `{task: layer}` mapping the module's features to each
            task's output shape; every task of `model` needs one.
        units: units per module level (int or one per tap).
        aux_weight: lambda_aux, the weight of the auxiliary losses.
        cross_connect: see `AuxiliaryModule`.
        pooling: see `AuxiliaryModule`.
        name: the new model's name.

    Returns:
        A `MultiTaskModel` with auxiliary outputs.

    Example:

    >>> inputs = keras.Input((8,))
    >>> h1 = keras.layers.Dense(16, activation="relu", name="h1")(inputs)
    >>> h2 = keras.layers.Dense(16, activation="relu", name="h2")(h1)
    >>> base = keras_mtl.MultiTaskModel(
    ...     inputs, {"a": keras.layers.Dense(1)(h2), "b": keras.layers.Dense(1)(h2)}
    ... )
    >>> model = keras_mtl.models.add_auxiliary_module(
    ...     base, ["h1", "h2"], {"a": keras.layers.Dense(1), "b": keras.layers.Dense(1)}
    ... )
    >>> model.auxiliary_tasks
    ('a', 'b')
    >>> model.inference_model().count_params() == base.count_params()
    True
    """
    if not isinstance(model, MultiTaskModel):
        raise ValueError(
            f"add_auxiliary_module needs a MultiTaskModel, got {type(model).__name__}."
        )
    if model.auxiliary_tasks:
        raise ValueError(f"Model {model.name!r} already has an auxiliary module.")
    if not isinstance(heads, Mapping):
        raise ValueError(f"`heads` must be a dict {{task: layer}}, got {heads!r}.")
    missing = sorted(set(model.task_names) - set(heads))
    extra = sorted(set(heads) - set(model.task_names))
    if missing or extra:
        raise ValueError(
            f"`heads` must name the model's tasks {list(model.task_names)}: "
            f"missing {missing}, unknown {extra}."
        )
    if not taps:
        raise ValueError("`taps` must name at least one shared layer.")
    shared_ids = {id(v) for v in model.shared_variables}
    tap_tensors = []
    for tap in taps:
        layer = model.get_layer(tap) if isinstance(tap, str) else tap
        if not any(id(v) in shared_ids for v in layer.trainable_variables):
            raise ValueError(
                f"Tap {layer.name!r} is not a shared layer of model {model.name!r}: "
                "the auxiliary module reads the hard-shared layers."
            )
        tap_tensors.append(layer.output)
    module = AuxiliaryModule(
        num_tasks=model.num_tasks,
        units=units,
        cross_connect=cross_connect,
        pooling=pooling,
        name="auxiliary_module",
    )
    features = module(tap_tensors)
    outputs = {task: model._outputs_struct[task] for task in model.task_names}
    auxiliary_outputs = {
        task: heads[task](feature) for task, feature in zip(model.task_names, features)
    }
    return MultiTaskModel(
        model.input,
        outputs,
        name=name or f"{model.name}_with_aux",
        auxiliary_outputs=auxiliary_outputs,
        aux_weight=aux_weight,
    )
