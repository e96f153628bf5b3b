"""The task losses of one step: masked, of the global batch, auxiliary.

`TaskLosses` is what `MultiTaskModel.compile` resolves the `loss` argument
into. Called on a step's targets and predictions, it gives the `(T,)` task
losses of the global batch (the same value on every replica, this
replica's share of the gradient), the number of labelled elements of each
task when labels may be missing, and the losses' raw parts, from which the
gradient paths take each task's gradient through its own loss only.
`losses_after_update` recomputes them after the update for FAMO-like
strategies.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import keras
from keras import ops

from keras_mtl.models import _distribution as distribution
from keras_mtl.models import _targets as targets


class LossValues(NamedTuple):
    """The task losses of a step.

    Attributes:
        losses: `(T,)` float32, the task losses of the global batch.
        counts: None without `missing_labels`; else `(T,)` floats, the
            number of labelled loss terms of each task in the global batch:
            its labelled samples (positions of a dense output), or for a
            task masked per element its labelled elements. A task is
            present in a step when its count is positive (a sample with
            one labelled element makes its task present); the epoch mean
            of a task's loss weighs each step by its count.
        stacked: this replica's task losses (or weighted loss sums), `(T,)`.
        raw: the same as T scalars: loss t depends on the model through
            `raw[t]` alone (the gradient paths differentiate it).
    """

    losses: object
    counts: object
    stacked: object
    raw: list


class TaskLosses:
    """The resolved task losses of a `MultiTaskModel`.

    Args:
        task_names: the tasks, in output order.
        loss_fns: dict `{task: keras.losses.Loss}`.
        missing_labels: None, or `{task: sentinel | "sample_weight" |
            PerElement(sentinel)}` for the tasks whose labels may be absent
            (`_compile_options.resolve_missing_labels`).
        auxiliary_tasks: the tasks with an auxiliary output (scored with
            the task's own loss and targets).
        aux_weight: the weight of the auxiliary losses in every step.
    """

    def __init__(
        self, task_names, loss_fns, missing_labels, auxiliary_tasks, aux_weight
    ):
        self.task_names = tuple(task_names)
        self.loss_fns = loss_fns
        self.missing_labels = missing_labels
        for task, rule in (missing_labels or {}).items():
            if isinstance(rule, targets.PerElement):
                check_element_wise(task, loss_fns[task])
        self.auxiliary_tasks = tuple(auxiliary_tasks)
        self.aux_weight = aux_weight

    @property
    def scored_outputs(self):
        """`(task, output key)` of every output a loss scores."""
        pairs = [(t, t) for t in self.task_names]
        return pairs + [(t, aux_key(t)) for t in self.auxiliary_tasks]

    def check_targets(self, y, y_pred):
        targets.check_target_shapes(self.scored_outputs, self.loss_fns, y, y_pred)

    def label_mask(self, task, target, pred, sample_weight):
        rule = (self.missing_labels or {}).get(task)
        return targets.label_mask(rule, task, target, pred, sample_weight)

    def __call__(self, y, y_pred, sample_weights, tasks=None):
        """The `LossValues` of `tasks` (default: every task)."""
        tasks = tasks or self.task_names
        if self.missing_labels is None:
            values = []
            for task in tasks:
                target, pred = self._target_and_pred(task, y, y_pred)
                # The task's name in the names of the ops (and their errors).
                with keras.name_scope(scope_name(task)):
                    value = self.loss_fns[task](
                        target, pred, sample_weight=sample_weights.get(task)
                    )
                values.append(ops.cast(value, "float32"))
            stacked = ops.stack(values)
            losses = distribution.global_batch_losses(stacked)
            return LossValues(losses, None, stacked, values)
        sums, divisors, counts = [], [], []
        for task in tasks:
            target, pred = self._target_and_pred(task, y, y_pred)
            with keras.name_scope(scope_name(task)):
                total, divisor, count = self._masked_terms(
                    task, target, pred, sample_weights.get(task)
                )
            sums.append(total)
            divisors.append(divisor)
            counts.append(count)
        stacked = ops.stack(sums)
        losses, counts = _masked_global_losses(
            stacked, ops.stack(divisors), ops.stack(counts)
        )
        return LossValues(losses, counts, stacked, sums)

    def auxiliary(self, y, y_pred, sample_weights):
        """The `(A,)` losses of the auxiliary outputs, or None."""
        if not self.auxiliary_tasks:
            return None
        aux_pred = {t: y_pred[aux_key(t)] for t in self.auxiliary_tasks}
        return self(y, aux_pred, sample_weights, self.auxiliary_tasks).losses

    def extra_objective(self, layer_losses, aux_losses):
        """What every step adds to the strategy's combination, unweighted by
        it: the layers' own losses (weight and activity regularisers, scaled
        for distribution as Keras does) and aux_weight times the auxiliary
        losses. None when there is nothing to add."""
        terms = []
        if layer_losses:
            total = ops.sum(ops.stack([ops.cast(v, "float32") for v in layer_losses]))
            terms.append(total / distribution.num_replicas())
        if aux_losses is not None and self.aux_weight > 0:
            safe = ops.where(ops.isfinite(aux_losses), aux_losses, 0.0)
            terms.append(self.aux_weight * ops.sum(safe))
        if not terms:
            return None
        return terms[0] if len(terms) == 1 else ops.sum(ops.stack(terms))

    def log_weights(self, finite, keep, counts):
        """How much each task's loss weighs in its epoch mean: the batch
        size, or with `missing_labels` the count of masked tasks (the
        labelled samples, or elements of a task masked per element), so
        that the epoch mean is over the epoch's labelled samples (or
        elements)."""
        if counts is None:
            return [keep] * len(self.task_names)
        labelled = ops.cast(finite, "float32") * counts / distribution.num_replicas()
        return [
            labelled[t] if task in self.missing_labels else keep
            for t, task in enumerate(self.task_names)
        ]

    def _target_and_pred(self, task, y, y_pred):
        pred = y_pred[task]
        target = targets.aligned_target(y[task], pred)
        return targets.same_batch_size(task, target, pred), pred

    def _masked_terms(self, task, target, pred, sample_weight):
        """This replica's weighted loss sum, divisor and labelled count.

        Per sample (a sentinel, "sample_weight"): with l_i the loss of
        sample i, m_i its mask and w_i its weight, the sum is
        S = sum_i m_i w_i l_i, the count N = sum_i m_i and the divisor N
        (the task loss S / N is the mean over the labelled samples), as
        Keras' `sum_over_batch_size` with every label present.

        Per element (`PerElement`): with e_id the loss of element d of
        sample i alone and m_id its mask, S = sum_id m_id w_i e_id,
        N = sum_id m_id and the divisor N: the mean over the labelled
        elements. With every element labelled it is the Keras value
        (1/B) sum_i w_i (1/D) sum_d e_id, since l_i = (1/D) sum_d e_id for
        the element-wise losses it accepts (`check_element_wise`).

        The other reductions keep Keras' rule on the labelled terms:
        `"sum"` divides by 1 (per element by D, so that sum_i l_i is
        kept), `"mean_with_sample_weight"` by the sum of the weights of
        the labelled terms.
        """
        fn = self.loss_fns[task]
        rule = (self.missing_labels or {}).get(task)
        target, labelled = self.label_mask(task, target, pred, sample_weight)
        target = ops.convert_to_tensor(target, dtype=fn.dtype)
        pred = ops.convert_to_tensor(pred, dtype=fn.dtype)
        per_element = isinstance(rule, targets.PerElement)
        if per_element:
            values = element_values(task, fn, target, pred)
        else:
            values = fn.call(target, pred)
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
            sample_weight = ops.cast(sample_weight, "float32")
            sample_weight = targets.to_rank(sample_weight, len(values.shape))
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
            divisor = ops.convert_to_tensor(1.0 / distribution.num_replicas())
            if per_element:
                elements = ops.cast(ops.shape(values)[-1], "float32")
                divisor = divisor * elements
        elif reduction == "mean_with_sample_weight":
            divisor = ops.sum(weight)
        else:
            divisor = count
        return total, divisor, count


# Losses of a whole vector (a distribution over the last axis, a direction,
# a sequence or a region): an element alone has no loss of its own.
_WHOLE_VECTOR_LOSSES = (
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "categorical_focal_crossentropy",
    "categorical_generalized_cross_entropy",
    "categorical_hinge",
    "kl_divergence",
    "cosine_similarity",
    "ctc",
    "dice",
    "tversky",
    "circle",
)


def losses_after_update(model, x, y, sample_weights):
    """The task losses on the same batch after the update, for a strategy
    with `uses_post_step_losses` (FAMO). The extra forward pass leaves the
    layers' state (BatchNorm statistics) as the update left it."""
    strategy_ids = {id(v) for v in model.loss_weighting.variables}
    layer_state = [
        v for v in model.non_trainable_variables if id(v) not in strategy_ids
    ]
    before = [ops.copy(v.value) for v in layer_state]
    losses = model._options.task_losses(y, model(x, training=True), sample_weights)
    for variable, value in zip(layer_state, before):
        variable.assign(value)
    return losses.losses


