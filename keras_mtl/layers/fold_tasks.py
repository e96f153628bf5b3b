"""`FoldTasks`: stack T copies of a batch, one block per task."""

from __future__ import annotations

from keras import ops

from keras_mtl.layers._task_blocks import TaskBlocks
from keras_mtl.utils.serialization import register_serializable


@register_serializable
class FoldTasks(TaskBlocks):
    """Folds a task axis into the batch: T stacked copies of the input.

    `x` of shape `(B, ...)` becomes `(T * B, ...)`, where rows `t*B` to
    `(t+1)*B` (block t) are a copy of `x` for task t:

        fold(x) = concatenate([x, x, ..., x], axis=0)      (T copies)

    Shared layers applied to the folded batch run every task in one call
    with the same weights; `TaskRoutingLayer(mode="fold")` masks block t
    with task t's mask, and `UnfoldTasks` splits the blocks back into one
    tensor per task. A Keras mask on the input is folded the same way.

    Args:
        num_tasks: T, the number of copies (int >= 1).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> from keras_mtl.layers.fold_tasks import FoldTasks
    >>> FoldTasks(3)(np.array([[1.0], [2.0]])).numpy()[:, 0].tolist()
    [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]

    References:
        The task-folded batch is this library's vectorised form of Task
        Routing's one-task-per-pass training: Gjorgji Strezoski, Nanne van
        Noord, Marcel Worring. "Many Task Learning With Task Routing".
        ICCV 2019. arXiv:1903.12117.
    """

    def _blocks(self, x):
        return ops.tile(x, (self.num_tasks,) + (1,) * (len(x.shape) - 1))

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch * self.num_tasks,) + tuple(
            input_shape[1:]
        )
