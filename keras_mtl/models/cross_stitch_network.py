"""`cross_stitch_network`: T task towers mixed by cross-stitch units after
every block (Misra, Shrivastava, Gupta, Hebert; "Cross-stitch Networks for
Multi-task Learning", CVPR 2016), as a `MultiTaskModel`."""

from __future__ import annotations

from collections.abc import Mapping

from keras_mtl.layers.cross_stitch import CrossStitch
from keras_mtl.models.multi_task_model import MultiTaskModel


def cross_stitch_network(
    inputs,
    tasks,
    block_fn,
    num_blocks,
    heads,
    granularity="channel",
    alpha_self=0.9,
    name=None,
):
    """Builds a cross-stitch network as a `keras_mtl.MultiTaskModel`.

    One tower per task, each a stack of `num_blocks` blocks. After every
    block, a `CrossStitch` unit mixes the T towers' activations, and each
    tower's next block (or, after the last unit, its head) reads its own
    mixed activation:

        x_t^0 = inputs
        y_t^b = block_fn(t, b)(x_t^b)                    b = 0..num_blocks-1
        [x_1^{b+1}, ..., x_T^{b+1}] = CrossStitch_b([y_1^b, ..., y_T^b])
        output_t = heads[t](x_t^{num_blocks})

    This is the paper's layout: two networks of the same architecture,
    units after every pooling and fully connected layer (pool1..pool5, fc6,
    fc7), task-specific fc8 heads.

    Args:
        inputs: a `keras.Input` tensor (fed to every tower).
        tasks: the task names, in output order.
        block_fn: `block_fn(task, index)` returns a NEW layer (or callable
            of layers) for block `index` of `task`'s tower. All towers'
            block `index` outputs must have the same shape.
        num_blocks: number of blocks per tower (int >= 1), hence of
            cross-stitch units.
        heads: dict `{task: layer}` of task heads.
        granularity: the units' granularity, `"channel"` or `"layer"`.
        alpha_self: the units' initial self weight (0.9 in the paper).
        name: the model's name.

    Returns:
        A `keras_mtl.MultiTaskModel` whose outputs are `{task: head output}`.
        Its units are the layers named `cross_stitch_<b>`.

    Example:

    >>> from keras_mtl.models import cross_stitch_network
    >>> model = cross_stitch_network(
    ...     keras.Input((8,)), ["a", "b"],
    ...     block_fn=lambda task, i: keras.layers.Dense(4, activation="relu"),
    ...     num_blocks=2,
    ...     heads={"a": keras.layers.Dense(3), "b": keras.layers.Dense(1)},
    ... )
    >>> model.task_names
    ('a', 'b')
    >>> [layer.name for layer in model.layers if "cross_stitch" in layer.name]
    ['cross_stitch_0', 'cross_stitch_1']
    """
    tasks = list(tasks)
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"`tasks` must be distinct task names, got {tasks!r}.")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int):
        raise ValueError(f"`num_blocks` must be an int >= 1, got {num_blocks!r}.")
    if num_blocks < 1:
        raise ValueError(f"`num_blocks` must be an int >= 1, got {num_blocks!r}.")
    if not isinstance(heads, Mapping) or sorted(heads) != sorted(tasks):
        raise ValueError(
            f"`heads` must be a dict with one head per task {tasks}, got {heads!r}."
        )
    activations = [inputs] * len(tasks)
    for index in range(num_blocks):
        activations = [
            block_fn(task, index)(activation)
            for task, activation in zip(tasks, activations)
        ]
        unit = CrossStitch(
            granularity=granularity,
            alpha_self=alpha_self,
            name=f"cross_stitch_{index}",
        )
        activations = unit(activations)
    outputs = {
        task: heads[task](activation) for task, activation in zip(tasks, activations)
    }
    return MultiTaskModel(inputs, outputs, name=name)
