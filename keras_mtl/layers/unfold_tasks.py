"""`UnfoldTasks`: split a task-folded batch into one tensor per task."""

from __future__ import annotations

from keras import ops

from keras_mtl.layers._task_blocks import TaskBlocks
from keras_mtl.utils.serialization import register_serializable


@register_serializable
class UnfoldTasks(TaskBlocks):
    """Splits a task-folded batch `(T * B, ...)` into T tensors `(B, ...)`.

    The inverse of `FoldTasks`: block t (rows `t*B` to `(t+1)*B`) becomes
    the t-th output, the features of task t, ready for task t's head:

        unfold(z) = [z[0:B], z[B:2B], ..., z[(T-1)B:TB]]

    The batch size must be a multiple of T. A Keras mask is split the
    same way.

    Args:
        num_tasks: T, the number of blocks (int >= 1).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> from keras_mtl.layers.unfold_tasks import UnfoldTasks
    >>> parts = UnfoldTasks(3)(np.arange(6.0).reshape(6, 1))
    >>> [p.numpy()[:, 0].tolist() for p in parts]
    [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]

    References:
        The task-folded batch is this library's vectorised form of Task
        Routing's one-task-per-pass training: Gjorgji Strezoski, Nanne van
        Noord, Marcel Worring. "Many Task Learning With Task Routing".
        ICCV 2019. arXiv:1903.12117.
    """

    def _blocks(self, x):
        return list(ops.split(x, self.num_tasks, axis=0))

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        if batch is not None:
            if batch % self.num_tasks:
                raise ValueError(
                    f"UnfoldTasks({self.num_tasks}) needs a batch size that is "
                    f"a multiple of {self.num_tasks}, got {batch}."
                )
            batch //= self.num_tasks
        shape = (batch,) + tuple(input_shape[1:])
        return [shape for _ in range(self.num_tasks)]
