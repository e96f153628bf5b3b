"""`MultiTaskModel`: a functional Keras model with one output per task.

The class, its constructors, `compile` and the training and test steps as
orchestration. What the step does is in the modules beside this one, in
the order it runs (BUILD.md, "Reading order"): `_targets.py` (targets and
absent labels), `_step_guard.py` (a non-finite step changes nothing),
`gradient_paths/` (forward pass, losses, strategy and gradients; chosen at
compile time), `_task_losses.py`, `_step_logs.py`, and `_compile_options.py`
for what `compile` resolves.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from keras_mtl.models import _compile_options as options
from keras_mtl.models import _distribution as distribution
from keras_mtl.models import _stateless_step as stateless_step
from keras_mtl.models import _targets as targets
from keras_mtl.models._model_outputs import arrange_outputs, heads_on_trunk
from keras_mtl.models._step_guard import StepGuard
from keras_mtl.models._step_logs import StepLogs
from keras_mtl.models._task_losses import aux_key, losses_after_update
from keras_mtl.models.gradient_paths import (
    StagedGramianGradientPath,
)
from keras_mtl.models.gradient_paths.base import task_mask
from keras_mtl.models.task_graph import analyze_task_graph
from keras_mtl.models.training_hooks import TrainingHooks
from keras_mtl.utils.backend import check_supported_backend
from keras_mtl.utils.serialization import register_serializable


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
        aux_weight = float(kwargs.pop("aux_weight", 1.0))
        outputs, auxiliary_outputs = arrange_outputs(
            outputs,
            task_order,
            kwargs.pop("auxiliary_outputs", None),
            kwargs.pop("auxiliary_tasks", None),
            aux_weight,
        )
        all_outputs = dict(outputs)
        all_outputs.update({aux_key(t): v for t, v in auxiliary_outputs.items()})
        super().__init__(inputs, all_outputs, name=name, **kwargs)
        self.task_names = tuple(outputs)
        self.auxiliary_tasks = tuple(auxiliary_outputs)
        self.aux_weight = aux_weight
        self._task_graph = analyze_task_graph(
            {task: self._outputs_struct[task] for task in self.task_names},
            self.trainable_variables,
        )
        self.loss_weighting = None
        self._guard = StepGuard()
        # Plain holders, kept out of Keras' tracking; the trackers are also
        # attributes, so that Keras resets and saves them as before.
        object.__setattr__(self, "_options", None)
        object.__setattr__(self, "_gradient_path", None)
        logs = StepLogs(self.task_names, self.auxiliary_tasks)
        object.__setattr__(self, "_step_logs", logs)
        self._loss_tracker_sum = logs.loss_sum
        self._task_loss_trackers = logs.task_losses
        self._task_weight_trackers = logs.task_weights
        self._aux_loss_trackers = logs.aux_losses

    # --- Construction helpers ---

    @classmethod
    def from_trunk(cls, trunk, heads, inputs=None, name=None, trunk_output=None):
        """Builds a model from a shared trunk and a dict of task heads.

        Args:
            trunk: a layer or model mapping the inputs to the shared
                features (a `keras.applications` or keras-hub backbone).
            heads: dict `{task_name: layer}`; each head maps the trunk's
                output to that task's prediction.
            inputs: the `keras.Input` tensor(s). Defaults to `trunk.input`
                (a dict for keras-hub backbones) for a functional trunk.
            name: the model's name.
            trunk_output: for a trunk returning a dict (keras-hub
                backbones), the key the heads read, e.g. "sequence_output".

        Returns:
            A `MultiTaskModel`.
        """
        inputs, outputs = heads_on_trunk(trunk, heads, inputs, trunk_output)
        return cls(inputs, outputs, name=name)

    # --- Task structure ---

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
        self._task_graph = self._task_graph.with_roles(self, shared, tasks)
        self.train_function = None

    # --- Compilation ---

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
                stops with an error naming the task and the step, at the end
                of the group of `steps_per_execution` steps that held it (no
                later step of the group is applied either). `"skip"`:
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
                the value the target of an unlabelled sample holds (a target
                counts as missing when any of its entries equals it; for
                integer labels of dense outputs, per position);
                `"sample_weight"` (the task's sample weights are the mask:
                weight 0 means unlabelled); or, per task, `{"value": v,
                "per_element": True}`: each element of the target equal to v
                is unlabelled on its own and the sample's other elements keep
                their labels (vector regression, multi-label binary targets;
                class labels and losses over the whole vector, such as
                categorical cross-entropy, are refused naming the task).
                Per element is opt-in: whether a target is a vector of values
                or one label cannot be told from its shape. One value for
                every task, or a dict `{task: value}` (tasks it does not name
                are always labelled). A task's loss and metrics then average
                over its labelled samples (per element: its labelled
                elements); a step in which a task has no labelled sample
                gives it loss 0, weight 0, no gradient, and leaves the
                strategy's state for it untouched (gradient methods drop its
                row). Only strategies with `supports_missing_tasks` accept it.
            per_task_gradients: how a gradient method's per-task gradients
                of the shared variables are combined. `"matrix"` (default):
                the model forms the `(T, P)` matrix G of per-task gradients
                and the strategy returns the update from it. `"gramian"`:
                for strategies that need only the Gramian (`requires ==
                "gramian"`: MGDA, PCGrad, Nash-MTL, IMTL-G, UPGrad, ...; not
                `rep_grad`). The model never forms G: it sums G G^T variable
                by variable, stage by stage down the trunk where the trunk
                can be cut, and takes the update sum_t w_t g_t as the
                gradient of sum_t w_t L_t, one more backward pass. Memory
                then grows with T times the largest stage, not with T * P
                (`StagedGramianGradientPath`, `benchmarks/many_tasks.py`).
                The update is the same up to floating-point rounding.
            run_eagerly, steps_per_execution, jit_compile, auto_scale_loss:
                as for `keras.Model.compile`. `jit_compile=True` compiles
                the whole step, strategy included, with XLA.
        """
        check_supported_backend()
        resolved = options.resolve_compile(
            self,
            loss_weighting,
            loss_weights,
            dict(
                loss=loss,
                metrics=metrics,
                weighted_metrics=weighted_metrics,
                on_nonfinite=on_nonfinite,
                task_sampling=task_sampling,
                missing_labels=missing_labels,
                per_task_gradients=per_task_gradients,
                run_eagerly=run_eagerly,
                steps_per_execution=steps_per_execution,
                jit_compile=jit_compile,
            ),
        )
        distribution.check_jit_compile(
            jit_compile, getattr(self, "distribute_strategy", None)
        )
        super().compile(
            optimizer=optimizer,
            loss=None,
            metrics=resolved.options.arguments["metrics"],
            weighted_metrics=resolved.options.arguments["weighted_metrics"],
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        previous = self.loss_weighting
        if previous is not None and previous is not resolved.strategy:
            # Forget the old strategy's variables: they must not be trained,
            # saved or restored with the model any more.
            self._tracker.untrack(previous)
        self.loss_weighting = resolved.strategy
        if task_sampling is not None:
            self._add_task_sampler()
        object.__setattr__(self, "_options", resolved.options)
        object.__setattr__(self, "_gradient_path", resolved.path)
        if self.optimizer is not None and not self.optimizer.built:
            # Built here, not in the first traced step: building inside the
            # trace creates variables and makes Keras trace the step twice.
            self.optimizer.build(self.trainable_variables)

    def _add_task_sampler(self):
        if getattr(self, "_task_sampler", None) is None:
            self._task_sampler = keras.random.SeedGenerator(0, name="task_sampler")
            # Saved with the model, so that a resumed run draws the same tasks.
            self._track_variable(self._task_sampler.state)
            self._seed_generators.remove(self._task_sampler)

    def get_compile_config(self):
        if not self.compiled or self.loss_weighting is None:
            return {}
        return options.compile_config(
            self.optimizer, self.loss_weighting, self._options
        )

    def compile_from_config(self, config):
        self.compile(**options.compile_arguments(config))

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

    @property
    def _per_task_gradients(self):
        return self._options.per_task_gradients

    # --- Training ---

    def fit(self, *args, callbacks=None, **kwargs):
        self._require_compiled()
        targets.check_target_dtypes(args[1] if len(args) > 1 else kwargs.get("y"))
        self._gradient_path.check_fit(
            args[2] if len(args) > 2 else kwargs.get("batch_size")
        )
        hooks = TrainingHooks(self, self._guard, self._options.on_nonfinite)
        return super().fit(*args, callbacks=[hooks, *list(callbacks or [])], **kwargs)

    def evaluate(self, *args, **kwargs):
        self._require_compiled()
        return super().evaluate(*args, **kwargs)

    def _require_compiled(self):
        if self._options is None:
            raise RuntimeError(
                "Call MultiTaskModel.compile(optimizer, loss=...) before "
                "fit() or evaluate()."
            )

    def train_step(self, *args):
        if keras.backend.backend() == "jax":
            return stateless_step.train(self, *args)
        (data,) = args
        # Under XLA the step takes the batch as its arguments, so it cannot
        # start early; there the dependency would also stop TensorFlow from
        # lifting the metrics' variable creation out of the first trace.
        if self.jit_compile:
            return self._train_step(data)
        return distribution.after_batch(data, self._train_step)

    def _train_step(self, data):
        """One training step: standardise the batch, run the gradient path,
        commit or skip the step, let the strategy see the result, log."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, sample_weights = targets.standardize_targets(
            self.task_names, y, sample_weight
        )
        targets.check_not_empty(x)
        strategy, guard = self.loss_weighting, self._guard
        masked = self._options.task_losses.missing_labels is not None
        snapshot = guard.begin(self, strategy, masked)
        step = self._gradient_path(x, y, sample_weights)
        applied = guard.apply(self.optimizer, step.finite, step.grads, step.variables)
        step = step._replace(finite=applied)
        mask = task_mask(step.counts)
        if strategy.uses_post_step_losses:
            after = losses_after_update(self, x, y, sample_weights)
            if mask is None:
                strategy.update_after_step(step.losses, after)
            else:
                strategy.update_after_step(step.losses, after, task_mask=mask)
        guard.end(strategy, snapshot, step.finite, mask)
        self._step_logs.update_train(step, self._options.task_losses)
        return self._step_logs.collect(self._compile_metrics, include_weights=True)

    def test_step(self, *args):
        if keras.backend.backend() == "jax":
            return stateless_step.test(self, *args)
        return self._test_step(*args)

    def _test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, sample_weights = targets.standardize_targets(
            self.task_names, y, sample_weight
        )
        y_pred = self(x, training=False)
        task_losses = self._options.task_losses
        task_losses.check_targets(y, y_pred)
        values = task_losses(y, y_pred, sample_weights)
        batch = targets.batch_size(y_pred)
        self._step_logs.update_test(
            values.losses,
            task_losses.log_weights(True, batch, values.counts),
            task_losses.auxiliary(y, y_pred, sample_weights),
            batch,
        )
        if self._compile_metrics is not None:
            self._update_compiled_metrics(None, y, y_pred, sample_weights)
        return self._step_logs.collect(self._compile_metrics, include_weights=False)

    # --- Metrics and logs ---

    @property
    def metrics(self):
        metrics = list(self._step_logs.trackers)
        if self._compile_metrics is not None:
            metrics.append(self._compile_metrics)
        if keras.backend.backend() == "jax":
            metrics.append(self._guard.record)
        return metrics

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Keras builds the compiled metrics through this method: give them
        # the task outputs only, as the training and test steps do.
        if isinstance(y_pred, Mapping):
            y_pred = self._task_outputs(y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def _update_compiled_metrics(self, finite, y, y_pred, sample_weights):
        """Updates the compiled metrics with the labelled samples (none of a
        step that is not finite; `finite` None: every sample counts)."""
        self._step_logs.update_metrics(
            self._compile_metrics,
            self._options.task_losses.missing_labels,
            y,
            self._task_outputs(y_pred),
            sample_weights,
            finite,
        )

    def _kpis(self):
        """The per-task metric values a strategy asks for (`kpi_metric`)."""
        return self._step_logs.kpis(
            self._compile_metrics, self.loss_weighting.kpi_metric, self.loss_weighting
        )

    def _task_outputs(self, y_pred):
        """The predictions of the tasks (without auxiliary outputs)."""
        return {task: y_pred[task] for task in self.task_names}

    @property
    def _checked_loss_names(self):
        """Names of the losses the non-finite guard watches, in its order."""
        return (*self.task_names, *(aux_key(t) for t in self.auxiliary_tasks))

    # --- Backend plumbing ---

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' own fails under MultiWorkerMirroredStrategy (keras#20585).
        if self._distribute_strategy is not None:
            distribution.symbolic_build(self, iterator, data_batch)

    def _backward_stages(self, batch_size=None):
        """The trunk's stages for the staged Gramian path (None: no cut is
        worth making); see `StagedGramianGradientPath.stages`."""
        path = self._gradient_path
        if not isinstance(path, StagedGramianGradientPath):
            path = StagedGramianGradientPath(self)
            object.__setattr__(self, "_gradient_path_for_stages", path)
        return path.stages(batch_size)
