"""`task_routed_model`: a shared trunk routed per task (Task Routing)."""

from __future__ import annotations

from collections.abc import Mapping

import keras

from keras_mtl.layers.fold_tasks import FoldTasks
from keras_mtl.layers.task_routing_layer import TaskRoutingLayer
from keras_mtl.layers.unfold_tasks import UnfoldTasks
from keras_mtl.models.multi_task_model import MultiTaskModel


def task_routed_model(
    inputs,
    blocks,
    heads,
    sigma=0.5,
    seed=None,
    activation="relu",
    top=None,
    name=None,
):
    """Builds a `MultiTaskModel` whose shared trunk is routed per task.

    Every block of the trunk (a convolution or dense layer, with its
    BatchNormalization if any) is followed by a `TaskRoutingLayer` and then
    the activation, as in the reference routed VGG:

        block_1 -> TRL_1 -> act -> block_2 -> TRL_2 -> act -> ... -> top
                -> head_t  (for each task t)

    All tasks run in one step through a task-folded batch: after the first
    block (which sees the same input for every task) the batch is folded to
    `(T * B, ...)` by `FoldTasks`, every routing layer (`mode="fold"`)
    applies task t's mask to block t, and `UnfoldTasks` hands task t its
    features before task t's head. The trunk's weights are the same for all
    tasks; only the masks differ, so task t's loss trains exactly the units
    its masks keep. A forward pass costs T trunk passes (from block 2 on).

    Args:
        inputs: the `keras.Input` tensor(s), handed to the first block.
        blocks: list of routed blocks. A block is a layer or a list of
            layers applied in order (e.g. `[Conv2D(64, 3), BatchNormalization()]`);
            a routing layer and the activation follow each block. Put layers
            that must not be routed (pooling) at the start of the next block.
        heads: dict `{task: layer}`, one head per task, applied to that
            task's routed features. Its order is the task order.
        sigma: fraction of each routing layer's units switched off per task
            (see `TaskRoutingLayer`), in [0, 1). 0 gives an un-routed fully
            shared trunk. Default 0.5 (reference `vgg11(sigma=0.5)`).
        seed: int seed of the masks; routing layer i uses `seed + i`. None
            draws seeds from NumPy's global generator.
        activation: activation after each routing layer (name or callable),
            or None. Default `"relu"`.
        top: optional list of shared layers applied to the routed features of
            the last block before the heads (e.g. `[GlobalAveragePooling2D()]`
            or `[Flatten()]`); they are not routed.
        name: the model's name.

    Returns:
        A `MultiTaskModel` with one output per task.

    Example:

    >>> from keras_mtl.models.task_routed_model import task_routed_model
    >>> L = keras.layers
    >>> model = task_routed_model(
    ...     keras.Input((8, 8, 3)),
    ...     blocks=[
    ...         [L.Conv2D(8, 3, padding="same"), L.BatchNormalization()],
    ...         [L.MaxPooling2D(), L.Conv2D(16, 3, padding="same")],
    ...     ],
    ...     heads={f"attr_{t}": L.Dense(1) for t in range(4)},
    ...     sigma=0.5,
    ...     seed=0,
    ...     top=[L.GlobalAveragePooling2D()],
    ... )
    >>> out = model.predict(np.zeros((2, 8, 8, 3), "float32"), verbose=0)
    >>> len(out), out["attr_0"].shape
    (4, (2, 1))

    References:
        Gjorgji Strezoski, Nanne van Noord, Marcel Worring. "Many Task
        Learning With Task Routing". ICCV 2019. arXiv:1903.12117. Code:
        https://github.com/gstrezoski/TaskRouting (`routed_vgg.py`).

    Note:
        The reference trains one randomly chosen task per step; here every
        step trains all tasks (each on its own routed sub-network), so any
        `keras_mtl.weighting` strategy applies. BatchNormalization layers
        after the first block see the folded batch (statistics over all
        tasks), where the reference computes them per task.
    """
    if not isinstance(heads, Mapping) or not heads:
        raise ValueError(
            f"task_routed_model needs `heads` as a non-empty dict {{task: layer}}, "
            f"got {heads!r}."
        )
    if isinstance(blocks, keras.layers.Layer) or not blocks:
        raise ValueError(
            "task_routed_model needs `blocks` as a non-empty list of layers or "
            f"lists of layers, got {blocks!r}."
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}.")
    num_tasks = len(heads)
    activation_layer = None if activation is None else keras.layers.Activation
    x = inputs
    for index, block in enumerate(blocks):
        block = list(block) if isinstance(block, list | tuple) else [block]
        if not block:
            raise ValueError(f"Block {index} of task_routed_model is empty.")
        for layer in block:
            if not callable(layer):
                raise ValueError(
                    f"Block {index} holds {layer!r}, which is not a Keras layer."
                )
            x = layer(x)
        if index == 0:
            x = FoldTasks(num_tasks)(x)
        x = TaskRoutingLayer(
            num_tasks,
            sigma=sigma,
            seed=None if seed is None else seed + index,
            mode="fold",
        )(x)
        if activation_layer is not None:
            x = activation_layer(activation)(x)
    for layer in top or []:
        x = layer(x)
    features = UnfoldTasks(num_tasks)(x)
    outputs = {}
    for (task, head), feature in zip(heads.items(), features):
        if not callable(head):
            raise ValueError(
                f"The head of task {task!r} must be a Keras layer or model, "
                f"got {type(head).__name__}."
            )
        outputs[task] = head(feature)
    return MultiTaskModel(inputs, outputs, name=name)
