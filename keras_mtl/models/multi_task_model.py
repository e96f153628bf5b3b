"""`MultiTaskModel`: a functional Keras model with one output per task."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import keras
import tensorflow as tf
from keras import ops

from keras_mtl import weighting
from keras_mtl.models._backward_stages import find_backward_stages
from keras_mtl.models.task_graph import analyze_task_graph
from keras_mtl.models.training_hooks import NonFiniteGuard, TrainingHooks
from keras_mtl.utils.serialization import register_serializable
from keras_mtl.weighting.registry import registered_strategies

_NONFINITE_MODES = ("raise", "skip")
_PER_TASK_GRADIENTS = ("matrix", "gramian")


@register_serializable
class MultiTaskModel(keras.Model):
    """A multi-task model: shared layers, one named output per task.

    Built like a functional `keras.Model` whose outputs are a dict
    `{task_name: tensor}`, or from a shared trunk and a dict of heads with
    `MultiTaskModel.from_trunk`. Its own `train_step` computes one loss per
    task and hands the vector of task losses (or the per-task gradients of
    the shared variables) to a multi-task strategy chosen in `compile`:

        model.compile(
            optimizer="adam",
            loss={"left": "sparse_categorical_crossentropy", "right": ...},
            loss_weighting="dwa",          # any name of keras_mtl.weighting
            metrics={"left": ["accuracy"], "right": ["accuracy"]},
        )

    During `fit`, the logs (progress bar and `History`) hold `loss` (the
    unweighted sum of the task losses, comparable across strategies), each
    `<task>_loss`, each `<task>_weight` (the strategy's effective weight,
    averaged over the epoch's steps) and every compiled per-task metric
    (`<task>_<metric>`). `evaluate` gives the same without weights.

    The model finds which trainable variables are shared (more than one
    task's output depends on them: `shared_variables`) and which belong to
    one task (`task_variables`) by walking its graph from each output, and
    which tensors form the shared representation between trunk and heads
    (`shared_representations`). `set_variable_roles` overrides the split.

    Args:
        inputs: the model inputs (`keras.Input` tensors), as for
            `keras.Model`.
        outputs: a dict `{task_name: KerasTensor}`, one output per task.
            Its order is the task order of loss vectors and weights.
        name: the model's name.

    Example:

    >>> inputs = keras.Input((8,))
    >>> shared = keras.layers.Dense(16, activation="relu")(inputs)
    >>> model = keras_mtl.MultiTaskModel(
    ...     inputs,
    ...     {"a": keras.layers.Dense(3)(shared), "b": keras.layers.Dense(1)(shared)},
    ... )
    >>> model.task_names
    ('a', 'b')
    >>> len(model.shared_variables)
    2
    >>> {task: len(v) for task, v in model.task_variables.items()}
    {'a': 2, 'b': 2}
    """

    def __init__(self, inputs, outputs, name=None, **kwargs):
        task_order = kwargs.pop("task_names", None)
        auxiliary_outputs = kwargs.pop("auxiliary_outputs", None)
        auxiliary_tasks = kwargs.pop("auxiliary_tasks", None)
        aux_weight = float(kwargs.pop("aux_weight", 1.0))
        if auxiliary_tasks and isinstance(outputs, Mapping):
            # Rebuilt from a config: the auxiliary outputs sit in `outputs`.
            outputs = dict(outputs)
            auxiliary_outputs = {
                task: outputs.pop(_aux_key(task)) for task in auxiliary_tasks
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
        all_outputs = dict(outputs)
        for task, tensor in auxiliary_outputs.items():
            if _aux_key(task) in outputs:
                raise ValueError(
                    f"Task name {_aux_key(task)!r} clashes with the auxiliary "
                    f"output of task {task!r}."
                )
            all_outputs[_aux_key(task)] = tensor
        super().__init__(inputs, all_outputs, name=name, **kwargs)
        self.task_names = tuple(outputs)
        self.auxiliary_tasks = tuple(auxiliary_outputs)
        self.aux_weight = aux_weight
        self._task_graph = analyze_task_graph(
            {task: self._outputs_struct[task] for task in self.task_names},
            self.trainable_variables,
        )
        self.loss_weighting = None
        self._loss_fns = None
        self._missing_labels = None
        self._on_nonfinite = "raise"
        self._guard = NonFiniteGuard()
        self._loss_tracker_sum = keras.metrics.Mean(name="loss")
        self._task_loss_trackers = [
            keras.metrics.Mean(name=f"{task}_loss") for task in self.task_names
        ]
        self._task_weight_trackers = [
            keras.metrics.Mean(name=f"{task}_weight") for task in self.task_names
        ]
        self._aux_loss_trackers = [
            keras.metrics.Mean(name=f"{task}_aux_loss") for task in self.auxiliary_tasks
        ]

    # ------------------------------------------------------------------
    # Construction helpers
    # ------------------------------------------------------------------

    @classmethod
    def from_trunk(cls, trunk, heads, inputs=None, name=None):
        """Builds a model from a shared trunk and a dict of task heads.

        Args:
            trunk: a layer or model mapping the inputs to the shared
                features (for example a `keras.applications` backbone).
            heads: dict `{task_name: layer}`; each head maps the trunk's
                output to that task's prediction.
            inputs: the `keras.Input` tensor(s). Defaults to `trunk.inputs`
                when the trunk is a functional model.
            name: the model's name.

        Returns:
            A `MultiTaskModel`.
        """
        if not isinstance(heads, Mapping) or not heads:
            raise ValueError(
                "from_trunk needs `heads` as a non-empty dict {task: layer}, "
                f"got {heads!r}."
            )
        if inputs is None:
            inputs = getattr(trunk, "inputs", None)
            if not inputs:
                raise ValueError(
                    "from_trunk could not find the trunk's inputs: pass "
                    "`inputs=keras.Input(shape)`."
                )
            inputs = inputs[0] if len(inputs) == 1 else inputs
        features = trunk(inputs)
        outputs = {}
        for task, head in heads.items():
            if not callable(head):
                raise ValueError(
                    f"The head of task {task!r} must be a Keras layer or "
                    f"model, got {type(head).__name__}."
                )
            outputs[task] = head(features)
        return cls(inputs, outputs, name=name)

    # ------------------------------------------------------------------
    # Task structure
    # ------------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def shared_variables(self) -> list:
        """Trainable variables more than one task's loss depends on."""
        return list(self._task_graph.shared_variables)

    @property
    def task_variables(self) -> dict:
        """Dict task -> the trainable variables only that task depends on."""
        return {t: list(v) for t, v in self._task_graph.task_variables.items()}

    @property
    def last_shared_variables(self) -> list:
        """Variables of the last shared layer(s), those producing the shared
        representation (GradNorm measures gradient norms on them)."""
        return list(self._task_graph.last_shared_variables)

    @property
    def shared_representations(self) -> list:
        """The tensors shared layers hand to task-specific layers."""
        return list(self._task_graph.shared_representations)

    def set_variable_roles(self, shared=None, tasks=None) -> None:
        """Overrides the automatic split into shared and task variables.

        Args:
            shared: the variables to treat as shared (gradient strategies
                combine the per-task gradients of exactly these).
            tasks: dict task -> that task's own variables. Tasks not named
                keep their automatic variables, minus any now listed as
                shared.

        Call it before `compile` (or compile again afterwards).
        """
        trainable = {id(v): v for v in self.trainable_variables}
        graph = self._task_graph
        new_shared = list(graph.shared_variables if shared is None else shared)
        new_tasks = self.task_variables
        if tasks is not None:
            unknown = sorted(set(tasks) - set(self.task_names))
            if unknown:
                raise ValueError(
                    f"set_variable_roles got unknown tasks {unknown}; the "
                    f"model's tasks are {list(self.task_names)}."
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
                    f"of model {self.name!r}."
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
        shared_ids = {id(v) for v in new_shared}
        last = [v for v in graph.last_shared_variables if id(v) in shared_ids]
        self._task_graph = type(graph)(
            new_shared,
            new_tasks,
            list(graph.shared_representations),
            last or new_shared,
        )
        self.train_function = None

    # ------------------------------------------------------------------
    # Compilation
    # ------------------------------------------------------------------

    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weighting=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        on_nonfinite="raise",
        task_sampling=None,
        missing_labels=None,
        per_task_gradients="matrix",
        run_eagerly=False,
        steps_per_execution=1,
        jit_compile="auto",
        auto_scale_loss=True,
    ):
        """Configures the model for multi-task training.

        Args:
            optimizer: a Keras optimizer or its name.
            loss: dict `{task: loss}` naming every task exactly once, or one
                loss used for every task. Each loss is a Keras loss (name,
                function or `keras.losses.Loss`), reduced over the batch
                with the task's sample weights.
            loss_weighting: the multi-task strategy: a registered name (see
                `keras_mtl.weighting.available()`), a config dict, a
                `Strategy` class or instance. Default: equal weighting.
            loss_weights: fixed task weights, a dict `{task: weight}` or a
                list in task order: a shortcut for
                `loss_weighting=StaticWeighting(loss_weights)`.
            metrics: dict `{task: [metrics]}` (tasks may be omitted), or a
                list of metrics used for every task.
            weighted_metrics: like `metrics`, weighted by sample weights.
            on_nonfinite: what a step whose task loss is NaN or infinite
                does. `"raise"` (default): the step is not applied and `fit`
                stops with an error naming the task and the step. `"skip"`:
                the step is not applied (model, optimizer and strategy state
                stay as they were) and training goes on.
            task_sampling: None (every step trains every task), or
                `"uniform"`: every step draws one task uniformly at random
                and only its loss trains the model, as in Task Routing
                (Strezoski et al. 2019) and the alternating training of
                Søgaard & Goldberg (2016). The other tasks' losses are still
                computed and logged. Only with strategies whose weights do
                not depend on the losses (`"ew"`, `loss_weights`); the
                logged `<task>_weight` is then how often the task was drawn.
            missing_labels: None (every sample has every label), or how an
                absent label is marked: a number (for example -1) or NaN,
                the value the whole target of an unlabelled sample holds (a
                target counts as missing when any of its entries equals it;
                for integer labels of dense outputs, per position), or
                `"sample_weight"` (the task's sample weights are the mask:
                weight 0 means unlabelled). One value for every task, or a
                dict `{task: value}` (tasks it does not name are always
                labelled). A task's loss and metrics then average over its
                labelled samples only; a step in which a task has no
                labelled sample gives it loss 0, weight 0, no gradient, and
                leaves the strategy's state for it untouched (gradient
                methods drop its row). Only strategies with
                `supports_missing_tasks` accept it.
            per_task_gradients: how a gradient method's per-task gradients
                of the shared variables are combined. `"matrix"` (default):
                the model forms the `(T, P)` matrix G of per-task gradients
                and the strategy returns the update from it. `"gramian"`:
                only for strategies that need just the Gramian
                (`requires == "gramian"`: MGDA, PCGrad, Nash-MTL, IMTL-G,
                UPGrad, ...) and parameter gradients (not `rep_grad`). The
                model never forms G: it sums the Gramian variable by variable,
                G G^T = sum_v G_v G_v^T (G_v: the columns of variable v),
                and obtains the update sum_t w_t g_t as the gradient of
                sum_t w_t L_t, one more backward pass. Where the trunk can
                be cut (tensors every path through it crosses: the output
                of every layer of a chain, of every residual block, inside
                nested models too), the per-task backward passes run stage
                by stage for all tasks in step, and a stage's per-task
                gradients are freed once its Gramian term is summed. A
                stage holds T per-task gradients of its parameters and T
                per-task cotangents at its cuts (batch x cut size), and the
                stages are chosen to make the largest one smallest; where
                no cut pays (activations larger than parameters, as in
                small convolutional trunks) the trunk is one stage. Memory
                then grows with T times the largest stage, not with T * P:
                flat in depth (`benchmarks/many_tasks.py`). The update is
                the same up to floating-point rounding.
            run_eagerly, steps_per_execution, jit_compile, auto_scale_loss:
                as for `keras.Model.compile`. `jit_compile=True` compiles
                the whole step, strategy included, with XLA.
        """
        if on_nonfinite not in _NONFINITE_MODES:
            raise ValueError(
                f"on_nonfinite must be one of {_NONFINITE_MODES}, got {on_nonfinite!r}."
            )
        self._loss_fns = self._resolve_losses(loss)
        metrics = self._per_task_dict(metrics, "metrics")
        weighted_metrics = self._per_task_dict(weighted_metrics, "weighted_metrics")
        strategy = self._resolve_strategy(loss_weighting, loss_weights)
        _check_jit_compile(jit_compile, self.distribute_strategy)
        super().compile(
            optimizer=optimizer,
            loss=None,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        previous = self.loss_weighting
        if previous is not None and previous is not strategy:
            # Forget the old strategy's variables: they must not be trained,
            # saved or restored with the model any more.
            self._tracker.untrack(previous)
        self.loss_weighting = strategy
        self._on_nonfinite = on_nonfinite
        self._set_task_sampling(task_sampling, strategy)
        self._missing_labels = self._resolve_missing_labels(missing_labels, strategy)
        self._per_task_gradients = _check_per_task_gradients(
            per_task_gradients, strategy
        )
        # Kept in a plain holder, not a dict attribute: Keras' saving walks
        # dict attributes and would save the optimizer and the strategy a
        # second time (and warn when loading them back).
        self._compile_arguments = _CompileArguments(
            loss=loss,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            on_nonfinite=on_nonfinite,
            task_sampling=task_sampling,
            missing_labels=missing_labels,
            per_task_gradients=per_task_gradients,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            # The argument, not its resolution: "auto" resolves again where
            # the model is loaded (off under a distribution strategy).
            jit_compile=jit_compile,
        )
        if self.optimizer is not None and not self.optimizer.built:
            # Built here, not in the first traced step: building inside the
            # trace creates variables and makes Keras trace the step twice.
            self.optimizer.build(self.trainable_variables)

    def _set_task_sampling(self, task_sampling, strategy):
        if task_sampling not in (None, "uniform"):
            raise ValueError(
                f"task_sampling must be None or 'uniform', got {task_sampling!r}."
            )
        if task_sampling is not None and not isinstance(
            strategy, (weighting.EqualWeighting, weighting.StaticWeighting)
        ):
            raise ValueError(
                "task_sampling trains one task per step, which only makes sense "
                "with fixed weights: use loss_weighting='ew' or loss_weights, "
                f"not {type(strategy).__name__}."
            )
        self._task_sampling = task_sampling
        if task_sampling is not None and getattr(self, "_task_sampler", None) is None:
            self._task_sampler = keras.random.SeedGenerator(0, name="task_sampler")
            # Saved with the model, so that a resumed run draws the same tasks.
            self._track_variable(self._task_sampler.state)
            self._seed_generators.remove(self._task_sampler)

    def _resolve_missing_labels(self, missing_labels, strategy):
        """`{task: sentinel | "sample_weight"}` for masked tasks, or None."""
        if missing_labels is None:
            return None
        if isinstance(missing_labels, Mapping):
            self._check_task_names(missing_labels.keys(), "missing_labels")
            rules = {
                t: missing_labels[t] for t in self.task_names if t in missing_labels
            }
        else:
            rules = {t: missing_labels for t in self.task_names}
        resolved = {}
        for task, rule in rules.items():
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
                    f"'sample_weight' or None, got {rule!r}."
                )
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

    def _label_mask(self, task, target, pred, sample_weight):
        """The target with absent labels filled, and the labelled mask.

        Returns `(target, labelled)`: `labelled` is None when the task is
        not masked, else a boolean tensor of the shape of the loss values
        (the prediction's shape without its last axis).
        """
        rule = (self._missing_labels or {}).get(task)
        if rule is None:
            return target, None
        pred_rank = len(pred.shape)
        if rule == "sample_weight":
            if sample_weight is None:
                return target, None
            labelled = ops.convert_to_tensor(sample_weight) > 0
            return target, _with_rank(labelled, pred_rank - 1)
        target = ops.convert_to_tensor(target)
        if math.isnan(rule):
            if not keras.backend.is_float_dtype(target.dtype):
                raise ValueError(
                    f"missing_labels for task {task!r} is NaN, but its targets "
                    f"are {target.dtype} and cannot hold NaN: mark absent "
                    "labels with a number such as -1."
                )
            missing = ops.isnan(target)
        else:
            missing = ops.equal(target, ops.cast(rule, target.dtype))
        target = ops.where(missing, ops.zeros_like(target), target)
        if len(target.shape) == pred_rank:
            missing = ops.any(missing, axis=-1)
        return target, ops.logical_not(missing)

    def _sampled_task_mask(self):
        """A one-hot `(T,)` mask of this step's task, or None."""
        if getattr(self, "_task_sampling", None) is None:
            return None
        task = keras.random.randint(
            (), 0, self.num_tasks, seed=self._task_sampler, dtype="int32"
        )
        return ops.one_hot(task, self.num_tasks, dtype="float32")

    def _per_task_dict(self, value, arg_name):
        if value is None:
            return None
        if isinstance(value, Mapping):
            self._check_task_names(value.keys(), arg_name)
            return {t: value[t] for t in self.task_names if t in value}
        if isinstance(value, Sequence) and not isinstance(value, str):
            return {t: list(value) for t in self.task_names}
        raise ValueError(
            f"`{arg_name}` must be a dict {{task: [metrics]}} or a list of "
            f"metrics, got {value!r}."
        )

    def _check_task_names(self, names, what, require_all=False):
        names = list(names)
        extra = sorted(set(names) - set(self.task_names))
        missing = sorted(set(self.task_names) - set(names)) if require_all else []
        if extra or missing:
            parts = []
            if missing:
                parts.append(f"missing tasks {missing}")
            if extra:
                parts.append(f"unknown tasks {extra}")
            raise ValueError(
                f"`{what}` does not match the model's tasks "
                f"{list(self.task_names)}: {' and '.join(parts)}."
            )

    def _resolve_losses(self, loss):
        if loss is None:
            raise ValueError(
                "MultiTaskModel.compile needs `loss`: a dict {task: loss} "
                f"for the tasks {list(self.task_names)}, or one loss for all."
            )
        if isinstance(loss, Mapping):
            self._check_task_names(loss.keys(), "loss", require_all=True)
            per_task = {t: loss[t] for t in self.task_names}
        else:
            per_task = {t: loss for t in self.task_names}
        resolved = {}
        for task, identifier in per_task.items():
            fn = keras.losses.get(identifier)
            if fn is None:
                raise ValueError(f"Task {task!r} has no loss (got None).")
            if not isinstance(fn, keras.losses.Loss):
                fn = _FunctionLoss(fn)
            resolved[task] = fn
        return resolved

    def _resolve_strategy(self, loss_weighting, loss_weights):
        if loss_weights is not None:
            if loss_weighting is not None:
                raise ValueError(
                    "Pass either `loss_weighting` or `loss_weights` to "
                    "compile(), not both."
                )
            if isinstance(loss_weights, Mapping):
                self._check_task_names(loss_weights.keys(), "loss_weights", True)
            strategy = weighting.StaticWeighting(loss_weights)
        else:
            strategy = weighting.get(loss_weighting)
        strategy.set_task_names(self.task_names)
        if strategy.requires == "losses":
            shape = (self.num_tasks,)
            self._shared_gradient_variables(strategy)  # validates early
        elif getattr(strategy, "rep_grad", False):
            self._representation_split()  # validates early
            shape = (self.num_tasks, None)
        else:
            num_params = sum(
                math.prod(v.shape) for v in self._task_graph.shared_variables
            )
            if num_params == 0:
                raise ValueError(
                    f"Strategy {type(strategy).__name__} combines per-task "
                    "gradients of shared variables, but no trainable "
                    "variable of this model is shared by two tasks."
                )
            shape = (self.num_tasks, num_params)
        if strategy.built:
            built_shape = tuple(strategy._build_shapes_dict.get("input_shape", ()))
            if built_shape and tuple(built_shape) != shape:
                raise ValueError(
                    f"Strategy {strategy.name!r} was built for input shape "
                    f"{built_shape} but this model needs {shape} "
                    f"({self.num_tasks} tasks). Create a new strategy."
                )
        else:
            strategy.build(shape)
        return strategy

    def get_compile_config(self):
        if not self.compiled or self.loss_weighting is None:
            return {}
        config = dict(
            optimizer=self.optimizer,
            loss_weighting=weighting.serialize(self.loss_weighting),
            **vars(self._compile_arguments),
        )
        return {
            key: keras.saving.serialize_keras_object(value)
            for key, value in config.items()
        }

    def compile_from_config(self, config):
        config = dict(config)
        strategy = weighting.deserialize(config.pop("loss_weighting"))
        config = {
            key: keras.saving.deserialize_keras_object(value)
            for key, value in config.items()
        }
        self.compile(loss_weighting=strategy, **config)

    def get_config(self):
        config = super().get_config()
        config["task_names"] = list(self.task_names)
        if self.auxiliary_tasks:
            config["auxiliary_tasks"] = list(self.auxiliary_tasks)
            config["aux_weight"] = self.aux_weight
        return config

    def inference_model(self, name=None):
        """The model without its auxiliary outputs, for inference and export.

        Returns a `MultiTaskModel` on the same layers (and so the same
        weights) with only the task outputs: the auxiliary branches, their
        parameters and their cost are gone. Without auxiliary outputs this
        is the model itself.
        """
        if not self.auxiliary_tasks:
            return self
        outputs = {task: self._outputs_struct[task] for task in self.task_names}
        return MultiTaskModel(
            self.input, outputs, name=name or f"{self.name}_inference"
        )

    # ------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------

    def fit(self, *args, callbacks=None, **kwargs):
        self._require_compiled()
        targets = args[1] if len(args) > 1 else kwargs.get("y")
        if isinstance(targets, Mapping):
            for task, target in targets.items():
                _check_target_dtype(task, target)
        hooks = TrainingHooks(self, self._guard, self._on_nonfinite)
        callbacks = [hooks, *list(callbacks or [])]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3 (keras-team/keras#20585) hands the whole nested (x, y)
        # batch to one `strategy.reduce`, which MultiWorkerMirroredStrategy
        # rejects, so no Keras model can `fit` under it. The batch only gives
        # the symbolic build its shapes and dtypes: this worker's first
        # replica has the same ones and needs no collective op.
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: _first_local_value(self.distribute_strategy, v),
                    next(it),
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def _require_compiled(self):
        if self._loss_fns is None:
            raise RuntimeError(
                "Call MultiTaskModel.compile(optimizer, loss=...) before "
                "fit() or evaluate()."
            )

    def evaluate(self, *args, **kwargs):
        self._require_compiled()
        return super().evaluate(*args, **kwargs)

    @property
    def metrics(self):
        metrics = [self._loss_tracker_sum, *self._task_loss_trackers]
        metrics.extend(self._task_weight_trackers)
        metrics.extend(self._aux_loss_trackers)
        if self._compile_metrics is not None:
            metrics.append(self._compile_metrics)
        return metrics

    def _standardize_targets(self, y, sample_weight):
        """Checks target and sample-weight dicts against the task names."""
        if not isinstance(y, Mapping):
            if self.num_tasks == 1 and y is not None:
                y = {self.task_names[0]: y}
            else:
                raise ValueError(
                    "MultiTaskModel needs targets as a dict {task: y} for "
                    f"the tasks {list(self.task_names)}, got "
                    f"{type(y).__name__}."
                )
        self._check_task_names(y.keys(), "y (targets)", require_all=True)
        if sample_weight is None:
            weights = {}
        elif isinstance(sample_weight, Mapping):
            self._check_task_names(sample_weight.keys(), "sample_weight")
            weights = dict(sample_weight)
        else:
            weights = {t: sample_weight for t in self.task_names}
        return y, weights

    def _check_target_shapes(self, y, y_pred):
        pairs = [(t, t) for t in self.task_names]
        pairs += [(t, _aux_key(t)) for t in self.auxiliary_tasks]
        for task, key in pairs:
            target, pred = y[task], y_pred[key]
            _check_target_dtype(task, target)
            t_shape, p_shape = tuple(target.shape), tuple(pred.shape)
            if (
                _is_sparse_loss(self._loss_fns[task])
                and len(t_shape) == len(p_shape)
                and t_shape[-1] not in (1, None)
            ):
                raise ValueError(
                    f"Task {task!r}: its loss takes integer class labels, but "
                    f"the targets have shape {t_shape}, like one-hot vectors. "
                    f"Pass labels of shape {p_shape[:-1]}, or use "
                    "categorical_crossentropy for one-hot targets."
                )
            if not _shapes_compatible(t_shape, p_shape):
                raise ValueError(
                    f"Task {task!r}: target shape {t_shape} cannot match "
                    f"the head's output shape {p_shape}. Expected the same "
                    "shape, or integer labels of shape "
                    f"{p_shape[:-1]} (or {p_shape[:-1] + (1,)})."
                )

    def _task_losses(self, y, y_pred, sample_weights, tasks=None):
        """The `(T,)` task losses of the global batch, label counts and the
        losses' raw parts.

        The counts are None without `missing_labels`; else `(T,)` floats,
        the number of labelled elements of each task in the global batch.
        The parts are `(stacked, per_task)`: this replica's task losses (or
        weighted loss sums) as T scalars, and stacked; loss t depends on the
        model through the t-th scalar only (see `_task_gradients`).
        """
        tasks = tasks or self.task_names
        if self._missing_labels is None:
            values = []
            for task in tasks:
                target, pred = _aligned_target(y[task], y_pred[task])
                target = _same_batch_size(task, target, pred)
                # The task's name in the names of the ops (and their errors).
                with tf.name_scope(_scope_name(task)):
                    value = self._loss_fns[task](
                        target, pred, sample_weight=sample_weights.get(task)
                    )
                values.append(ops.cast(value, "float32"))
            stacked = ops.stack(values)
            return _global_batch_losses(stacked), None, (stacked, values)
        sums, divisors, counts = [], [], []
        for task in tasks:
            target, pred = _aligned_target(y[task], y_pred[task])
            target = _same_batch_size(task, target, pred)
            with tf.name_scope(_scope_name(task)):
                total, divisor, count = self._masked_loss_terms(
                    task, target, pred, sample_weights.get(task)
                )
            sums.append(total)
            divisors.append(divisor)
            counts.append(count)
        stacked = ops.stack(sums)
        losses, counts = _masked_global_losses(
            stacked, ops.stack(divisors), ops.stack(counts)
        )
        return losses, counts, (stacked, sums)

    def _masked_loss_terms(self, task, target, pred, sample_weight):
        """This replica's weighted loss sum, divisor and labelled count."""
        fn = self._loss_fns[task]
        target, labelled = self._label_mask(task, target, pred, sample_weight)
        values = fn.call(
            ops.convert_to_tensor(target, dtype=fn.dtype),
            ops.convert_to_tensor(pred, dtype=fn.dtype),
        )
        values = ops.cast(values, "float32")
        if labelled is None:
            labelled = ops.ones(ops.shape(values), dtype="bool")
        if len(labelled.shape) != len(values.shape):
            raise ValueError(
                f"missing_labels: the loss of task {task!r} gives values of "
                f"shape {tuple(values.shape)}, but its labels mark samples of "
                f"shape {tuple(labelled.shape)}. Use a loss that returns one "
                "value per labelled element (the prediction's shape without "
                "its last axis)."
            )
        mask = ops.cast(labelled, "float32")
        weight = mask
        if sample_weight is not None:
            sample_weight = _with_rank(
                ops.cast(sample_weight, "float32"), len(values.shape)
            )
            weight = mask * sample_weight
        total = ops.sum(values * weight)
        count = ops.sum(mask)
        reduction = fn.reduction
        if reduction in (None, "none"):
            raise ValueError(
                f"The loss of task {task!r} has reduction={reduction!r}; a task "
                "loss must reduce to a scalar."
            )
        if reduction == "sum":
            divisor = ops.convert_to_tensor(1.0 / _num_replicas())
        elif reduction == "mean_with_sample_weight":
            divisor = ops.sum(weight)
        else:
            divisor = count
        return total, divisor, count

    def _kpis(self):
        """The per-task metric values a strategy asks for (`kpi_metric`)."""
        name = self.loss_weighting.kpi_metric
        results = {}
        if self._compile_metrics is not None:
            results = self._compiled_metric_results()
        values = []
        for task in self.task_names:
            key = f"{task}_{name}"
            if key not in results:
                raise ValueError(
                    f"Strategy {type(self.loss_weighting).__name__} needs the "
                    f"metric {name!r} for task {task!r} (log key {key!r}); "
                    f"compile with metrics={{{task!r}: [{name!r}], ...}}. "
                    f"Compiled metrics: {sorted(results)}."
                )
            values.append(ops.cast(results[key], "float32"))
        return ops.stack(values)

    def _masked_for_metrics(self, y, y_pred, sample_weights, finite=None):
        """What the compiled metrics see: targets with absent labels filled,
        and predictions carrying a Keras mask that drops the unlabelled
        samples (and every sample of a non-finite step), so that weighted
        and unweighted metrics average over the labelled samples alone.

        Returns `(y, y_pred, sample_weights)`, the weights a full dict or
        None."""
        y, y_pred = dict(y), dict(y_pred)
        for task in self.task_names:
            target, pred = y[task], y_pred[task]
            aligned, _ = _aligned_target(target, pred)
            filled, labelled = self._label_mask(
                task, aligned, pred, sample_weights.get(task)
            )
            if labelled is None and finite is None:
                continue
            if labelled is not None and filled is not aligned:
                target = filled
                if len(target.shape) != len(y[task].shape):
                    target = ops.squeeze(target, -1)
            if labelled is None:
                labelled = ops.ones(ops.shape(pred)[:-1], dtype="bool")
            if finite is not None:
                labelled = ops.logical_and(labelled, finite)
                target = ops.where(finite, target, ops.zeros_like(target))
                pred = ops.where(finite, pred, ops.zeros_like(pred))
            else:
                pred = tf.identity(pred)  # a new tensor to carry the mask
            _set_keras_mask(pred, labelled)
            y[task], y_pred[task] = target, pred
        weights = None
        if sample_weights:
            weights = {
                t: sample_weights.get(t, ops.ones((ops.shape(y[t])[0],)))
                for t in self.task_names
            }
        return y, y_pred, weights

    def _loss_scale(self):
        scale = getattr(self.optimizer, "dynamic_scale", None)
        if scale is None:
            return None
        return ops.cast(scale, "float32")

    def _apply_if(self, ok, grads, variables):
        """Applies `grads` only where the scalar `ok` is True and they are
        finite; returns whether they were applied.

        A finite loss may still have a non-finite gradient (sqrt at 0);
        such a step is treated like a non-finite loss. Not under loss
        scaling, whose optimizer skips overflowing steps itself."""
        if not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            grads_finite = _on_all_replicas(
                tf.reduce_all(
                    tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
                )
            )
            self._guard.record_gradients(ok, grads_finite)
            ok = ops.logical_and(ok, grads_finite)
        self._apply_update_if(ok, grads, variables)
        return ok

    def _apply_update_if(self, ok, grads, variables):
        replica = tf.distribute.get_replica_context()
        if (
            replica is None
            or replica.num_replicas_in_sync == 1
            or tf.__internal__.distribute.strategy_supports_no_merge_call()
        ):
            # Not a tf.cond around the optimizer step: XLA compiles that about
            # 8x slower on CPU (measured: 590 vs 74 ms per step on a small
            # CNN). Apply with zeroed gradients, then put back the variables
            # and the optimizer state where the step is skipped.
            state = [*variables, *self.optimizer.variables]
            before = [tf.identity(v.value) for v in state]
            self.optimizer.apply(
                [ops.where(ok, g, ops.zeros_like(g)) for g in grads], variables
            )
            for variable, value in zip(state, before):
                variable.assign(ops.where(ok, variable.value, value))
            return

        # Under a distribution strategy whose optimizer step synchronises
        # through merge_call (MirroredStrategy), the condition must be taken
        # in cross-replica context, as Keras' LossScaleOptimizer does.
        def cross_replica(distribution, ok, grads, variables):
            ok = distribution.experimental_local_results(ok)[0]

            def apply_on_replicas():
                distribution.extended.call_for_each_replica(
                    self.optimizer.apply, args=(grads, variables)
                )
                return tf.constant(True)

            tf.cond(ok, apply_on_replicas, lambda: tf.constant(False))

        replica.merge_call(cross_replica, args=(ok, grads, variables))

    def train_step(self, data):
        # Every state change of the step waits for the batch: at the end of
        # a data set of unknown length Keras runs the step once more and
        # the batch read fails; without this, the optimizer's iteration
        # count and strategy counters would already have moved.
        # (An XLA-compiled step takes the batch as its arguments, so it cannot
        # start early; there the dependencies would also stop TensorFlow from
        # lifting the metrics' variable creation out of the first trace.)
        if self.jit_compile:
            return self._train_step(data)
        inputs = [t for t in tf.nest.flatten(data) if tf.is_tensor(t)]
        with tf.control_dependencies(inputs):
            return self._train_step(data)

    def _train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, sample_weights = self._standardize_targets(y, sample_weight)
        _check_not_empty(x)
        strategy = self.loss_weighting
        state = [*self.non_trainable_variables, *strategy.trainable_variables]
        snapshot = [tf.identity(v.value) for v in state]
        task_snapshot = strategy.task_state_snapshot() if self._missing_labels else []

        if strategy.requires == "losses":
            update = self._loss_based_update
        else:
            update = self._gradient_based_update
        step = update(x, y, sample_weights)
        task_mask = _task_mask(step.counts)

        if strategy.uses_post_step_losses:
            model_state = list(self._model_state_variables())
            before = [tf.identity(v.value) for v in model_state]
            new_losses, _, _ = self._task_losses(
                y, self(x, training=True), sample_weights
            )
            for variable, value in zip(model_state, before):
                variable.assign(value)
            if task_mask is None:
                strategy.update_after_step(step.losses, new_losses)
            else:
                strategy.update_after_step(step.losses, new_losses, task_mask=task_mask)

        for variable, value in zip(state, snapshot):
            variable.assign(ops.where(step.finite, variable, value))
        if task_mask is not None:
            # An absent task's state stays as it was (Strategy docs).
            strategy.restore_absent_tasks(task_mask, task_snapshot)
        return self._update_logs(step, y_pred=step.y_pred)

    def _model_state_variables(self):
        strategy_ids = {id(v) for v in self.loss_weighting.variables}
        for variable in self.non_trainable_variables:
            if id(variable) not in strategy_ids:
                yield variable

    def _forward_and_losses(self, x, y, sample_weights):
        y_pred = self(x, training=True)
        return (y_pred, *self._losses_and_check(y, y_pred, sample_weights))

    def _losses_and_check(self, y, y_pred, sample_weights):
        """Task losses, auxiliary losses, whether the step may proceed, the
        label counts (None without `missing_labels`) and the task losses'
        raw parts (see `_task_losses`)."""
        self._check_target_shapes(y, y_pred)
        losses, counts, parts = self._task_losses(y, y_pred, sample_weights)
        aux_losses = self._auxiliary_losses(y, y_pred, sample_weights)
        checked = (
            losses if aux_losses is None else ops.concatenate([losses, aux_losses])
        )
        finite = _on_all_replicas(self._guard.record(checked))
        if self._on_nonfinite == "raise":
            finite = ops.logical_and(finite, self._guard.bad_step < 0)
        # An empty batch (possible inside a data set) trains nothing.
        finite = ops.logical_and(finite, _batch_size(y_pred) > 0)
        return losses, aux_losses, finite, counts, parts

    @property
    def _checked_loss_names(self):
        """Names of the losses the non-finite guard watches, in its order."""
        return (*self.task_names, *(_aux_key(t) for t in self.auxiliary_tasks))

    def _auxiliary_losses(self, y, y_pred, sample_weights):
        if not self.auxiliary_tasks:
            return None
        aux_pred = {t: y_pred[_aux_key(t)] for t in self.auxiliary_tasks}
        losses, _, _ = self._task_losses(
            y, aux_pred, sample_weights, self.auxiliary_tasks
        )
        return losses

    def _extra_objective(self, aux_losses):
        """What every step adds to the strategy's combination, unweighted by
        it: the layers' own losses (weight and activity regularisers, scaled
        for distribution as Keras does) and aux_weight times the auxiliary
        losses. None when there is nothing to add."""
        terms = []
        if self.losses:
            total = ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
            terms.append(total / _num_replicas())
        if aux_losses is not None and self.aux_weight > 0:
            safe = ops.where(ops.isfinite(aux_losses), aux_losses, 0.0)
            terms.append(self.aux_weight * ops.sum(safe))
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else ops.sum(ops.stack(terms))

    def _strategy_kwargs(self, counts=None):
        """Extra inputs of the strategy call; KPIs need metrics updated."""
        kwargs = {}
        if self.loss_weighting.kpi_metric is not None:
            kwargs["kpis"] = self._kpis()
        if counts is not None:
            kwargs["task_mask"] = _task_mask(counts)
        return kwargs

    def _update_compiled_metrics(self, finite, y, y_pred, sample_weights):
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(
                *self._masked_for_metrics(
                    y, self._task_outputs(y_pred), sample_weights, finite
                )
            )

    def _task_outputs(self, y_pred):
        """The predictions of the tasks (without auxiliary outputs)."""
        return {task: y_pred[task] for task in self.task_names}

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Keras builds the compiled metrics through this method: give them
        # the task outputs only, as the training and test steps do.
        if isinstance(y_pred, Mapping):
            y_pred = self._task_outputs(y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def _loss_based_update(self, x, y, sample_weights):
        strategy = self.loss_weighting
        variables = self.trainable_variables
        grad_variables = self._shared_gradient_variables(strategy)
        with tf.GradientTape() as tape:
            with tf.GradientTape(persistent=True) as inner:
                y_pred, losses, aux_losses, finite, counts, parts = (
                    self._forward_and_losses(x, y, sample_weights)
                )
                task_losses = [losses[t] for t in range(self.num_tasks)]
            self._update_compiled_metrics(finite, y, y_pred, sample_weights)
            safe_losses = ops.where(finite, losses, ops.zeros_like(losses))
            kwargs = self._strategy_kwargs(counts)
            if grad_variables:
                matrix = _gradient_matrix(inner, task_losses, parts, grad_variables)
                if not strategy.differentiable_gradients:
                    matrix = ops.stop_gradient(_sum_over_replicas(matrix))
                kwargs["shared_grads"] = ops.where(
                    finite, matrix, ops.zeros_like(matrix)
                )
            sampled = self._sampled_task_mask()
            if sampled is not None:
                objective, weights = strategy(
                    safe_losses * sampled, training=True, **kwargs
                )
                weights = weights * sampled
            else:
                objective, weights = strategy(safe_losses, training=True, **kwargs)
            extra = self._extra_objective(aux_losses)
            if extra is not None:
                objective = objective + extra
            scaled = self.optimizer.scale_loss(objective)
        grads = tape.gradient(scaled, variables)
        grads = [
            g if g is not None else ops.zeros_like(v) for g, v in zip(grads, variables)
        ]
        replicas = _num_replicas()
        if replicas > 1 and strategy.trainable_variables:
            # The objective depends on the strategy's own variables through
            # the global-batch losses, the same on every replica: their full
            # gradient is computed R times and summed by the optimizer.
            own = {id(v) for v in strategy.trainable_variables}
            grads = [
                g / replicas if id(v) in own else g for g, v in zip(grads, variables)
            ]
        finite = self._apply_if(finite, grads, variables)
        return _Step(y_pred, losses, aux_losses, weights, finite, counts)

    def _shared_gradient_variables(self, strategy):
        """The variables whose per-task gradients a loss strategy asks for."""
        which = getattr(strategy, "shared_gradients", None)
        if which is None:
            return []
        if which == "last_layer":
            variables = self._task_graph.last_shared_variables
        elif which == "all":
            variables = self._task_graph.shared_variables
        else:
            raise ValueError(
                f"{type(strategy).__name__}.shared_gradients must be None, "
                f"'last_layer' or 'all', got {which!r}."
            )
        if not variables:
            raise ValueError(
                f"{type(strategy).__name__} needs per-task gradients of shared "
                f"variables ({which!r}), but no trainable variable of this "
                "model is shared by two tasks."
            )
        return list(variables)

    def _representation_split(self):
        """Trunk (inputs -> shared representation) and heads (-> outputs)."""
        split = getattr(self, "_rep_split", None)
        if split is None:
            reps = self._task_graph.shared_representations
            if not reps:
                raise ValueError(
                    "rep_grad=True needs a shared representation: a tensor made "
                    "by shared layers and read by task-specific layers. This "
                    "model has none."
                )
            try:
                trunk = keras.Model(self.inputs, list(reps))
                heads = keras.Model(list(reps), self._outputs_struct)
            except ValueError as error:
                raise ValueError(
                    "rep_grad=True needs task heads that read only the shared "
                    f"representation, not the model inputs directly: {error}"
                ) from error
            split = _RepresentationSplit(trunk, heads)
            # Kept out of Keras' tracking: the layers are the model's own.
            object.__setattr__(self, "_rep_split", split)
        return split

    def _gradient_based_update(self, x, y, sample_weights):
        if getattr(self.loss_weighting, "rep_grad", False):
            return self._representation_gradient_update(x, y, sample_weights)
        return self._parameter_gradient_update(x, y, sample_weights)

    def _representation_gradient_update(self, x, y, sample_weights):
        strategy = self.loss_weighting
        split = self._representation_split()
        shared = self._task_graph.shared_variables
        own = self._task_graph.task_variables
        with tf.GradientTape(persistent=True) as tape:
            reps = split.trunk(x, training=True)
            reps = list(reps) if isinstance(reps, (list, tuple)) else [reps]
            for rep in reps:
                tape.watch(rep)
            step, task_objectives, strategy_objective, parts = (
                self._heads_and_objectives(split.heads, reps, y, sample_weights)
            )
            y_pred, losses, aux_losses, _, finite, counts = step
            extra = self._extra_objective(aux_losses)
        rows, summed_rows, own_grads = [], [], []
        sources = [[*reps, *own[task]] for task in self.task_names]
        for grads in _task_gradients(tape, task_objectives, parts, sources):
            rep_grads = [
                ops.cast(ops.zeros_like(r) if g is None else g, "float32")
                for g, r in zip(grads[: len(reps)], reps)
            ]
            rows.append(ops.concatenate([ops.reshape(g, (-1,)) for g in rep_grads]))
            summed_rows.append(
                ops.concatenate(
                    [ops.reshape(ops.sum(g, axis=0), (-1,)) for g in rep_grads]
                )
            )
            own_grads.append(grads[len(reps) :])
        matrix = ops.stack(rows)
        scale = self._loss_scale()
        if scale is not None:
            matrix = matrix / scale
        matrix = ops.where(finite, matrix, ops.zeros_like(matrix))
        self._update_compiled_metrics(finite, y, y_pred, sample_weights)
        safe_losses = ops.where(finite, losses, ops.zeros_like(losses))
        kwargs = self._strategy_kwargs(counts)
        if strategy.requires == "gramian":
            # As LibMTL's representation-gradient mode: the weights come from
            # the task gradients summed over the batch, (T, D); the update
            # combines the per-example gradients (T, B * D) with them.
            summed = ops.stack(summed_rows)
            if scale is not None:
                summed = summed / scale
            summed = ops.where(finite, summed, ops.zeros_like(summed))
            gramian = ops.matmul(summed, ops.transpose(summed))
            weights = _gramian_weights(strategy, gramian, safe_losses, kwargs)
            update = ops.matmul(weights[None, :], matrix)[0]
        else:
            update, weights = strategy(matrix, safe_losses, training=True, **kwargs)
        if scale is not None:
            update = update * scale
        cotangents, offset = [], 0
        for rep in reps:
            size = ops.size(rep)
            piece = ops.reshape(update[offset : offset + size], ops.shape(rep))
            cotangents.append(ops.cast(piece, rep.dtype))
            offset = offset + size
        shared_grads = tape.gradient(reps, shared, output_gradients=cotangents)
        shared_grads = [
            ops.zeros_like(v) if g is None else g for g, v in zip(shared_grads, shared)
        ]
        step = step._replace(weights=weights)
        return self._finish_parameter_step(
            tape, step, shared_grads, own_grads, extra, strategy_objective
        )

    def _scaled_head_gradients(self, strategy, losses, weights, own_grads):
        head_scales = strategy.head_gradient_scales(losses, weights)
        own = self._task_graph.task_variables
        task_grads, task_vars = [], []
        for t, task in enumerate(self.task_names):
            for grad, variable in zip(own_grads[t], own[task]):
                grad = ops.zeros_like(variable) if grad is None else grad
                factor = ops.cast(head_scales[t], grad.dtype)
                task_grads.append(grad * factor)
                task_vars.append(variable)
        return task_grads, task_vars

    def _parameter_gradient_update(self, x, y, sample_weights):
        if self._per_task_gradients == "gramian":
            stages = self._backward_stages(_static_batch_size(x))
            if stages is not None:
                return self._staged_gramian_update(stages, x, y, sample_weights)
        strategy = self.loss_weighting
        shared = self._task_graph.shared_variables
        own = self._task_graph.task_variables
        with tf.GradientTape(persistent=True) as tape:
            y_pred, losses, aux_losses, finite, counts, parts = (
                self._forward_and_losses(x, y, sample_weights)
            )
            task_objectives, strategy_objective = self._task_objectives(
                strategy, losses, counts
            )
            stacked_objectives = ops.stack(task_objectives)
            extra = self._extra_objective(aux_losses)
        # blocks[i]: the (T, P_i) per-task gradients of shared variable i.
        blocks, own_grads = [[] for _ in shared], []
        sources = [[*shared, *own[task]] for task in self.task_names]
        for grads, variables in zip(
            _task_gradients(tape, task_objectives, parts, sources), sources
        ):
            grads = [
                ops.zeros_like(v) if g is None else g for g, v in zip(grads, variables)
            ]
            for i, grad in enumerate(grads[: len(shared)]):
                blocks[i].append(ops.reshape(ops.cast(grad, "float32"), (-1,)))
            own_grads.append(grads[len(shared) :])
        blocks = [ops.stack(rows) for rows in blocks]
        self._update_compiled_metrics(finite, y, y_pred, sample_weights)
        safe_losses = ops.where(finite, losses, ops.zeros_like(losses))
        kwargs = self._strategy_kwargs(counts)
        if self._per_task_gradients != "matrix":
            weights = self._weights_from_gramian(
                strategy, _gramian_of_blocks(blocks), finite, safe_losses, kwargs
            )
            update_grads = _weighted_gradients(
                tape, stacked_objectives, shared, weights
            )
        else:
            update, weights = self._update_from_matrix(
                strategy, blocks, finite, safe_losses, kwargs
            )
            update_grads, offset = [], 0
            for variable in shared:
                size = math.prod(variable.shape)
                piece = ops.reshape(update[offset : offset + size], variable.shape)
                update_grads.append(ops.cast(piece, variable.dtype))
                offset += size
        return self._finish_parameter_step(
            tape,
            _Step(y_pred, losses, aux_losses, weights, finite, counts),
            update_grads,
            own_grads,
            extra,
            strategy_objective,
        )

    def _finish_parameter_step(
        self, tape, step, update_grads, own_grads, extra, strategy_objective
    ):
        """Adds the heads', extra and strategy gradients to the shared
        variables' update, applies them when the step is finite, and returns
        the step."""
        strategy = self.loss_weighting
        safe_losses = ops.where(step.finite, step.losses, ops.zeros_like(step.losses))
        task_grads, task_vars = self._scaled_head_gradients(
            strategy, safe_losses, step.weights, own_grads
        )
        shared = self._task_graph.shared_variables
        grads, variables = self._add_extra_gradients(
            tape, extra, update_grads + task_grads, list(shared) + task_vars
        )
        grads, variables = self._add_strategy_gradients(
            tape, strategy_objective, grads, variables
        )
        del tape
        finite = self._apply_if(step.finite, grads, variables)
        return step._replace(finite=finite)

    def _backward_stages(self, batch_size=None):
        """The trunk as a chain of stages for the staged Gramian path (see
        `_backward_stages.py`), or None when no cut is worth making.
        `batch_size`: examples per step (None: unknown, 32 assumed)."""
        batch_size = batch_size or 32
        cache = getattr(self, "_stages_cache", None)
        if cache is None or cache[0] is not self._task_graph:
            cache = (self._task_graph, {})
            # Kept out of Keras' tracking: the layers are the model's own.
            object.__setattr__(self, "_stages_cache", cache)
        graph, found = cache
        if batch_size not in found:
            found[batch_size] = find_backward_stages(self, graph, batch_size)
        return found[batch_size]

    def _heads_and_objectives(self, heads, reps, y, sample_weights):
        """The heads' predictions from the shared representation `reps`,
        the step's losses (a `_Step` without weights) and each task's
        objective, with the strategy's own."""
        y_pred = heads(reps, training=True)
        losses, aux_losses, finite, counts, parts = self._losses_and_check(
            y, y_pred, sample_weights
        )
        task_objectives, strategy_objective = self._task_objectives(
            self.loss_weighting, losses, counts
        )
        step = _Step(y_pred, losses, aux_losses, None, finite, counts)
        return step, task_objectives, strategy_objective, parts

    def _staged_gramian_update(self, stages, x, y, sample_weights):
        """The Gramian path, stage by stage from the top of the trunk down.

        Each stage runs under its own tape. Per task, the cotangents at the
        shared representation come from the heads; one backward pass through
        a stage turns a task's cotangents at the stage's outputs into its
        gradients of the stage's variables and its cotangent at the stage's
        input. The stage's Gramian term is summed before the stage below
        starts (a control dependency; XLA drops those, but its own
        memory-aware scheduler keeps the same order: its buffer plan is flat
        in depth, `benchmarks/many_tasks.py`), so only one stage's (T, P_k)
        per-task gradients are ever held. The update is then one backward pass of
        sum_t w_t L_t over the whole model, as on the unstaged path.
        """
        strategy = self.loss_weighting
        shared = self._task_graph.shared_variables
        own = self._task_graph.task_variables
        num_reps = stages.num_representations
        with tf.GradientTape(persistent=True) as tape:
            value, runs, reps = x, [], [None] * num_reps
            for stage in stages.stages:
                with tf.GradientTape(persistent=True) as stage_tape:
                    if stage.has_cut_input:
                        stage_tape.watch(value)
                    outputs = stage.model(value, training=True)
                outputs = (
                    list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
                )
                cut_input = value if stage.has_cut_input else None
                cut_output = outputs.pop(0) if stage.has_cut_output else None
                if stage.cut_representation is not None:
                    reps[stage.cut_representation] = cut_output
                for index, output in zip(stage.representations, outputs):
                    reps[index] = output
                runs.append(
                    _StageRun(stage, stage_tape, cut_input, cut_output, outputs)
                )
                value = cut_output
            with tf.GradientTape(persistent=True) as head_tape:
                head_tape.watch(reps)
                step, task_objectives, strategy_objective, parts = (
                    self._heads_and_objectives(stages.heads, reps, y, sample_weights)
                )
                y_pred, losses, aux_losses, _, finite, counts = step
                stacked_objectives = ops.stack(task_objectives)
            extra = self._extra_objective(aux_losses)
        rep_cotangents, own_grads = [], []
        sources = [[*reps, *own[task]] for task in self.task_names]
        for grads, task in zip(
            _task_gradients(head_tape, task_objectives, parts, sources),
            self.task_names,
        ):
            rep_cotangents.append(grads[:num_reps])
            own_grads.append(
                [
                    ops.zeros_like(v) if g is None else g
                    for g, v in zip(grads[num_reps:], own[task])
                ]
            )
        del head_tape
        gramian = _staged_gramian(runs, rep_cotangents, shared)
        del runs
        self._update_compiled_metrics(finite, y, y_pred, sample_weights)
        safe_losses = ops.where(finite, losses, ops.zeros_like(losses))
        weights = self._weights_from_gramian(
            strategy, gramian, finite, safe_losses, self._strategy_kwargs(counts)
        )
        update_grads = _weighted_gradients(tape, stacked_objectives, shared, weights)
        step = step._replace(weights=weights)
        return self._finish_parameter_step(
            tape, step, update_grads, own_grads, extra, strategy_objective
        )

    def _update_from_matrix(self, strategy, blocks, finite, losses, kwargs):
        """The strategy's `(P,)` update (loss-scaled) and `(T,)` weights from
        the `(T, P)` matrix of per-task gradients of the global batch
        (`blocks`: one `(T, P_v)` block per shared variable)."""
        matrix = _sum_over_replicas(ops.concatenate(blocks, axis=1))
        scale = self._loss_scale()
        if scale is not None:
            matrix = matrix / scale
        matrix = ops.where(finite, matrix, ops.zeros_like(matrix))
        update, weights = strategy(matrix, losses, training=True, **kwargs)
        if scale is not None:
            update = update * scale
        # The optimizer sums the replicas' gradients; the update is already
        # that of the global batch on every replica.
        return update / _num_replicas(), weights

    def _weights_from_gramian(self, strategy, gramian, finite, losses, kwargs):
        """The strategy's `(T,)` weights from the (loss-scaled) Gramian of
        the global batch's per-task gradients."""
        scale = self._loss_scale()
        if scale is not None:
            gramian = gramian / ops.square(scale)
        gramian = ops.where(finite, gramian, ops.zeros_like(gramian))
        return _gramian_weights(strategy, gramian, losses, kwargs)

    def _task_objectives(self, strategy, losses, counts=None):
        """The (loss-scaled) objective of each task's gradient, and what
        trains the strategy's own variables (None when it has none).

        Called inside the tape. Per-task gradients are those of the
        strategy's `transform_losses` (the identity for most methods), told
        which tasks are present when the model has missing labels."""
        task_mask = _task_mask(counts)
        if task_mask is None:
            transformed = strategy.transform_losses(losses)
        else:
            transformed = strategy.transform_losses(losses, task_mask=task_mask)
        transformed = ops.cast(transformed, "float32")
        objectives = [
            self.optimizer.scale_loss(transformed[t]) for t in range(self.num_tasks)
        ]
        own = None
        if strategy.trainable_variables:
            own = self.optimizer.scale_loss(ops.sum(transformed))
        return objectives, own

    def _add_strategy_gradients(self, tape, objective, grads, variables):
        """Adds the strategy's trainable variables and their gradients."""
        if objective is None:
            return grads, variables
        own = list(self.loss_weighting.trainable_variables)
        own_grads = tape.gradient(objective, own)
        # Every replica computes the full gradient of the global-batch
        # losses; the optimizer sums the replicas.
        replicas = _num_replicas()
        own_grads = [
            ops.zeros_like(v) if g is None else g / replicas
            for g, v in zip(own_grads, own)
        ]
        return [*grads, *own_grads], [*variables, *own]

    def _add_extra_gradients(self, tape, extra, grads, variables):
        """Adds the gradient of the extra objective (regularisers, auxiliary
        losses) to `grads`, also for variables outside the task graph (the
        auxiliary branches)."""
        if extra is None:
            return grads, variables
        known = {id(v) for v in variables}
        known.update(id(v) for v in self.loss_weighting.trainable_variables)
        others = [v for v in self.trainable_variables if id(v) not in known]
        variables = [*variables, *others]
        grads = [*grads, *(ops.zeros_like(v) for v in others)]
        extra_grads = tape.gradient(self.optimizer.scale_loss(extra), variables)
        grads = [
            g if e is None else g + ops.cast(e, g.dtype)
            for g, e in zip(grads, extra_grads)
        ]
        return grads, variables

    def _update_logs(self, step, y_pred):
        finite = step.finite
        keep = ops.cast(finite, "float32") * _batch_size(y_pred)
        safe_losses = ops.where(finite, step.losses, ops.zeros_like(step.losses))
        weights = ops.where(
            finite, ops.cast(step.weights, "float32"), ops.zeros_like(step.weights)
        )
        self._loss_tracker_sum.update_state(ops.sum(safe_losses), sample_weight=keep)
        loss_weights = self._loss_log_weights(finite, keep, step.counts)
        for t in range(self.num_tasks):
            self._task_loss_trackers[t].update_state(
                safe_losses[t], sample_weight=loss_weights[t]
            )
            weight_keep = keep
            if step.counts is not None:
                # The mean weight of the steps in which the task was present.
                weight_keep = keep * ops.cast(step.counts[t] > 0, "float32")
            self._task_weight_trackers[t].update_state(
                weights[t], sample_weight=weight_keep
            )
        self._update_aux_trackers(step.aux_losses, keep, finite)
        return self._collect_logs(include_weights=True)

    def _loss_log_weights(self, finite, keep, counts):
        """How much each task's loss weighs in its epoch mean: the batch
        size, or with `missing_labels` the number of labelled elements of
        masked tasks (so the mean is over labelled samples)."""
        if counts is None:
            return [keep] * self.num_tasks
        masked = self._missing_labels
        labelled = ops.cast(finite, "float32") * counts / _num_replicas()
        return [
            labelled[t] if task in masked else keep
            for t, task in enumerate(self.task_names)
        ]

    def _update_aux_trackers(self, aux_losses, sample_weight, finite=True):
        if aux_losses is None:
            return
        safe = ops.where(finite, aux_losses, ops.zeros_like(aux_losses))
        for t, tracker in enumerate(self._aux_loss_trackers):
            tracker.update_state(safe[t], sample_weight=sample_weight)

    def _compiled_metric_results(self):
        """The compiled metrics' values keyed `<task>_<metric>`.

        Keras names the metrics of a single-output model without the output
        name; a one-task MultiTaskModel keeps the task prefix anyway.
        """
        results = self._compile_metrics.result()
        if self.num_tasks != 1:
            return results
        prefix = f"{self.task_names[0]}_"
        return {
            key if key.startswith(prefix) else prefix + key: value
            for key, value in results.items()
        }

    def _collect_logs(self, include_weights):
        logs = {"loss": self._loss_tracker_sum.result()}
        for tracker in self._task_loss_trackers:
            logs[tracker.name] = tracker.result()
        if include_weights:
            for tracker in self._task_weight_trackers:
                logs[tracker.name] = tracker.result()
        for tracker in self._aux_loss_trackers:
            logs[tracker.name] = tracker.result()
        if self._compile_metrics is not None:
            logs.update(self._compiled_metric_results())
        return _rank_one_across_workers(logs)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, sample_weights = self._standardize_targets(y, sample_weight)
        y_pred = self(x, training=False)
        self._check_target_shapes(y, y_pred)
        losses, counts, _ = self._task_losses(y, y_pred, sample_weights)
        batch = _batch_size(y_pred)
        self._loss_tracker_sum.update_state(ops.sum(losses), sample_weight=batch)
        loss_weights = self._loss_log_weights(True, batch, counts)
        for t in range(self.num_tasks):
            self._task_loss_trackers[t].update_state(
                losses[t], sample_weight=loss_weights[t]
            )
        self._update_aux_trackers(
            self._auxiliary_losses(y, y_pred, sample_weights), batch
        )
        y_pred = self._task_outputs(y_pred)
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(
                *self._masked_for_metrics(y, y_pred, sample_weights)
            )
        return self._collect_logs(include_weights=False)


class _StageRun(NamedTuple):
    """One stage of the staged Gramian path, as run in the forward pass."""

    stage: object  # a BackwardStage
    tape: object  # the stage's own persistent tape
    cut_input: object  # None for the first stage
    cut_output: object  # None for the last stage
    representations: list  # the other outputs, as in stage.representations


def _staged_gramian(runs, rep_cotangents, shared):
    """The Gramian of the per-task gradients of the `shared` variables, stage
    by stage from the top (see `_backward_stages.py`).

    `rep_cotangents[t][i]`: task t's objective's gradient with respect to
    shared representation tensor i (None: it does not depend on it). A stage
    below starts only once the stage above has summed its Gramian term.
    """
    gramian, cotangents = None, [None] * len(rep_cotangents)
    for run in reversed(runs):
        variables = [shared[i] for i in run.stage.variables]
        sources = variables + ([run.cut_input] if run.stage.has_cut_input else [])
        with tf.control_dependencies([] if gramian is None else [gramian]):
            rows, below = [[] for _ in variables], []
            for cotangent, task_reps in zip(cotangents, rep_cotangents):
                targets, output_gradients = _stage_targets(run, cotangent, task_reps)
                grads = (
                    run.tape.gradient(
                        targets, sources, output_gradients=output_gradients
                    )
                    if targets
                    else [None] * len(sources)
                )
                for row, grad, variable in zip(rows, grads, variables):
                    grad = ops.zeros_like(variable) if grad is None else grad
                    row.append(ops.reshape(ops.cast(grad, "float32"), (-1,)))
                below.append(grads[-1] if run.stage.has_cut_input else None)
            term = _gramian_of_blocks([ops.stack(row) for row in rows])
        gramian = term if gramian is None else gramian + term
        cotangents = below
    return gramian


def _stage_targets(run, cotangent, task_reps):
    """One task's (targets, output_gradients) for a stage's backward pass:
    its cotangent at the stage's cut (from the stage above, plus its own
    when the cut is a representation) and at the representations made in
    the stage. Tensors the task does not depend on are left out."""
    targets, output_gradients = [], []
    if run.stage.has_cut_output:
        if run.stage.cut_representation is not None:
            cotangent = _add_optional(
                cotangent, task_reps[run.stage.cut_representation]
            )
        if cotangent is not None:
            targets.append(run.cut_output)
            output_gradients.append(cotangent)
    for index, output in zip(run.stage.representations, run.representations):
        if task_reps[index] is not None:
            targets.append(output)
            output_gradients.append(task_reps[index])
    return targets, output_gradients


class _Step(NamedTuple):
    """What one training step's update computed."""

    y_pred: dict
    losses: object
    aux_losses: object
    weights: object
    finite: object
    counts: object  # None without missing_labels


def _task_mask(counts):
    """`(T,)` floats, 1.0 for tasks with a labelled sample; None if no mask."""
    if counts is None:
        return None
    return ops.cast(counts > 0, "float32")


class _CompileArguments:
    """The arguments of the last `compile` call (a plain, untracked holder)."""

    def __init__(self, **arguments):
        self.__dict__.update(arguments)


class _RepresentationSplit:
    """The model cut at its shared representation (not tracked by Keras)."""

    def __init__(self, trunk, heads):
        self.trunk = trunk
        self.heads = heads


def _num_replicas():
    replica = tf.distribute.get_replica_context()
    return 1 if replica is None else replica.num_replicas_in_sync


def _global_batch_losses(scaled_losses):
    """Task losses of the global batch, differentiable through this replica.

    Keras losses divide by the number of replicas R so that summing the
    replicas' gradients gives the global-batch gradient. Non-linear
    strategies need the loss values themselves: the value returned is the
    global-batch loss (the mean over replicas, the same on every replica),
    and its gradient is this replica's share, (1/R) dL_local, so that any
    objective f(L) differentiated on every replica and summed by the
    optimizer gives f'(L) dL of the global batch. A no-op on one device.
    """
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return scaled_losses
    global_mean = replica.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.stop_gradient(scaled_losses)
    )
    return scaled_losses + tf.stop_gradient(global_mean - scaled_losses)


def _first_local_value(distribution, value):
    """The first local replica's component of a distributed value."""
    if isinstance(value, tf.distribute.DistributedValues):
        return distribution.experimental_local_results(value)[0]
    return value


def _rank_one_across_workers(logs):
    """The step's logs as (1,) tensors under a multi-worker strategy.

    Keras 3 reduces a step's logs across the workers of a
    MultiWorkerMirroredStrategy with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on scalars (keras-team/keras#20585). The logs are the same
    on every replica (the metric variables are synchronised): as (1,)
    tensors they reduce to the same scalars. A no-op otherwise.
    """
    distribution = tf.distribute.get_strategy()
    if not (
        isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy)
        and distribution.extended._in_multi_worker_mode()
    ):
        return logs
    return {key: tf.reshape(value, (1,)) for key, value in logs.items()}


def _gramian_of_blocks(blocks):
    """sum_v G_v G_v^T over the `(T, P_v)` blocks of per-task gradients,
    each summed over the replicas first (the global batch's Gramian), so
    that the `(T, P)` matrix is never formed."""
    gramian = None
    for block in blocks:
        block = _sum_over_replicas(block)
        term = ops.matmul(block, ops.transpose(block))
        gramian = term if gramian is None else gramian + term
    return gramian


def _weighted_gradients(tape, stacked_objectives, variables, weights):
    """sum_t w_t dL_t/dv, as one backward pass of sum_t w_t L_t (the
    objectives carry the loss scale, as the other gradients do)."""
    grads = tape.gradient(
        stacked_objectives,
        variables,
        output_gradients=ops.cast(weights, stacked_objectives.dtype),
    )
    return [
        ops.zeros_like(v) if g is None else ops.cast(g, v.dtype)
        for g, v in zip(grads, variables)
    ]


def _task_gradients(tape, objectives, parts, sources):
    """`tape.gradient(objectives[t], sources[t])` for every task t.

    Objective t depends on the task losses through loss t alone (the model's
    losses and the strategies' `transform_losses` are elementwise), so its
    gradient is c_t times the gradient of task t's raw loss (`parts`, see
    `_task_losses`), c_t = d objective_t / d raw loss t. Taken from the raw
    loss, before the losses are stacked, task t's backward pass runs through
    its own head and the trunk only. Through the stacked losses it would
    also run every other head's backward pass with zero cotangents: T^2
    head passes per step instead of T.
    """
    stacked, raw = parts
    # One pass for all c_t (objective s has no gradient on raw loss t != s).
    coefficients = tape.gradient(objectives, stacked)
    if coefficients is None:
        return [[None] * len(variables) for variables in sources]
    return [
        tape.gradient(
            raw[t], variables, output_gradients=ops.cast(coefficients[t], raw[t].dtype)
        )
        for t, variables in enumerate(sources)
    ]


def _gradient_matrix(tape, task_losses, parts, variables):
    """The `(T, P)` matrix of per-task gradients of `variables`."""
    rows = []
    for grads in _task_gradients(
        tape, task_losses, parts, [variables] * len(task_losses)
    ):
        rows.append(
            ops.concatenate(
                [
                    ops.reshape(
                        ops.cast(ops.zeros_like(v) if g is None else g, "float32"),
                        (-1,),
                    )
                    for g, v in zip(grads, variables)
                ]
            )
        )
    return ops.stack(rows)


def _static_batch_size(x):
    """The batch size of a step's inputs when it is known while tracing."""
    first = keras.tree.flatten(x)[0]
    size = getattr(first, "shape", (None,))[0]
    return None if size is None else int(size)


def _add_optional(a, b):
    """a + b, where None stands for zero (and None + None is None)."""
    if a is None:
        return b
    return a if b is None else a + b


def _gramian_weights(strategy, gramian, losses, kwargs):
    """A Gramian strategy's float32 `(T,)` weights, zero for absent tasks."""
    weights = strategy.compute_weights(gramian, losses, training=True, **kwargs)
    weights = ops.cast(weights, "float32")
    if "task_mask" in kwargs:
        weights = weights * kwargs["task_mask"]
    return weights


def _check_per_task_gradients(per_task_gradients, strategy):
    """Validates `compile(per_task_gradients=...)` against the strategy."""
    if per_task_gradients not in _PER_TASK_GRADIENTS:
        raise ValueError(
            f"per_task_gradients must be one of {_PER_TASK_GRADIENTS}, got "
            f"{per_task_gradients!r}."
        )
    if per_task_gradients != "matrix":
        if strategy.requires != "gramian" or getattr(strategy, "rep_grad", False):
            names = sorted(
                name
                for name, cls in registered_strategies().items()
                if cls.requires == "gramian"
            )
            reason = (
                "rep_grad=True (gradients of the shared representation)"
                if getattr(strategy, "rep_grad", False)
                else f"requires={strategy.requires!r}"
            )
            raise ValueError(
                f"per_task_gradients={per_task_gradients!r} needs a strategy "
                "whose weights "
                "come from the Gramian of the per-task parameter gradients; "
                f"{type(strategy).__name__} has {reason}. Strategies with "
                f"requires='gramian': {names}."
            )
    return per_task_gradients


def _check_jit_compile(jit_compile, distribution):
    """Raises for `jit_compile=True` where XLA cannot compile Keras' step.

    Keras compiles `strategy.run` over all local replicas as one XLA
    cluster: with several local devices it must reach variables on other
    devices, which XLA forbids; with one CPU device per worker the step
    holds collectives, which XLA compiles only for GPUs (NCCL). `"auto"`
    is already off under any distribution strategy (Keras' resolution).
    """
    if jit_compile is not True or distribution.num_replicas_in_sync == 1:
        return
    if not isinstance(
        distribution,
        (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy),
    ):
        return
    devices = distribution.extended.worker_devices
    if len(devices) > 1:
        reason = (
            f"Keras compiles the whole step, all {len(devices)} local replicas "
            "included, as one XLA cluster on one device, and XLA cannot use "
            "variables placed on the other devices"
        )
    elif any(tf.DeviceSpec.from_string(d).device_type == "CPU" for d in devices):
        reason = "XLA does not compile collective ops on CPU devices"
    else:
        return  # one GPU per worker: NCCL collectives compile (untested)
    raise ValueError(
        f"jit_compile=True cannot work under {type(distribution).__name__} "
        f"with {distribution.num_replicas_in_sync} replicas: {reason}. Use "
        "jit_compile='auto' (Keras then turns XLA off under a distribution "
        "strategy) or False."
    )


def _check_target_dtype(task, target):
    """Refuses targets that are not numbers, naming the task."""
    dtype = getattr(target, "dtype", None)
    if dtype is None:
        return
    kind = getattr(dtype, "kind", None)  # numpy
    if kind in ("U", "S", "O") or dtype == tf.string:
        raise ValueError(
            f"Task {task!r}: targets must be numbers (integer labels or "
            f"floats), got dtype {dtype}. Encode the labels first, for "
            "example with keras.layers.StringLookup."
        )


def _is_sparse_loss(fn):
    if isinstance(fn, keras.losses.SparseCategoricalCrossentropy):
        return True
    inner = getattr(fn, "fn", None)
    return getattr(inner, "__name__", "") == "sparse_categorical_crossentropy"


def _scope_name(name, default="task"):
    """`name` made a valid TensorFlow name scope ("<lambda>" is not one)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("_.-") or default


def _with_rank(tensor, rank):
    """`tensor` with trailing axes of size 1 added up to `rank`."""
    while len(tensor.shape) < rank:
        tensor = ops.expand_dims(tensor, -1)
    return tensor


def _same_batch_size(task, target, pred):
    """`target`, checked at run time to have the predictions' batch size
    when the shapes leave it open (a loss would silently broadcast a
    1-row target). Under XLA the check is compiled out."""
    known = [tf.TensorShape(t.shape)[:1].is_fully_defined() for t in (target, pred)]
    if all(known):
        return target
    check = tf.debugging.assert_equal(
        tf.shape(target)[0],
        tf.shape(pred)[0],
        message=f"Task {task!r}: the targets' batch size differs from the inputs'",
    )
    with tf.control_dependencies([check]):
        return tf.identity(target)


def _check_not_empty(x):
    """Refuses a batch known at trace time to hold no sample."""
    shape = tuple(getattr(tf.nest.flatten(x)[0], "shape", ()))
    if shape and shape[0] == 0:
        raise ValueError(
            "MultiTaskModel got an empty batch (0 samples): there is nothing "
            "to train on. Remove empty batches from the data."
        )


def _set_keras_mask(tensor, mask):
    """Attaches a Keras mask, which Keras metrics apply to their values."""
    try:
        from keras.src.backend.common.masking import set_keras_mask
    except ImportError:  # Keras < 3.6 kept the mask in an attribute.
        tensor._keras_mask = mask
    else:
        set_keras_mask(tensor, mask)


def _masked_global_losses(sums, divisors, counts):
    """Task losses averaged over the labelled samples of the global batch.

    `sums`, `divisors` and `counts` are this replica's `(T,)` weighted loss
    sums, divisors and labelled counts. The value is the global-batch loss
    sum_r S_r / sum_r D_r (0 for a task without labels); its gradient is
    this replica's share dS / sum_r D_r, which the replicas' summed
    gradients turn into the global one. Returns `(losses, counts)`, the
    latter the global number of labelled elements of each task.
    """
    divisors = _sum_over_replicas(ops.stop_gradient(divisors))
    counts = _sum_over_replicas(ops.stop_gradient(counts))
    local = ops.divide_no_nan(sums, divisors)
    total = _sum_over_replicas(ops.stop_gradient(local))
    losses = local + ops.stop_gradient(total - local)
    return losses, counts


def _aligned_target(target, pred):
    """Labels (B,) for a one-unit head (B, 1) get the head's rank."""
    if len(target.shape) == len(pred.shape) - 1 and pred.shape[-1] == 1:
        target = ops.expand_dims(target, -1)
    return target, pred


def _sum_over_replicas(value):
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return value
    return replica.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _on_all_replicas(flag):
    """True where `flag` holds on every replica (a no-op on one device)."""
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return flag
    bad = replica.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(flag), tf.float32)
    )
    return bad < 0.5


