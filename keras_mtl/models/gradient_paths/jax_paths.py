"""The gradient paths on JAX: `jax.vjp` of the step's forward pass.

Keras' JAX trainer runs the model's step as a pure function of the state
values; `MultiTaskModel` runs its orchestration inside a
`keras.StatelessScope` over them (`_stateless_step.py`), so that every
variable read and assignment of the step is a value. A path here takes its
gradients by running the forward pass (and whatever must be differentiated
with it) as a function of the trainable variables' values under a nested
scope, `differentiate`, and pulling cotangents back with `jax.vjp`:

- `JaxLossGradientPath`: one pullback of the strategy's objective (with the
  per-task gradients of GradNorm-like strategies taken by a nested vjp, so
  that the objective may be differentiated through them).
- `JaxMatrixGradientPath` / `JaxGramianGradientPath`: one forward pass, and
  the K cotangents (the T task objectives, then the extra objective and the
  strategy's own, where there are any) pulled back together, by `jax.vmap`
  of the pullback (`batched_pullback="vmap"`) or one pullback per row
  (`"loop"`), by platform (`BATCHED_PULLBACK`).
- `JaxRepresentationGradientPath`: `rep_grad=True`: a vjp of the trunk,
  then one of the heads in the representations and the variables; the
  strategy's update of the representations is pulled back through the
  trunk.
- `JaxLookaheadGradientPath`: the look-ahead's gradients by
  `jax.value_and_grad` under the nested scope, then the loss path.
- `JaxMultiBatchGradientPath`: the same on k sub-batches of the batch (k
  forward passes, the k T task objectives pulled back together).

What a path assigns inside the differentiated function (BatchNorm
statistics, metrics, strategy state) comes out of the vjp as auxiliary
values and is assigned again in the step's scope, so nothing is lost.
"""

from __future__ import annotations

import jax
import keras
from keras import ops

from keras_mtl.models.gradient_paths import _tape_ops as tape_ops
from keras_mtl.models.gradient_paths.gramian_path import GramianGradientPath
from keras_mtl.models.gradient_paths.lookahead_path import LookaheadGradientPath
from keras_mtl.models.gradient_paths.loss_path import (
    LossGradientPath,
    _shared_gradient_variables,
)
from keras_mtl.models.gradient_paths.matrix_path import MatrixGradientPath
from keras_mtl.models.gradient_paths.multi_batch_path import MultiBatchGradientPath
from keras_mtl.models.gradient_paths.parameter_path import ParameterGradientPath
from keras_mtl.models.gradient_paths.representation_path import (
    RepresentationGradientPath,
)

#: How the K cotangents of a per-task path are pulled back, by platform:
#: "vmap" (one batched backward pass) or "loop" (K backward passes). See
#: `benchmarks/backend_step_time.py --pullbacks=vmap,loop`.
BATCHED_PULLBACK = {"cpu": "loop", "default": "vmap"}
#: Set (to "vmap" or "loop") to override `BATCHED_PULLBACK` in steps traced
#: from then on (benchmarks).
PULLBACK_OVERRIDE = None


def step_variables(model):
    """Every variable the step's scope maps: the model's (the strategy's
    included), the optimizer's and the metrics'."""
    seen, found = set(), []
    optimizer = [] if model.optimizer is None else model.optimizer.variables
    for variable in [*model.variables, *optimizer, *model.metrics_variables]:
        if id(variable) not in seen:
            seen.add(id(variable))
            found.append(variable)
    return found


