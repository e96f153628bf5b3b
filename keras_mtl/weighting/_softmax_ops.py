"""A softmax over a task vector that accepts a single task.

`keras.ops.softmax` warns when the axis has size 1, which is a legitimate
case here (a model with one task), so the strategies use this one.
"""

from keras import ops


def task_softmax(x):
    """Softmax of a `(T,)` vector, shifted by its maximum for stability."""
    shifted = x - ops.stop_gradient(ops.max(x))
    exp = ops.exp(shifted)
    return exp / ops.sum(exp)
