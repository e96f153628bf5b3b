"""The Gramian path stage by stage down the trunk (TensorFlow)."""

from __future__ import annotations

from typing import NamedTuple

from keras import ops

from keras_mtl.models import _targets as targets
from keras_mtl.models._backward_stages import find_backward_stages
from keras_mtl.models.gradient_paths import _tape_ops as tape_ops
from keras_mtl.models.gradient_paths.gramian_path import GramianGradientPath


class StagedGramianGradientPath(GramianGradientPath):
    """`compile(per_task_gradients="gramian")`: the per-task backward passes
    run stage by stage through the trunk's cuts (`_backward_stages.py`),
    for all tasks in step, so that only one stage's `(T, P_k)` per-task
    gradients are ever held. Where no cut is worth making (the stages
    depend on the batch size, known when the step is traced), the step is
    that of the unstaged `GramianGradientPath`.

    Each stage runs under its own tape. Per task, the cotangents at the
    shared representation come from the heads; one backward pass through a
    stage turns a task's cotangents at the stage's outputs into its
    gradients of the stage's variables and its cotangent at the stage's
    input. The stage's Gramian term is summed before the stage below
    starts (a control dependency; XLA drops those, but its own
    memory-aware scheduler keeps the same order: its buffer plan is flat in
    depth, `benchmarks/many_tasks.py`). The update is then one backward
    pass of sum_t w_t L_t over the whole model, as on the unstaged path.
    """

    def __init__(self, model):
        super().__init__(model)
        self._cache = (None, {})

    def stages(self, batch_size=None):
        """The trunk as a chain of stages, or None when no cut is worth
        making. `batch_size`: examples per step (None: unknown, 32
        assumed)."""
        batch_size = batch_size or 32
        graph = self.model._task_graph
        if self._cache[0] is not graph:
            self._cache = (graph, {})
        found = self._cache[1]
        if batch_size not in found:
            found[batch_size] = find_backward_stages(self.model, graph, batch_size)
        return found[batch_size]

    def __call__(self, x, y, sample_weights):
        import tensorflow as tf

        stages = self.stages(targets.static_batch_size(x))
        if stages is None:
            return super().__call__(x, y, sample_weights)
        graph = self.model._task_graph
        shared, own = graph.shared_variables, graph.task_variables
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
                step = self.losses(y, stages.heads(reps, training=True), sample_weights)
                task_objectives, strategy_objective = self.task_objectives(step)
                stacked_objectives = ops.stack(task_objectives)
            extra = self.extra_objective(step.aux_losses)
        rep_cotangents, own_grads = [], []
        sources = [[*reps, *own[task]] for task in self.model.task_names]
        for grads, task in zip(
            tape_ops.task_gradients(head_tape, task_objectives, step.parts, sources),
            self.model.task_names,
        ):
            rep_cotangents.append(grads[:num_reps])
            own_grads.append(tape_ops.or_zeros(grads[num_reps:], own[task]))
        del head_tape
        gramian = _staged_gramian(runs, rep_cotangents, shared)
        del runs
        safe_losses, kwargs = self.strategy_inputs(step, y, sample_weights)
        weights = self.weights_from_gramian(gramian, step.finite, safe_losses, kwargs)
        update_grads = tape_ops.weighted_gradients(
            tape, stacked_objectives, shared, weights
        )
        return self.finish(
            tape, step, weights, update_grads, own_grads, extra, strategy_objective
        )


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
    import tensorflow as tf

    gramian, cotangents = None, [None] * len(rep_cotangents)
    for run in reversed(runs):
        variables = [shared[i] for i in run.stage.variables]
        sources = variables + ([run.cut_input] if run.stage.has_cut_input else [])
        with tf.control_dependencies([] if gramian is None else [gramian]):
            rows, below = [[] for _ in variables], []
            for cotangent, task_reps in zip(cotangents, rep_cotangents):
                targets_, output_gradients = _stage_targets(run, cotangent, task_reps)
                grads = (
                    run.tape.gradient(
                        targets_, sources, output_gradients=output_gradients
                    )
                    if targets_
                    else [None] * len(sources)
                )
                for row, grad, variable in zip(rows, grads, variables):
                    row.append(tape_ops.flat_float32(grad, variable))
                below.append(grads[-1] if run.stage.has_cut_input else None)
            term = tape_ops.gramian_of_blocks([ops.stack(row) for row in rows])
        gramian = term if gramian is None else gramian + term
        cotangents = below
    return gramian


def _stage_targets(run, cotangent, task_reps):
    """One task's (targets, output_gradients) for a stage's backward pass:
    its cotangent at the stage's cut (from the stage above, plus its own
    when the cut is a representation) and at the representations made in
    the stage. Tensors the task does not depend on are left out."""
    targets_, output_gradients = [], []
    if run.stage.has_cut_output:
        if run.stage.cut_representation is not None:
            cotangent = tape_ops.add_optional(
                cotangent, task_reps[run.stage.cut_representation]
            )
        if cotangent is not None:
            targets_.append(run.cut_output)
            output_gradients.append(cotangent)
    for index, output in zip(run.stage.representations, run.representations):
        if task_reps[index] is not None:
            targets_.append(output)
            output_gradients.append(task_reps[index])
    return targets_, output_gradients
