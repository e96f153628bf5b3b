"""What `MultiTaskModel.compile` resolves its arguments into, and the checks.

`CompileOptions` holds everything the training step reads that `compile`
decided (the task losses, what a non-finite step does, task sampling, how
per-task gradients are combined) and the arguments as given, which
`get_compile_config` saves. The strategy itself stays an attribute of the
model (`loss_weighting`), so that Keras trains and saves its state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import keras

from keras_mtl import weighting
from keras_mtl.models._targets import PerElement, check_task_names
from keras_mtl.models._task_losses import TaskLosses, resolve_losses
from keras_mtl.models.gradient_paths import select_gradient_path
from keras_mtl.weighting.registry import registered_strategies

NONFINITE_MODES = ("raise", "skip")
PER_TASK_GRADIENTS = ("matrix", "gramian")
TASK_SAMPLING = (None, "uniform")


@dataclasses.dataclass
class CompileOptions:
    """The resolved compile arguments the training step reads.

    Attributes:
        task_losses: the `TaskLosses` of the `loss` and `missing_labels`
            arguments.
        on_nonfinite: `"raise"` or `"skip"`.
        task_sampling: None or `"uniform"`.
        per_task_gradients: `"matrix"` or `"gramian"`.
        arguments: the arguments of `compile` as given (saved with the
            model; `jit_compile="auto"` resolves again where it is loaded).
    """

    task_losses: TaskLosses
    on_nonfinite: str
    task_sampling: str | None
    per_task_gradients: str
    arguments: dict


class ResolvedCompile(NamedTuple):
    """What `resolve_compile` returns: the strategy (bound to the tasks and
    built), the gradient path chosen for it, and the `CompileOptions`."""

    strategy: object
    path: object
    options: CompileOptions


def resolve_compile(model, loss_weighting, loss_weights, arguments):
    """Checks and resolves the arguments of `MultiTaskModel.compile`.

    Every check runs here, before `compile` changes anything of the model,
    so that a bad argument leaves a compiled model as it was.

    Args:
        model: the `MultiTaskModel`.
        loss_weighting, loss_weights: as for `compile`.
        arguments: the other arguments of `compile` that are saved with
            the model (`loss`, `metrics`, `weighted_metrics`,
            `on_nonfinite`, `task_sampling`, `missing_labels`,
            `per_task_gradients`, `run_eagerly`, `steps_per_execution`,
            `jit_compile`); `metrics` and `weighted_metrics` are replaced by
            their per-task dicts.
    """
    names = model.task_names
    arguments = dict(arguments)
    on_nonfinite = check_on_nonfinite(arguments["on_nonfinite"])
    loss_fns = resolve_losses(names, arguments["loss"])
    for key in ("metrics", "weighted_metrics"):
        arguments[key] = per_task_dict(names, arguments[key], key)
    strategy = resolve_strategy(names, loss_weighting, loss_weights)
    per_task_gradients = arguments["per_task_gradients"]
    path = select_gradient_path(model, strategy, per_task_gradients)
    build_strategy(strategy, path.strategy_input_shape())
    task_sampling = check_task_sampling(arguments["task_sampling"], strategy)
    rules = resolve_missing_labels(names, arguments["missing_labels"], strategy)
    task_losses = TaskLosses(
        names, loss_fns, rules, model.auxiliary_tasks, model.aux_weight
    )
    compile_options = CompileOptions(
        task_losses=task_losses,
        on_nonfinite=on_nonfinite,
        task_sampling=task_sampling,
        per_task_gradients=check_per_task_gradients(per_task_gradients, strategy),
        arguments=arguments,
    )
    return ResolvedCompile(strategy, path, compile_options)


def compile_config(optimizer, strategy, compile_options):
    """The compile config saved with a model: the optimizer, the strategy
    and the other arguments of `compile` as given, serialized."""
    config = dict(
        optimizer=optimizer,
        loss_weighting=weighting.serialize(strategy),
        **compile_options.arguments,
    )
    return {
        key: keras.saving.serialize_keras_object(value) for key, value in config.items()
    }


def compile_arguments(config):
    """The keyword arguments of `compile` from a `compile_config`."""
    config = dict(config)
    strategy = weighting.deserialize(config.pop("loss_weighting"))
    arguments = {
        key: keras.saving.deserialize_keras_object(value)
        for key, value in config.items()
    }
    return dict(arguments, loss_weighting=strategy)


def check_on_nonfinite(on_nonfinite):
    if on_nonfinite not in NONFINITE_MODES:
        raise ValueError(
            f"on_nonfinite must be one of {NONFINITE_MODES}, got {on_nonfinite!r}."
        )
    return on_nonfinite


def per_task_dict(task_names, value, arg_name):
    """`metrics` / `weighted_metrics` as a dict by task (or None)."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        check_task_names(task_names, value.keys(), arg_name)
        return {t: value[t] for t in task_names if t in value}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return {t: list(value) for t in task_names}
    raise ValueError(
        f"`{arg_name}` must be a dict {{task: [metrics]}} or a list of "
        f"metrics, got {value!r}."
    )


