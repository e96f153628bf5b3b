"""Equal weighting: the plain sum of task losses."""

from keras import ops

from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy


@register_strategy("ew", "equal", "equal_weighting", "ls", "linear_scalarization")
class EqualWeighting(LossWeighting):
    """Equal weighting (linear scalarisation) of the task losses.

    The objective is the plain sum of the T task losses:

        L = sum_t L_t,    w_t = 1.

    This is the convention of LibMTL (weights 1, not 1/T); multiply the
    learning rate by 1/T for the mean. Equal weighting is the baseline every
    other strategy must beat, and it is the default of
    `MultiTaskModel.compile`. Stateless, one backward pass. With missing
    labels, a task absent from a step has weight 0.

    Example:

    >>> strategy = keras_mtl.weighting.EqualWeighting()
    >>> total, weights = strategy(keras.ops.convert_to_tensor([0.5, 2.0]))
    >>> float(total)
    2.5
    """

    supports_missing_tasks = True
    fixed_weights = True

    def compute_weights(self, losses, training=True, task_mask=None):
        return ops.ones_like(losses)
