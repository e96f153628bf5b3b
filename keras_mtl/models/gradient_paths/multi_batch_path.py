"""The multi-batch path: per-task gradients on k sub-batches of each batch.

For strategies with `batches_per_step = k > 1` (MoDo, SDMGrad), which need
per-task gradients on k independent mini-batches per optimizer step. The
batch `fit` gives the step is cut into k consecutive sub-batches (sizes
differing by at most one sample); the forward pass runs on each, each
task's gradient is taken on each, and the strategy receives the
`(k, T, P)` stack of per-task gradient matrices with the `(k, T)`
sub-batch losses. Each task's own (head) variables get the mean of its k
sub-batch gradients, times the strategy's `head_gradient_scales`.

A batch of fewer than k samples (the last one of an epoch) is not cut: it
trains nothing, like an empty batch; `fit` refuses a `batch_size` below k.
The step's logged losses and metrics are those of the whole batch,
computed from the k sub-batches' predictions put back together (no extra
forward pass). Cost: k forward passes on a k-th of the batch each, and
k T backward passes.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.models import _targets as targets
from keras_mtl.models.gradient_paths import _tape_ops as tape_ops
from keras_mtl.models.gradient_paths.base import Forward
from keras_mtl.models.gradient_paths.matrix_path import MatrixGradientPath


def sub_batches(structures, count):
    """`structures` (a tuple of nested tensors sharing their first axis) cut
    into `count` consecutive parts along it: a list of `count` tuples."""
    first = keras.tree.flatten(structures)[0]
    size = first.shape[0]
    if size is None:
        size = ops.shape(first)[0]
    bounds = [(i * size) // count for i in range(count + 1)]
    return [
        keras.tree.map_structure(lambda t, a=a, b=b: t[a:b], structures)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


def check_batch_size(batch_size, strategy):
    """Raises when `fit`'s `batch_size` is too small to be cut into the
    strategy's `batches_per_step` sub-batches."""
    count = strategy.batches_per_step
    if batch_size is not None and batch_size < count:
        raise ValueError(
            f"{type(strategy).__name__} cuts each batch into {count} "
            f"sub-batches (batches_per_step={count}), but fit() got "
            f"batch_size={batch_size}. Use a batch_size of at least {count}; a "
            f"multiple of {count} gives sub-batches of equal size."
        )


class MultiBatchGradientPath(MatrixGradientPath):
    """The matrix path on `batches_per_step` sub-batches (TensorFlow)."""

    def check_fit(self, batch_size):
        check_batch_size(batch_size, self.strategy)

    @property
    def count(self):
        return self.strategy.batches_per_step

    def forward_in_parts(self, x, y, sample_weights):
        """The forward pass on each sub-batch, with its task losses, and the
        whole batch's `Forward` from their predictions (its losses are the
        logged ones; its `finite` also covers a dynamic batch too small to
        cut). Returns `(step, parts)`, `parts` a list of `Forward`s."""
        task_losses = self.model._options.task_losses
        predictions, values = [], []
        size = targets.static_batch_size(x)
        # A batch known while tracing (always on JAX) to be too small to cut
        # is not cut (no empty parts); the step trains nothing (below).
        cut = size is None or size >= self.count
        if cut:
            chunks = sub_batches((x, y, sample_weights), self.count)
        else:
            chunks = [(x, y, sample_weights)] * self.count
        for part_x, part_y, part_weights in chunks:
            y_pred = self.model(part_x, training=True)
            predictions.append(y_pred)
            values.append(task_losses(part_y, y_pred, part_weights))
        if cut:
            y_pred = keras.tree.map_structure(
                lambda *parts: ops.concatenate(parts, axis=0), *predictions
            )
        else:
            y_pred = predictions[0]
        step = self.losses(y, y_pred, sample_weights)
        finite = ops.logical_and(
            step.finite, targets.batch_size(y_pred) >= float(self.count)
        )
        step = step._replace(finite=finite)
        parts = [
            Forward(pred, v.losses, None, finite, v.counts, (v.stacked, v.raw))
            for pred, v in zip(predictions, values)
        ]
        return step, parts

    def part_losses(self, step, parts):
        """The `(k, T)` sub-batch losses, zero where the step is not finite."""
        stacked = ops.stack([part.losses for part in parts])
        return ops.where(step.finite, stacked, ops.zeros_like(stacked))

    def __call__(self, x, y, sample_weights):
        import tensorflow as tf

        model = self.model
        graph = model._task_graph
        shared, own = graph.shared_variables, graph.task_variables
        sources = [[*shared, *own[task]] for task in model.task_names]
        with tf.GradientTape(persistent=True) as tape:
            step, parts = self.forward_in_parts(x, y, sample_weights)
            objectives = [self.task_objectives(part) for part in parts]
            extra = self.extra_objective(step.aux_losses)
            strategy_objective = None
            for _, own_objective in objectives:
                strategy_objective = tape_ops.add_optional(
                    strategy_objective, own_objective
                )
        # blocks[i][b]: the (T, P_i) per-task gradients of shared variable i
        # on sub-batch b; own_grads[t]: task t's mean head gradients.
        blocks = [[] for _ in shared]
        own_grads = [None] * model.num_tasks
        for part, (task_objectives, _) in zip(parts, objectives):
            rows = [[] for _ in shared]
            for t, (grads, variables) in enumerate(
                zip(
                    tape_ops.task_gradients(tape, task_objectives, part.parts, sources),
                    sources,
                )
            ):
                grads = tape_ops.or_zeros(grads, variables)
                for i, grad in enumerate(grads[: len(shared)]):
                    rows[i].append(ops.reshape(ops.cast(grad, "float32"), (-1,)))
                head = [g / float(self.count) for g in grads[len(shared) :]]
                own_grads[t] = (
                    head
                    if own_grads[t] is None
                    else [a + b for a, b in zip(own_grads[t], head)]
                )
            for i, block in enumerate(rows):
                blocks[i].append(ops.stack(block))
        blocks = [ops.stack(per_batch) for per_batch in blocks]
        _, kwargs = self.strategy_inputs(step, y, sample_weights)
        update_grads, weights = self.combine(
            tape, blocks, None, step.finite, self.part_losses(step, parts), kwargs
        )
        return self.finish(
            tape, step, weights, update_grads, own_grads, extra, strategy_objective
        )
