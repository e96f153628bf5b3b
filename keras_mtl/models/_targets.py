"""Targets of a `MultiTaskModel` step: their checks, and absent labels.

What a step does with `y` and `sample_weight` before any loss is taken:
checks them against the task names, the heads' shapes and the losses,
aligns labels with one-unit heads, and turns the `missing_labels` rule of a
task into the target with absent labels filled and a mask of the labelled
samples (or, for a `PerElement` rule, of the labelled elements). The
compiled metrics see the labelled samples (elements) alone through a Keras
mask on the predictions (`masked_for_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import keras
from keras import ops


def check_task_names(task_names, names, what, require_all=False):
    """Raises naming the unknown (and, with `require_all`, the missing)
    tasks of the argument `what`."""
    names = list(names)
    extra = sorted(set(names) - set(task_names))
    missing = sorted(set(task_names) - set(names)) if require_all else []
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"missing tasks {missing}")
        if extra:
            parts.append(f"unknown tasks {extra}")
        raise ValueError(
            f"`{what}` does not match the model's tasks "
            f"{list(task_names)}: {' and '.join(parts)}."
        )


def standardize_targets(task_names, y, sample_weight):
    """`(y, sample_weights)` as dicts keyed by task, checked against the
    task names (one task may take a bare target)."""
    if not isinstance(y, Mapping):
        if len(task_names) == 1 and y is not None:
            y = {task_names[0]: y}
        else:
            raise ValueError(
                "MultiTaskModel needs targets as a dict {task: y} for "
                f"the tasks {list(task_names)}, got {type(y).__name__}."
            )
    check_task_names(task_names, y.keys(), "y (targets)", require_all=True)
    if sample_weight is None:
        weights = {}
    elif isinstance(sample_weight, Mapping):
        check_task_names(task_names, sample_weight.keys(), "sample_weight")
        weights = dict(sample_weight)
    else:
        weights = {t: sample_weight for t in task_names}
    return y, weights


def check_target_shapes(pairs, loss_fns, y, y_pred):
    """Refuses targets whose dtype or shape cannot match their head.

    `pairs`: `(task, output key)` of every scored output (a task's own and
    its auxiliary output)."""
    for task, key in pairs:
        target, pred = y[task], y_pred[key]
        check_target_dtype(task, target)
        t_shape, p_shape = tuple(target.shape), tuple(pred.shape)
        if (
            is_sparse_loss(loss_fns[task])
            and len(t_shape) == len(p_shape)
            and t_shape[-1] not in (1, None)
        ):
            raise ValueError(
                f"Task {task!r}: its loss takes integer class labels, but "
                f"the targets have shape {t_shape}, like one-hot vectors. "
                f"Pass labels of shape {p_shape[:-1]}, or use "
                "categorical_crossentropy for one-hot targets."
            )
        if not shapes_compatible(t_shape, p_shape):
            raise ValueError(
                f"Task {task!r}: target shape {t_shape} cannot match "
                f"the head's output shape {p_shape}. Expected the same "
                "shape, or integer labels of shape "
                f"{p_shape[:-1]} (or {p_shape[:-1] + (1,)})."
            )


def check_target_dtypes(y):
    """`check_target_dtype` on each target of `fit`'s `y` when it is a
    dict `{task: array}`."""
    if isinstance(y, Mapping):
        for task, target in y.items():
            check_target_dtype(task, target)


def check_target_dtype(task, target):
    """Refuses targets that are not numbers, naming the task."""
    dtype = getattr(target, "dtype", None)
    if dtype is None:
        return
    kind = getattr(dtype, "kind", None)  # numpy
    if kind in ("U", "S", "O") or str(dtype) in ("string", "<dtype: 'string'>"):
        raise ValueError(
            f"Task {task!r}: targets must be numbers (integer labels or "
            f"floats), got dtype {dtype}. Encode the labels first, for "
            "example with keras.layers.StringLookup."
        )


def is_sparse_loss(fn):
    """Whether a task loss takes integer class labels."""
    if isinstance(fn, keras.losses.SparseCategoricalCrossentropy):
        return True
    inner = getattr(fn, "fn", None)
    return getattr(inner, "__name__", "") == "sparse_categorical_crossentropy"


def shapes_compatible(target_shape, pred_shape):
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


def aligned_target(target, pred):
    """Labels (B,) for a one-unit head (B, 1) get the head's rank."""
    if len(target.shape) == len(pred.shape) - 1 and pred.shape[-1] == 1:
        target = ops.expand_dims(target, -1)
    return target