def resolve_strategy(task_names, loss_weighting, loss_weights):
    """The strategy of `loss_weighting` (or `loss_weights`), bound to the
    tasks (not yet built)."""
    if loss_weights is not None:
        if loss_weighting is not None:
            raise ValueError(
                "Pass either `loss_weighting` or `loss_weights` to compile(), not both."
            )
        if isinstance(loss_weights, Mapping):
            check_task_names(task_names, loss_weights.keys(), "loss_weights", True)
        strategy = weighting.StaticWeighting(loss_weights)
    else:
        strategy = weighting.get(loss_weighting)
    strategy.set_task_names(task_names)
    return strategy


def build_strategy(strategy, shape):
    """Builds the strategy for input `shape`, or checks that it was."""
    if not strategy.built:
        strategy.build(shape)
        return
    built_shape = tuple(strategy._build_shapes_dict.get("input_shape", ()))
    if built_shape and tuple(built_shape) != shape:
        raise ValueError(
            f"Strategy {strategy.name!r} was built for input shape "
            f"{built_shape} but this model needs {shape} "
            f"({shape[0]} tasks). Create a new strategy."
        )


def check_task_sampling(task_sampling, strategy):
    if task_sampling not in TASK_SAMPLING:
        raise ValueError(
            f"task_sampling must be None or 'uniform', got {task_sampling!r}."
        )
    if task_sampling is not None and not strategy.fixed_weights:
        raise ValueError(
            "task_sampling trains one task per step, which only makes sense "
            "with fixed weights: use loss_weighting='ew' or loss_weights, "
            f"not {type(strategy).__name__}."
        )
    return task_sampling