def check_element_wise(task, fn):
    """Refuses, naming the task, a loss that cannot score elements one by
    one (a `PerElement` rule needs one)."""
    inner = getattr(fn, "fn", None)
    name = getattr(inner, "__name__", "") if inner is not None else ""
    if name in _WHOLE_VECTOR_LOSSES:
        raise ValueError(
            f"missing_labels for task {task!r} is per element, but its loss "
            f"{name!r} scores the whole vector of a sample (class labels, a "
            "distribution or a direction), not each element alone. Use a "
            "plain sentinel for it (the sample is then unlabelled when any "
            "entry is the sentinel), or an element-wise loss (mse, mae, "
            "huber, log_cosh, binary_crossentropy, ...)."
        )


def element_values(task, fn, target, pred):
    """The loss of each element alone: `fn` on targets and predictions of
    shape `(..., D)` seen as `(..., D, 1)`, giving values of shape
    `(..., D)`. For a loss that is the mean over the last axis of a term
    of each element (mse, mae, huber, log_cosh, binary_crossentropy, ...)
    the mean of the values over D is the loss of the sample."""
    values = fn.call(ops.expand_dims(target, -1), ops.expand_dims(pred, -1))
    if tuple(values.shape) != tuple(target.shape):
        raise ValueError(
            f"missing_labels for task {task!r} is per element, but its loss "
            f"called on each element alone (shape {tuple(target.shape) + (1,)}) "
            f"gives values of shape {tuple(values.shape)}, not "
            f"{tuple(target.shape)}: it does not reduce over the last axis "
            "only. Use an element-wise loss (a mean over the last axis)."
        )
    return values


