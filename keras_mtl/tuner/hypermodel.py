"""`MultiTaskHyperModel`: keras-tuner search over strategies and architectures."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence

import keras

from keras_mtl import weighting
from keras_mtl.models.multi_task_model import MultiTaskModel
from keras_mtl.tuner._keras_tuner import keras_tuner
from keras_mtl.tuner.default_architecture import DefaultArchitecture
from keras_mtl.tuner.objectives import MultiTaskObjective, WeightedMetricMean
from keras_mtl.tuner.search_spaces import (
    ARCHITECTURE_SPACE,
    DEFAULT_STRATEGIES,
    SEARCH_SPACES,
)

#: The name of the hyperparameter holding the strategy's registry name.
STRATEGY_HP = "strategy"

_OWN_COMPILE_ARGS = ("optimizer", "loss", "metrics", "loss_weighting", "loss_weights")


class MultiTaskHyperModel(keras_tuner.HyperModel):
    """Searches multi-task strategies, their hyperparameters and architectures.

    `build(hp)` builds a new `keras_mtl.MultiTaskModel` and compiles it with
    a fresh optimizer, fresh losses and metrics, and the strategy of the
    trial. Everything is made inside `build`: do not pass an optimizer, loss
    or metrics to the tuner (keras-tuner would compile its own, which breaks
    models with dict outputs).

    The search space:

    - `strategy`: a choice among `strategies` (registry names of
      `keras_mtl.weighting`).
    - each strategy's own hyperparameters, from `search_spaces` (default
      `keras_mtl.tuner.search_spaces.SEARCH_SPACES`), named
      `<strategy>/<name>` (e.g. `dwa/temperature`) and active only when
      that strategy is chosen (`hp.conditional_scope`).
    - architecture choices, from `architecture_space` (default
      `ARCHITECTURE_SPACE`: `shared_layers`, `head_units`, `routing_sigma`,
      `aux_weight`), for the keywords the architecture function takes.
    - `learning_rate` when `learning_rate` is a list.

    Architecture functions. `architecture` is called once per build and
    returns a new, uncompiled `MultiTaskModel`. It may take

    - `hp`, the trial's `keras_tuner.HyperParameters`, to declare its own
      hyperparameters: `def architecture(hp): ...`;
    - keyword choices: every parameter whose name is a key of
      `architecture_space` receives that key's value, e.g.
      `def architecture(shared_layers, head_units): ...`; a value of the
      space is a function `choice(hp) -> value` or a fixed value;
    - both: `def architecture(hp, shared_layers): ...`.

    An architecture object may instead list its keywords in a `choices`
    attribute (as `DefaultArchitecture` does). Other parameters must have
    defaults. Without `architecture`, a `DefaultArchitecture(input_shape,
    heads)` (an MLP, or a small CNN for images) is used.

    `fit(hp, model, *args, **kwargs)` trains the model (the arguments of
    `tuner.search`), writes the multi-task `objective` into each epoch's
    logs and returns the logs of the best epoch, objective included. Pass
    `hypermodel.tuner_objective` as the tuner's `objective`.

    Args:
        loss: the task losses, as for `MultiTaskModel.compile`: a dict
            `{task: loss}` or one loss for every task. Loss objects are
            cloned at every build.
        architecture: the architecture function (see above), or None.
        input_shape: the input shape, for the default architecture.
        heads: dict `{task: units}` or `{task: (units, activation)}`, for
            the default architecture.
        metrics: dict `{task: [metrics]}` or a list for every task; cloned
            at every build (and per task for a list).
        strategies: registry names (aliases accepted) to choose from; None
            for `DEFAULT_STRATEGIES`, "all" for every registered strategy.
        search_spaces: dict `{strategy: space}` overriding or extending
            `SEARCH_SPACES`; a space is None, a function `space(hp) ->
            kwargs` (or `space(hp, task_names=...)`) or a dict of fixed
            keyword arguments.
        architecture_space: dict `{keyword: choice}` overriding or extending
            `ARCHITECTURE_SPACE`; a choice is a function of `hp` or a fixed
            value (recorded as `hp.Fixed`).
        optimizer: a name, config dict, `keras.optimizers.Optimizer`
            instance (cloned at every build) or class, or a function
            `optimizer(hp) -> Optimizer`. Default "adam".
        learning_rate: None (the optimizer's own), a float, or a list of
            floats searched as the hyperparameter `learning_rate`. Not used
            with an optimizer function.
        objective: a `keras_mtl.tuner.objectives.MultiTaskObjective`; default
            the mean validation loss of the tasks, `WeightedMetricMean("loss")`
            (comparable across strategies, unlike their training
            objectives).
        compile_kwargs: more arguments of `MultiTaskModel.compile`, e.g.
            `{"jit_compile": True, "on_nonfinite": "skip"}`.
        name: the hypermodel's name.
        tunable: as for `keras_tuner.HyperModel`.

    Example:

    >>> from keras_mtl.tuner import MultiTaskHyperModel
    >>> import keras_tuner
    >>> hypermodel = MultiTaskHyperModel(
    ...     loss={"a": "mse", "b": "mse"},
    ...     input_shape=(4,),
    ...     heads={"a": 1, "b": 1},
    ...     strategies=["ew", "dwa"],
    ... )
    >>> hp = keras_tuner.HyperParameters()
    >>> hp.values["strategy"] = "dwa"
    >>> model = hypermodel.build(hp)
    >>> type(model.loss_weighting).__name__, model.loss_weighting.temperature
    ('DynamicWeightAverage', 2.0)
    >>> sorted(hp.values)[:3]
    ['dwa/mode', 'dwa/temperature', 'head_units']
    """

    def __init__(
        self,
        loss,
        architecture=None,
        *,
        input_shape=None,
        heads=None,
        metrics=None,
        strategies=None,
        search_spaces=None,
        architecture_space=None,
        optimizer="adam",
        learning_rate=None,
        objective=None,
        compile_kwargs=None,
        name=None,
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        if loss is None:
            raise ValueError("MultiTaskHyperModel needs `loss` (a dict {task: loss}).")
        if architecture is None:
            if input_shape is None or heads is None:
                raise ValueError(
                    "Pass an `architecture` function, or `input_shape` and "
                    "`heads` for the default MLP/CNN architecture."
                )
            architecture = DefaultArchitecture(input_shape, heads)
        elif input_shape is not None or heads is not None:
            raise ValueError(
                "`input_shape` and `heads` configure the default architecture; "
                "do not pass them with an `architecture` function."
            )
        if not callable(architecture):
            raise ValueError(f"architecture must be callable, got {architecture!r}.")
        self.loss = loss
        self.metrics = metrics
        self.architecture = architecture
        self.strategies = _resolve_strategies(strategies)
        self.search_spaces = _merge_spaces(search_spaces)
        self.architecture_space = {**ARCHITECTURE_SPACE, **(architecture_space or {})}
        self._takes_hp, self._choices = _architecture_keywords(
            architecture, self.architecture_space
        )
        self.optimizer = optimizer
        if _is_optimizer_function(optimizer) and learning_rate is not None:
            raise ValueError(
                "learning_rate cannot be combined with an optimizer function: "
                "set the learning rate inside the function."
            )
        self.learning_rate = _check_learning_rate(learning_rate)
        if objective is None:
            objective = WeightedMetricMean("loss")
        if not isinstance(objective, MultiTaskObjective):
            raise ValueError(
                "objective must be a keras_mtl.tuner MultiTaskObjective (DeltaM, "
                f"WeightedMetricMean, TaskMetric), got {objective!r}."
            )
        self.objective = objective
        compile_kwargs = dict(compile_kwargs or {})
        clash = sorted(set(compile_kwargs) & set(_OWN_COMPILE_ARGS))
        if clash:
            raise ValueError(
                f"compile_kwargs cannot set {clash}: they are arguments of "
                "MultiTaskHyperModel (or the searched strategy)."
            )
        self.compile_kwargs = compile_kwargs

    @property
    def tuner_objective(self):
        """The `keras_tuner.Objective` matching `objective`."""
        return self.objective.to_keras_tuner()

    # ------------------------------------------------------------------
    # Building
    # ------------------------------------------------------------------

    def build(self, hp):
        """Builds and compiles the `MultiTaskModel` of a trial."""
        strategy_name = hp.Choice(STRATEGY_HP, list(self.strategies))
        model = self.build_architecture(hp)
        strategy = self.build_strategy(hp, strategy_name, model.task_names)
        model.compile(
            optimizer=self.build_optimizer(hp),
            loss=_fresh(self.loss),
            metrics=_fresh_metrics(self.metrics, model.task_names),
            loss_weighting=strategy,
            **_fresh(self.compile_kwargs),
        )
        return model

    def build_architecture(self, hp):
        """Calls the architecture function with `hp` and/or its choices."""
        kwargs = {"hp": hp} if self._takes_hp else {}
        for keyword in self._choices:
            choice = self.architecture_space[keyword]
            kwargs[keyword] = (
                choice(hp) if callable(choice) else hp.Fixed(keyword, choice)
            )
        model = self.architecture(**kwargs)
        if not isinstance(model, MultiTaskModel):
            raise TypeError(
                "The architecture function must return a keras_mtl."
                f"MultiTaskModel, got {type(model).__name__}."
            )
        return model

    def build_strategy(self, hp, strategy_name, task_names):
        """Declares every strategy's space and instantiates the chosen one.

        Every strategy's space is declared (in its conditional scope), so
        the tuner sees the whole space from the first build; only the chosen
        strategy's values are active and used.
        """
        chosen = {}
        for name in self.strategies:
            space = self.search_spaces.get(name)
            if space is None:
                continue
            if isinstance(space, Mapping):
                values = dict(space)
            else:
                with hp.conditional_scope(STRATEGY_HP, [name]), hp.name_scope(name):
                    values = _call_space(space, hp, task_names)
                if not isinstance(values, Mapping):
                    raise TypeError(
                        f"The search space of {name!r} must return a dict of "
                        f"keyword arguments, got {values!r}."
                    )
            if name == strategy_name:
                # None: a nested hyperparameter that is not active (e.g. DWA's
                # ema_decay when mode="epoch"): the strategy's default.
                chosen = {k: v for k, v in values.items() if v is not None}
        cls = weighting.lookup(strategy_name)
        if cls is None:
            raise ValueError(
                f"Unknown strategy {strategy_name!r}; valid: {weighting.available()}."
            )
        return cls(**chosen)

    def build_optimizer(self, hp):
        """A new optimizer for one build, with the trial's learning rate."""
        optimizer = self.optimizer
        if isinstance(optimizer, keras.optimizers.Optimizer):
            optimizer = type(optimizer).from_config(optimizer.get_config())
        elif inspect.isclass(optimizer):
            optimizer = optimizer()
        elif _is_optimizer_function(optimizer):
            optimizer = optimizer(hp)
            if not isinstance(optimizer, keras.optimizers.Optimizer):
                raise TypeError(
                    "The optimizer function must return a keras optimizer, "
                    f"got {type(optimizer).__name__}."
                )
            return optimizer
        else:
            optimizer = keras.optimizers.get(copy.deepcopy(optimizer))
        learning_rate = self.learning_rate
        if isinstance(learning_rate, list):
            learning_rate = hp.Choice("learning_rate", learning_rate)
        if learning_rate is not None:
            config = optimizer.get_config()
            config["learning_rate"] = float(learning_rate)
            optimizer = type(optimizer).from_config(config)
        return optimizer

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------

    def fit(self, hp, model, *args, **kwargs):
        """Trains one trial's model and returns its best epoch's logs.

        The arguments are those of `tuner.search` (`x`, `y`,
        `validation_data` or `validation_split`, `epochs`, ...). The
        objective is computed at each epoch end from the logs (by default
        the validation metrics, so pass validation data) and added to them;
        the returned dict holds every log value of the best epoch.

        Raises:
            keras_tuner.errors.FatalValueError: when no epoch's logs hold
                the metrics the objective reads (it would fail in every
                trial, so the search stops).
        """
        recorder = _ObjectiveRecorder(self.objective, model.task_names)
        callbacks = [recorder, *list(kwargs.pop("callbacks", None) or [])]
        model.fit(*args, callbacks=callbacks, **kwargs)
        if not recorder.epochs:
            raise keras_tuner.errors.FatalValueError(
                f"No epoch logged the metrics of objective {self.objective.name!r}: "
                f"{recorder.problem}"
            )
        values = [logs[self.objective.name] for logs in recorder.epochs]
        return dict(recorder.epochs[self.objective.best(values)])


class _ObjectiveRecorder(keras.callbacks.Callback):
    """Adds the objective to each epoch's logs and keeps a copy of them."""

    def __init__(self, objective, task_names):
        super().__init__()
        self.objective = objective
        self.task_names = tuple(task_names)
        self.epochs = []
        self.problem = "fit() ran no epoch."

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        try:
            value = self.objective(logs, self.task_names)
        except KeyError as error:
            self.problem = str(error.args[0]) if error.args else str(error)
            return
        logs[self.objective.name] = value
        self.epochs.append(
            {key: float(item) for key, item in logs.items() if _is_scalar(item)}
        )


def _is_scalar(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _resolve_strategies(strategies):
    if strategies is None:
        names = list(DEFAULT_STRATEGIES)
    elif isinstance(strategies, str):
        names = weighting.available() if strategies == "all" else [strategies]
    elif isinstance(strategies, Sequence) and strategies:
        names = list(strategies)
    else:
        raise ValueError(
            "strategies must be None, 'all', a name or a non-empty list of "
            f"names, got {strategies!r}."
        )
    resolved = []
    for name in names:
        cls = weighting.lookup(name) if isinstance(name, str) else None
        if cls is None:
            raise ValueError(
                f"Unknown strategy {name!r}. Valid names: "
                f"{', '.join(weighting.available())}."
            )
        if cls.registry_name not in resolved:
            resolved.append(cls.registry_name)
    return tuple(resolved)


def _merge_spaces(search_spaces):
    merged = dict(SEARCH_SPACES)
    if search_spaces is None:
        return merged
    if not isinstance(search_spaces, Mapping):
        raise ValueError(
            f"search_spaces must be a dict {{strategy: space}}, got {search_spaces!r}."
        )
    for name, space in search_spaces.items():
        cls = weighting.lookup(name)
        if cls is None:
            raise ValueError(
                f"search_spaces names an unknown strategy {name!r}. Valid "
                f"names: {', '.join(weighting.available())}."
            )
        if space is not None and not callable(space) and not isinstance(space, Mapping):
            raise ValueError(
                f"The search space of {name!r} must be None, a function of hp "
                f"or a dict of keyword arguments, got {space!r}."
            )
        merged[cls.registry_name] = space
    return merged


def _call_space(space, hp, task_names):
    try:
        parameters = inspect.signature(space).parameters
    except (TypeError, ValueError):
        parameters = {}
    if "task_names" in parameters:
        return space(hp, task_names=tuple(task_names))
    return space(hp)


def _architecture_keywords(architecture, space):
    """Whether the architecture takes `hp`, and which keyword choices."""
    declared = getattr(architecture, "choices", None)
    if declared is not None:
        choices = tuple(declared)
        unknown = [c for c in choices if c not in space]
        if unknown:
            raise ValueError(
                f"The architecture's choices {unknown} have no entry in "
                f"architecture_space (known: {sorted(space)})."
            )
        return False, choices
    try:
        parameters = inspect.signature(architecture).parameters
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Cannot read the parameters of architecture {architecture!r}: {error}"
        ) from error
    takes_hp, choices = False, []
    for name, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name == "hp":
            takes_hp = True
        elif name in space:
            choices.append(name)
        elif parameter.default is inspect.Parameter.empty:
            raise ValueError(
                f"The architecture function's parameter {name!r} is neither "
                f"`hp` nor a key of architecture_space ({sorted(space)}) and "
                "has no default."
            )
    return takes_hp, tuple(choices)


def _is_optimizer_function(optimizer):
    return (
        callable(optimizer)
        and not inspect.isclass(optimizer)
        and not isinstance(optimizer, keras.optimizers.Optimizer)
    )


def _check_learning_rate(learning_rate):
    if learning_rate is None:
        return None
    if isinstance(learning_rate, Sequence) and not isinstance(learning_rate, str):
        values = [float(v) for v in learning_rate]
        if not values or any(not v > 0 for v in values):
            raise ValueError(
                f"learning_rate values must be positive, got {learning_rate!r}."
            )
        return sorted(set(values))
    value = float(learning_rate)
    if not value > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}.")
    return value


def _fresh(value):
    """A new copy of Keras loss / metric objects (a model must own its own)."""
    if isinstance(value, Mapping):
        return {key: _fresh(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_fresh(item) for item in value]
    if isinstance(value, keras.losses.Loss | keras.metrics.Metric):
        try:
            return type(value).from_config(value.get_config())
        except Exception:  # noqa: BLE001 - a custom object without a config
            return copy.deepcopy(value)
    return value


def _fresh_metrics(metrics, task_names):
    """Per-task metric dicts, with a fresh copy of each metric per task."""
    if metrics is None:
        return None
    if isinstance(metrics, Mapping):
        return _fresh(metrics)
    if isinstance(metrics, Sequence) and not isinstance(metrics, str):
        return {task: _fresh(list(metrics)) for task in task_names}
    return metrics


__all__ = ["MultiTaskHyperModel", "STRATEGY_HP"]