def resolve_missing_labels(task_names, missing_labels, strategy):
    """`{task: sentinel | "sample_weight" | PerElement(sentinel)}` for the
    masked tasks, or None.

    A task's entry is a sentinel (a number, NaN or "nan"),
    `"sample_weight"`, None (always labelled), or a dict
    `{"value": sentinel, "per_element": bool}`: with `per_element` True
    each element of the target equal to the sentinel is unlabelled on its
    own (`PerElement`); with False it is the plain sentinel.
    """
    if missing_labels is None:
        return None
    if isinstance(missing_labels, Mapping):
        _check_not_a_bare_rule(task_names, missing_labels)
        check_task_names(task_names, missing_labels.keys(), "missing_labels")
        rules = {t: missing_labels[t] for t in task_names if t in missing_labels}
    else:
        rules = {t: missing_labels for t in task_names}
    resolved = {}
    for task, rule in rules.items():
        per_element = False
        if isinstance(rule, Mapping):
            rule, per_element = _per_element_rule(task, rule)
        if isinstance(rule, str) and rule.lower() == "nan":
            rule = float("nan")
        if rule is None:
            continue
        if rule != "sample_weight" and (
            isinstance(rule, (bool, str)) or not isinstance(rule, (int, float))
        ):
            raise ValueError(
                f"missing_labels for task {task!r} must be a number (the "
                "sentinel of an absent label, for example -1 or NaN), "
                "'sample_weight', None or a dict {'value': sentinel, "
                f"'per_element': bool}}, got {rule!r}."
            )
        if per_element:
            if rule == "sample_weight":
                raise ValueError(
                    f"missing_labels for task {task!r}: per_element needs a "
                    "sentinel value (a number or NaN) that marks each absent "
                    "element of the target; 'sample_weight' masks whole "
                    "samples."
                )
            rule = PerElement(rule)
        resolved[task] = rule
    if not resolved:
        return None
    if not strategy.supports_missing_tasks:
        supported = [
            name
            for name in weighting.available()
            if weighting.registry.lookup(name).supports_missing_tasks
        ]
        raise ValueError(
            f"Strategy {type(strategy).__name__} does not support "
            "missing_labels: it cannot leave out a task that has no label "
            f"in a step. Strategies that can: {supported}."
        )
    return resolved


def check_per_task_gradients(per_task_gradients, strategy):
    """Validates `compile(per_task_gradients=...)` against the strategy."""
    if per_task_gradients not in PER_TASK_GRADIENTS:
        raise ValueError(
            f"per_task_gradients must be one of {PER_TASK_GRADIENTS}, got "
            f"{per_task_gradients!r}."
        )
    rep_grad = getattr(strategy, "rep_grad", False)
    if per_task_gradients != "matrix" and (strategy.requires != "gramian" or rep_grad):
        names = sorted(
            name
            for name, cls in registered_strategies().items()
            if cls.requires == "gramian"
        )
        reason = (
            "rep_grad=True (gradients of the shared representation)"
            if rep_grad
            else f"requires={strategy.requires!r}"
        )
        raise ValueError(
            f"per_task_gradients={per_task_gradients!r} needs a strategy "
            "whose weights come from the Gramian of the per-task parameter "
            f"gradients; {type(strategy).__name__} has {reason}. Strategies "
            f"with requires='gramian': {names}."
        )
    return per_task_gradients


_RULE_KEYS = ("value", "per_element")


def _per_element_rule(task, rule):
    """`(sentinel, per_element)` of a task's dict rule, checked."""
    unknown = sorted(str(k) for k in rule if k not in _RULE_KEYS)
    if unknown or "value" not in rule:
        problem = f"unknown keys {unknown}" if unknown else "no 'value'"
        raise ValueError(
            f"missing_labels for task {task!r}: a dict rule takes the keys "
            f"{list(_RULE_KEYS)} ({{'value': sentinel, 'per_element': True}}), "
            f"got {dict(rule)!r} ({problem})."
        )
    per_element = rule.get("per_element", False)
    if not isinstance(per_element, bool):
        raise ValueError(
            f"missing_labels for task {task!r}: 'per_element' must be True "
            f"or False, got {per_element!r}."
        )
    value = rule["value"]
    if isinstance(value, Mapping):
        raise ValueError(
            f"missing_labels for task {task!r}: 'value' must be a sentinel "
            f"(a number or NaN), got {value!r}."
        )
    return value, per_element


def _check_not_a_bare_rule(task_names, missing_labels):
    """Refuses a dict rule given for every task at once, which reads as
    tasks named 'value' and 'per_element'."""
    keys = set(missing_labels)
    if "value" in keys and keys <= set(_RULE_KEYS) and not keys & set(task_names):
        raise ValueError(
            "missing_labels: a {'value': ..., 'per_element': ...} rule is "
            "given per task: missing_labels={task: {'value': sentinel, "
            f"'per_element': True}} for the tasks {list(task_names)}."
        )