def resolve_losses(task_names, loss):
    """`{task: keras.losses.Loss}` from `compile(loss=...)`."""
    if loss is None:
        raise ValueError(
            "MultiTaskModel.compile needs `loss`: a dict {task: loss} "
            f"for the tasks {list(task_names)}, or one loss for all."
        )
    if isinstance(loss, Mapping):
        targets.check_task_names(task_names, loss.keys(), "loss", require_all=True)
        per_task = {t: loss[t] for t in task_names}
    else:
        per_task = {t: loss for t in task_names}
    resolved = {}
    for task, identifier in per_task.items():
        fn = keras.losses.get(identifier)
        if fn is None:
            raise ValueError(f"Task {task!r} has no loss (got None).")
        if not isinstance(fn, keras.losses.Loss):
            fn = FunctionLoss(fn)
        resolved[task] = fn
    return resolved


def aux_key(task):
    """The output key of a task's auxiliary prediction."""
    return f"{task}_aux"


def scope_name(name, default="task"):
    """`name` made a valid name scope ("<lambda>" is not one)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name).strip("_.-") or default


class FunctionLoss(keras.losses.Loss):
    """A loss function wrapped as a `keras.losses.Loss`, so that the batch
    reduction and sample weights follow Keras' rules."""

    def __init__(self, fn):
        # The name becomes a name scope: lambdas and private functions
        # ("<lambda>", "_mse") are not valid ones.
        super().__init__(name=scope_name(getattr(fn, "__name__", ""), "loss"))
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def _masked_global_losses(sums, divisors, counts):
    """Task losses averaged over the labelled samples of the global batch.

    `sums`, `divisors` and `counts` are this replica's `(T,)` weighted loss
    sums, divisors and labelled counts. The value is the global-batch loss
    sum_r S_r / sum_r D_r (0 for a task without labels); its gradient is
    this replica's share dS / sum_r D_r, which the replicas' summed
    gradients turn into the global one. Returns `(losses, counts)`, the
    latter the global number of labelled elements of each task.
    """
    divisors = distribution.sum_over_replicas(ops.stop_gradient(divisors))
    counts = distribution.sum_over_replicas(ops.stop_gradient(counts))
    local = ops.divide_no_nan(sums, divisors)
    total = distribution.sum_over_replicas(ops.stop_gradient(local))
    losses = local + ops.stop_gradient(total - local)
    return losses, counts