def differentiate(model, fn, variables, inputs=None):
    """`jax.vjp` of `fn` with respect to the values of `variables` (and to
    the arrays `inputs`, when given).

    `fn()` (`fn(inputs)` with `inputs`) returns `(outputs, aux)`: `outputs`
    an array (or list of arrays) to differentiate, `aux` anything else (a
    pytree of arrays). It runs under a nested `StatelessScope` in which
    `variables` hold the differentiated values and every other variable
    its current value; what it assigns to the other variables is assigned
    again after the vjp.

    Returns:
        `(outputs, pullback, aux)`, `pullback(cotangent)` being the list of
        gradients, one per variable (then one per input, with `inputs`).
    """
    watched = {id(v) for v in variables}
    others = [v for v in step_variables(model) if id(v) not in watched]
    other_values = [v.value for v in others]

    def pure(values, arrays):
        mapping = [*zip(variables, values), *zip(others, other_values)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            before = [scope.get_current_value(v) for v in others]
            outputs, aux = fn() if inputs is None else fn(arrays)
        changed = {}
        for i, variable in enumerate(others):
            value = scope.get_current_value(variable)
            if value is not before[i]:
                changed[i] = value
        return outputs, (aux, changed)

    outputs, pullback, (aux, changed) = jax.vjp(
        pure, [v.value for v in variables], list(inputs or []), has_aux=True
    )
    for i, value in changed.items():
        others[i].assign(value)
    if inputs is None:
        return outputs, (lambda cotangent: pullback(cotangent)[0]), aux

    def pullback_with_inputs(cotangent):
        grads, input_grads = pullback(cotangent)
        return [*grads, *input_grads]

    return outputs, pullback_with_inputs, aux


def pull_rows(pullback, outputs, how=None):
    """The pullbacks of the K rows of the identity through `pullback`, for
    K = len(outputs): one list entry per variable, each `(K, *shape)`."""
    num = outputs.shape[0]
    eye = ops.eye(num, dtype=outputs.dtype)
    how = how or PULLBACK_OVERRIDE
    if how is None:
        platform = jax.devices()[0].platform
        how = BATCHED_PULLBACK.get(platform, BATCHED_PULLBACK["default"])
    if how == "vmap":
        return jax.vmap(pullback)(eye)
    rows = [pullback(eye[k]) for k in range(num)]
    return [ops.stack([row[i] for row in rows]) for i in range(len(rows[0]))]


class JaxLossGradientPath(LossGradientPath):
    """`LossGradientPath` on JAX: the gradient of the strategy's objective
    with respect to every trainable variable, the strategy's own included."""

    def __call__(self, x, y, sample_weights):
        model, strategy = self.model, self.strategy
        variables = model.trainable_variables
        grad_variables = _shared_gradient_variables(model)

        def objective():
            if grad_variables:
                step, matrix = self._forward_with_gradients(
                    x, y, sample_weights, grad_variables
                )
            else:
                step, matrix = self.forward(x, y, sample_weights), None
            safe_losses, kwargs = self.strategy_inputs(step, y, sample_weights)
            if matrix is not None:
                if not strategy.differentiable_gradients:
                    matrix = ops.stop_gradient(matrix)
                kwargs["shared_grads"] = ops.where(
                    step.finite, matrix, ops.zeros_like(matrix)
                )
            total, weights = self.objective(step, safe_losses, kwargs)
            return model.optimizer.scale_loss(total), (step, weights)

        _, pullback, (step, weights) = differentiate(model, objective, variables)
        grads = pullback(ops.ones((), dtype="float32"))
        return step.result(weights, grads, variables)

    def _forward_with_gradients(self, x, y, sample_weights, grad_variables):
        """The forward pass and the `(T, P')` per-task gradients of
        `grad_variables`, differentiable (a nested vjp)."""

        def losses():
            step = self.forward(x, y, sample_weights)
            return step.losses, step

        task_losses, pullback, step = differentiate(self.model, losses, grad_variables)
        rows = pull_rows(pullback, task_losses, how="vmap")
        num = task_losses.shape[0]
        matrix = ops.concatenate(
            [ops.reshape(ops.cast(r, "float32"), (num, -1)) for r in rows], axis=1
        )
        return step, matrix


class JaxLookaheadGradientPath(LookaheadGradientPath, JaxLossGradientPath):
    """`LookaheadGradientPath` on JAX, then `JaxLossGradientPath`."""

    def value_and_gradients(self, fn, values):
        return jax.value_and_grad(fn)(list(values))

    def other_variables(self, variables):
        # A nested scope reads an unmapped variable's stored value, not the
        # step's: map every other variable of the step to its current value.
        mapped = {id(v) for v in variables}
        return [v for v in step_variables(self.model) if id(v) not in mapped]


class _JaxParameterPath(ParameterGradientPath):
    """The per-task paths on JAX: one forward pass, K pullbacks."""

    def __call__(self, x, y, sample_weights):
        model = self.model
        graph = model._task_graph
        shared, own = graph.shared_variables, graph.task_variables
        variables = model.trainable_variables
        index = {id(v): i for i, v in enumerate(variables)}
        num_tasks = model.num_tasks
        rows_of = {}

        def objectives():
            step = self.forward(x, y, sample_weights)
            task_objectives, strategy_objective = self.task_objectives(step)
            extra = self.extra_objective(step.aux_losses)
            outputs = self._stack_objectives(
                task_objectives, extra, strategy_objective, rows_of
            )
            return outputs, step

        outputs, pullback, step = differentiate(model, objectives, variables)
        rows = pull_rows(pullback, outputs)
        grad_rows = {id(v): rows[index[id(v)]] for v in variables}
        blocks = [
            ops.reshape(
                ops.cast(grad_rows[id(v)][:num_tasks], "float32"), (num_tasks, -1)
            )
            for v in shared
        ]
        own_grads = [
            [grad_rows[id(v)][t] for v in own[task]]
            for t, task in enumerate(model.task_names)
        ]
        safe_losses, kwargs = self.strategy_inputs(step, y, sample_weights)
        update_grads, weights = self.combine(
            grad_rows, blocks, outputs[:num_tasks], step.finite, safe_losses, kwargs
        )
        return self._finish(step, weights, update_grads, own_grads, grad_rows, rows_of)

    def _stack_objectives(self, task_objectives, extra, strategy_objective, rows_of):
        """The objectives to pull back, stacked in float32: the task
        objectives, then the extra objective (loss-scaled) and the
        strategy's own where there are any; `rows_of` records their rows."""
        outputs = [ops.cast(o, "float32") for o in task_objectives]
        if extra is not None:
            rows_of["extra"] = len(outputs)
            outputs.append(ops.cast(self.model.optimizer.scale_loss(extra), "float32"))
        if strategy_objective is not None:
            rows_of["strategy"] = len(outputs)
            outputs.append(ops.cast(strategy_objective, "float32"))
        return ops.stack(outputs)

    def _finish(self, step, weights, update_grads, own_grads, grad_rows, rows_of):
        """As `ParameterGradientPath.finish`, from the pulled-back rows."""
        model, strategy = self.model, self.strategy
        graph = model._task_graph
        safe_losses = ops.where(step.finite, step.losses, ops.zeros_like(step.losses))
        head_scales = strategy.head_gradient_scales(safe_losses, weights)
        grads, variables = list(update_grads), list(graph.shared_variables)
        for t, task in enumerate(model.task_names):
            for grad, variable in zip(own_grads[t], graph.task_variables[task]):
                grads.append(grad * ops.cast(head_scales[t], grad.dtype))
                variables.append(variable)
        if "extra" in rows_of:
            known = {id(v) for v in variables}
            known.update(id(v) for v in strategy.trainable_variables)
            others = [v for v in model.trainable_variables if id(v) not in known]
            grads += [ops.zeros(v.shape, v.dtype) for v in others]
            variables += others
            row = rows_of["extra"]
            grads = [
                g + ops.cast(grad_rows[id(v)][row], g.dtype)
                for g, v in zip(grads, variables)
            ]
        if "strategy" in rows_of:
            row = rows_of["strategy"]
            own = list(strategy.trainable_variables)
            grads += [grad_rows[id(v)][row] for v in own]
            variables += own
        return step.result(weights, grads, variables)


class JaxMatrixGradientPath(_JaxParameterPath, MatrixGradientPath):
    """`MatrixGradientPath` on JAX."""


class JaxGramianGradientPath(_JaxParameterPath, GramianGradientPath):
    """`GramianGradientPath` on JAX (also for `per_task_gradients="gramian"`
    on a trunk with cuts: the staged path is TensorFlow's). The update
    sum_t w_t g_t is taken from the pulled-back rows, variable by
    variable, so the `(T, P)` matrix is never formed."""

    def combine(self, grad_rows, blocks, objectives, finite, losses, kwargs):
        gramian = None
        for block in blocks:
            term = ops.matmul(block, ops.transpose(block))
            gramian = term if gramian is None else gramian + term
        weights = self.weights_from_gramian(gramian, finite, losses, kwargs)
        num = weights.shape[0]
        grads = []
        for variable in self.model._task_graph.shared_variables:
            rows = grad_rows[id(variable)][:num]
            combined = ops.tensordot(ops.cast(weights, rows.dtype), rows, axes=1)
            grads.append(ops.cast(combined, variable.dtype))
        return grads, weights

    def stages(self, batch_size=None):
        return None


class JaxMultiBatchGradientPath(_JaxParameterPath, MultiBatchGradientPath):
    """`MultiBatchGradientPath` on JAX: the k T task objectives of the k
    sub-batches (then the extra objective and the strategy's own) pulled
    back together."""

    def __call__(self, x, y, sample_weights):
        model = self.model
        graph = model._task_graph
        shared, own = graph.shared_variables, graph.task_variables
        variables = model.trainable_variables
        index = {id(v): i for i, v in enumerate(variables)}
        count, num_tasks = self.count, model.num_tasks
        rows_of = {}

        def objectives():
            step, parts = self.forward_in_parts(x, y, sample_weights)
            outputs, strategy_objective = [], None
            for part in parts:
                task_objectives, own_objective = self.task_objectives(part)
                outputs += task_objectives
                strategy_objective = tape_ops.add_optional(
                    strategy_objective, own_objective
                )
            extra = self.extra_objective(step.aux_losses)
            outputs = self._stack_objectives(
                outputs, extra, strategy_objective, rows_of
            )
            return outputs, (step, self.part_losses(step, parts))

        outputs, pullback, (step, part_losses) = differentiate(
            model, objectives, variables
        )
        rows = pull_rows(pullback, outputs)
        grad_rows = {id(v): rows[index[id(v)]] for v in variables}
        size = count * num_tasks

        def per_batch(variable):
            """Rows of the k T task objectives as `(k, T, *shape)`."""
            block = grad_rows[id(variable)][:size]
            return ops.reshape(block, (count, num_tasks, *variable.shape))

        blocks = [
            ops.reshape(ops.cast(per_batch(v), "float32"), (count, num_tasks, -1))
            for v in shared
        ]
        own_grads = [
            [ops.sum(per_batch(v)[:, t] / float(count), axis=0) for v in own[task]]
            for t, task in enumerate(model.task_names)
        ]
        _, kwargs = self.strategy_inputs(step, y, sample_weights)
        update_grads, weights = self.combine(
            grad_rows, blocks, None, step.finite, part_losses, kwargs
        )
        return self._finish(step, weights, update_grads, own_grads, grad_rows, rows_of)


class JaxRepresentationGradientPath(_JaxParameterPath, RepresentationGradientPath):
    """`RepresentationGradientPath` on JAX: the trunk's vjp, the heads' vjp
    in the representations and the variables (the K rows of the identity:
    T task objectives, then the extra objective and the strategy's own),
    and the strategy's update of the representations pulled back through
    the trunk."""

    def __call__(self, x, y, sample_weights):
        model = self.model
        graph = model._task_graph
        variables = model.trainable_variables
        index = {id(v): i for i, v in enumerate(variables)}
        num_tasks = model.num_tasks
        rows_of = {}

        def trunk():
            reps = self.trunk(x, training=True)
            return (list(reps) if isinstance(reps, (list, tuple)) else [reps]), None

        reps, trunk_pullback, _ = differentiate(model, trunk, variables)

        def heads(rep_values):
            step = self.losses(
                y, self.heads(list(rep_values), training=True), sample_weights
            )
            task_objectives, strategy_objective = self.task_objectives(step)
            extra = self.extra_objective(step.aux_losses)
            outputs = self._stack_objectives(
                task_objectives, extra, strategy_objective, rows_of
            )
            return outputs, step

        outputs, pullback, step = differentiate(model, heads, variables, inputs=reps)
        rows = pull_rows(pullback, outputs)
        var_rows, rep_rows = rows[: len(variables)], rows[len(variables) :]
        task_rows = [ops.cast(r[:num_tasks], "float32") for r in rep_rows]
        update, weights = self.update_from_rows(
            ops.concatenate([ops.reshape(r, (num_tasks, -1)) for r in task_rows], 1),
            ops.concatenate(
                [ops.reshape(ops.sum(r, axis=1), (num_tasks, -1)) for r in task_rows], 1
            ),
            step,
            y,
            sample_weights,
        )
        through_trunk = trunk_pullback(self.cotangents(update, reps))
        update_grads = [through_trunk[index[id(v)]] for v in graph.shared_variables]
        own_grads = [
            [var_rows[index[id(v)]][t] for v in graph.task_variables[task]]
            for t, task in enumerate(model.task_names)
        ]
        grad_rows = {id(v): var_rows[index[id(v)]] for v in variables}
        if "extra" in rows_of:
            # The extra objective also reaches the trunk through the
            # representations: add that part to its row.
            row = rows_of["extra"]
            extra_trunk = trunk_pullback([r[row] for r in rep_rows])
            for v in variables:
                grad_rows[id(v)] = (
                    grad_rows[id(v)].at[row].add(extra_trunk[index[id(v)]])
                )
        return self._finish(step, weights, update_grads, own_grads, grad_rows, rows_of)