def check_not_empty(x):
    """Refuses a batch known at trace time to hold no sample."""
    shape = tuple(getattr(keras.tree.flatten(x)[0], "shape", ()))
    if shape and shape[0] == 0:
        raise ValueError(
            "MultiTaskModel got an empty batch (0 samples): there is nothing "
            "to train on. Remove empty batches from the data."
        )


def batch_size(y_pred):
    """The batch size as a float scalar: loss means weigh batches by it."""
    first = next(iter(y_pred.values()))
    return ops.cast(ops.shape(first)[0], "float32")


def static_batch_size(x):
    """The batch size of a step's inputs when it is known while tracing."""
    first = keras.tree.flatten(x)[0]
    size = getattr(first, "shape", (None,))[0]
    return None if size is None else int(size)


def with_rank(tensor, rank):
    """`tensor` with trailing axes of size 1 added up to `rank`."""
    while len(tensor.shape) < rank:
        tensor = ops.expand_dims(tensor, -1)
    return tensor


class PerElement(NamedTuple):
    """The `missing_labels` rule of a task masked element by element.

    `value`: the sentinel (a number or NaN). Each element of the task's
    target that equals it is unlabelled on its own; the other elements of
    the same sample keep their labels (`compile(missing_labels={task:
    {"value": v, "per_element": True}})`)."""

    value: float


def sentinel_of(rule):
    """The sentinel of a rule (a number, NaN or `PerElement`)."""
    return rule.value if isinstance(rule, PerElement) else rule


def to_rank(tensor, rank):
    """`tensor` with trailing axes of size 1 removed, or added, to reach
    `rank`: `(B, 1)` sample weights of `(B,)` loss values become `(B,)` (as
    in Keras' losses) instead of broadcasting to `(B, B)`."""
    tensor = ops.convert_to_tensor(tensor)
    while len(tensor.shape) > rank and tensor.shape[-1] == 1:
        tensor = ops.squeeze(tensor, -1)
    return with_rank(tensor, rank)


def label_mask(rule, task, target, pred, sample_weight):
    """The target with absent labels filled, and the labelled mask.

    `rule`: the task's `missing_labels` entry (None: not masked). Returns
    `(target, labelled)`: `labelled` is None when the task is not masked,
    else a boolean tensor of the shape of the loss values: the
    prediction's shape without its last axis (a sample, or a position of a
    dense output, is labelled unless an entry of its target is the
    sentinel), or for a `PerElement` rule the target's own shape (each
    element labelled unless it is the sentinel).
    """
    if rule is None:
        return target, None
    pred_rank = len(pred.shape)
    if rule == "sample_weight":
        if sample_weight is None:
            return target, None
        labelled = to_rank(sample_weight, pred_rank - 1) > 0
        return target, labelled
    target = ops.convert_to_tensor(target)
    per_element = isinstance(rule, PerElement)
    if per_element and len(target.shape) != pred_rank:
        raise ValueError(
            f"missing_labels for task {task!r} is per element, but its "
            f"targets of shape {tuple(target.shape)} are class labels of the "
            f"head's output {tuple(pred.shape)}: per-element masks need targets "
            "of the output's shape (regression values, binary labels). Mark "
            "absent class labels with a plain sentinel (missing_labels="
            f"{{{task!r}: -1}})."
        )
    sentinel = sentinel_of(rule)
    if math.isnan(sentinel):
        if not keras.backend.is_float_dtype(target.dtype):
            raise ValueError(
                f"missing_labels for task {task!r} is NaN, but its targets "
                f"are {target.dtype} and cannot hold NaN: mark absent "
                "labels with a number such as -1."
            )
        missing = ops.isnan(target)
    else:
        missing = ops.equal(target, ops.cast(sentinel, target.dtype))
    target = ops.where(missing, ops.zeros_like(target), target)
    if not per_element and len(target.shape) == pred_rank:
        missing = ops.any(missing, axis=-1)
    return target, ops.logical_not(missing)