def _aux_key(task):
    """The output key of a task's auxiliary prediction."""
    return f"{task}_aux"


def _batch_size(y_pred):
    """The batch size as a float scalar: loss means weigh batches by it."""
    first = next(iter(y_pred.values()))
    return ops.cast(ops.shape(first)[0], "float32")


class _FunctionLoss(keras.losses.Loss):
    """A loss function wrapped as a `keras.losses.Loss`, so that the batch
    reduction and sample weights follow Keras' rules."""

    def __init__(self, fn):
        # The name becomes a name scope: lambdas and private functions
        # ("<lambda>", "_mse") are not valid ones.
        super().__init__(name=_scope_name(getattr(fn, "__name__", ""), "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _shapes_compatible(target_shape, pred_shape):
    """Whether a target of `target_shape` can be scored against `pred_shape`.

    Accepted: equal shapes (dense targets), or integer labels without the
    last (class) axis, or with a last axis of size 1. Unknown dimensions
    (None) match anything.
    """

    def same(a, b):
        return len(a) == len(b) and all(
            i is None or j is None or i == j for i, j in zip(a, b)
        )

    if same(target_shape, pred_shape):
        return True
    if not pred_shape:
        return False
    if same(target_shape, pred_shape[:-1]):
        return True
    return same(target_shape, pred_shape[:-1] + (1,))
