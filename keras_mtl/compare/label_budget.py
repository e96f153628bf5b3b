"""Fewer labels for some tasks: the comparison's `task_train_sizes`.

Gong et al. ("A comparison of loss weighting strategies for multi-task
learning in deep neural networks", IEEE Access 2019) compared strategies
"with various amounts of training data per task". `limit_labels(data,
sizes, seed)` keeps, for each task named in `sizes`, the labels of `size`
training examples (a random subset drawn from `seed`, the same for every
method trained with that seed) and marks that task's other labels missing
with `missing_value(target)`:

- a multi-task model still trains its shared layers on every input, each
  task's loss averaging over its labelled examples only
  (`MultiTaskModel.compile(missing_labels=data.info["missing_labels"])`);
- the single-task baseline of a task trains on its labelled examples only
  (`labelled(split, task, data)`).

The test split keeps every label.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from keras_mtl.compare.problems import Split


def parse_task_sizes(items):
    """`{task: size}` from `["left:500", "right:20000"]` (or one string
    `"left:500,right:20000"`)."""
    if isinstance(items, str):
        items = [item for item in items.split(",") if item.strip()]
    sizes = {}
    for item in items:
        task, sep, size = str(item).partition(":")
        task = task.strip()
        if not sep or not task or not size.strip().isdigit():
            raise ValueError(
                f"task_train_sizes: {item!r} is not <task>:<number of labelled "
                "training examples>, e.g. left:500."
            )
        if task in sizes:
            raise ValueError(f"task_train_sizes names {task!r} twice.")
        sizes[task] = int(size)
    return sizes


def check_task_sizes(sizes, tasks):
    """Refuses sizes of unknown tasks and sizes below 1, naming them."""
    unknown = sorted(set(sizes) - set(tasks))
    if unknown:
        raise ValueError(
            f"task_train_sizes names unknown tasks {unknown}; this data set's "
            f"tasks: {list(tasks)}."
        )
    small = {task: size for task, size in sizes.items() if size < 1}
    if small:
        raise ValueError(
            f"task_train_sizes must be at least 1 labelled example per task, got "
            f"{small}."
        )


def missing_value(target):
    """The sentinel of an absent label: -1 for integer (class) targets, NaN
    for float targets."""
    return -1 if np.issubdtype(np.asarray(target).dtype, np.integer) else float("nan")


def limit_labels(data, sizes, seed):
    """`data` with only `sizes[task]` labelled training examples per named
    task (see the module docstring); `info` gains `"missing_labels"`
    `{task: sentinel}` and `"labelled_rows"` `{task: row indices}`."""
    train = data.train
    n = len(train)
    rng = np.random.default_rng(int(seed))
    y = dict(train.y)
    missing, rows = {}, {}
    for task in sorted(sizes):
        if sizes[task] >= n:
            continue
        keep = np.sort(rng.permutation(n)[: sizes[task]])
        target = np.array(y[task], copy=True)
        sentinel = missing_value(target)
        unlabelled = np.ones(n, bool)
        unlabelled[keep] = False
        target[unlabelled] = sentinel
        y[task] = target
        missing[task], rows[task] = sentinel, keep
    info = dict(data.info, missing_labels=missing, labelled_rows=rows)
    return dataclasses.replace(
        data, train=Split(train.x, y, train.sample_weight), info=info
    )


def labelled(split, task, data):
    """The rows of `split` (a training split of `data`, possibly restricted
    to some tasks) where `task` has a label."""
    rows = data.info.get("labelled_rows", {}).get(task)
    if rows is None:
        return split
    weights = None
    if split.sample_weight is not None:
        weights = {t: w[rows] for t, w in split.sample_weight.items()}
    return Split(
        _take(split.x, rows), {t: v[rows] for t, v in split.y.items()}, weights
    )


def missing_labels_of(data, tasks):
    """`compile`'s `missing_labels` for a model of `tasks` (None: every
    label present)."""
    missing = data.info.get("missing_labels", {})
    rules = {task: missing[task] for task in tasks if task in missing}
    return rules or None


def _take(x, rows):
    if isinstance(x, dict):
        return {key: value[rows] for key, value in x.items()}
    return x[rows]


__all__ = [
    "check_task_sizes",
    "labelled",
    "limit_labels",
    "missing_labels_of",
    "missing_value",
    "parse_task_sizes",
]