def masked_for_metrics(rules, task_names, y, y_pred, sample_weights, finite=None):
    """What the compiled metrics see: targets with absent labels filled,
    and predictions carrying a Keras mask that drops the unlabelled
    samples (and every sample of a non-finite step), so that weighted and
    unweighted metrics average over the labelled samples alone.

    A task masked per element (`PerElement`) has its last axis folded into
    the batch: its metrics see each element as a sample of one value,
    `(N, 1)` targets and predictions with N = the number of elements, the
    unlabelled ones masked, so that they average over the labelled
    elements as its loss does.

    `rules`: `{task: missing_labels rule}`. Returns `(y, y_pred,
    sample_weights)`, the weights a full dict or None."""
    y, y_pred = dict(y), dict(y_pred)
    folded = {}
    for task in task_names:
        target, pred = y[task], y_pred[task]
        aligned = aligned_target(target, pred)
        rule = rules.get(task)
        filled, labelled = label_mask(
            rule, task, aligned, pred, sample_weights.get(task)
        )
        if labelled is None and finite is None:
            continue
        if labelled is not None and filled is not aligned:
            target = filled
            if len(target.shape) != len(y[task].shape):
                target = ops.squeeze(target, -1)
        if isinstance(rule, PerElement):
            folded[task] = ops.shape(target)
            target = ops.reshape(target, (-1, 1))
            pred = ops.reshape(pred, (-1, 1))
            labelled = ops.reshape(labelled, (-1,))
        if labelled is None:
            labelled = ops.ones(ops.shape(pred)[:-1], dtype="bool")
        if finite is not None:
            labelled = ops.logical_and(labelled, finite)
            target = ops.where(finite, target, ops.zeros_like(target))
            pred = ops.where(finite, pred, ops.zeros_like(pred))
        elif task not in folded:
            pred = ops.copy(pred)  # a new tensor to carry the mask
        _set_keras_mask(pred, labelled)
        y[task], y_pred[task] = target, pred
    weights = None
    if sample_weights:
        weights = {}
        for t in task_names:
            weight = sample_weights.get(t)
            if weight is None:
                weight = ops.ones((ops.shape(y[t])[0],))
            elif t in folded:
                weight = _per_element_weights(weight, folded[t])
            weights[t] = weight
    return y, y_pred, weights


def _per_element_weights(weight, shape):
    """Sample weights repeated over the elements of targets of `shape`,
    flattened as the folded targets are."""
    weight = ops.broadcast_to(to_rank(weight, len(shape)), shape)
    return ops.reshape(weight, (-1,))


def _set_keras_mask(tensor, mask):
    """Attaches a Keras mask, which Keras metrics apply to their values."""
    try:
        from keras.src.backend.common.masking import set_keras_mask
    except ImportError:  # Keras < 3.6 kept the mask in an attribute.
        tensor._keras_mask = mask
    else:
        set_keras_mask(tensor, mask)


def same_batch_size(task, target, pred):
    """`target`, checked at run time to have the predictions' batch size
    when the shapes leave it open (a loss would silently broadcast a 1-row
    target). Under XLA the check is compiled out.

    Only TensorFlow traces a step with batch sizes unknown until it runs;
    other backends (JAX) trace with every shape known, and a known batch
    size that differs is refused by `check_target_shapes`. Keras has no
    backend-neutral run-time assertion, so the unknown case stays in
    TensorFlow."""
    if all(_known_batch_size(t) for t in (target, pred)):
        return target
    if keras.backend.backend() != "tensorflow":
        return target
    import tensorflow as tf

    check = tf.debugging.assert_equal(
        ops.shape(target)[0],
        ops.shape(pred)[0],
        message=f"Task {task!r}: the targets' batch size differs from the inputs'",
    )
    with tf.control_dependencies([check]):
        return tf.identity(target)


def _known_batch_size(tensor):
    """Whether the first axis of `tensor` (if any) has a size known now."""
    try:
        rank = len(tensor.shape)
    except ValueError:  # a TensorFlow shape of unknown rank
        return False
    return rank == 0 or tensor.shape[0] is not None
