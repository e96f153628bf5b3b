"""Cross-stitch units (Misra et al., CVPR 2016); the network builder is
`keras_mtl.models.cross_stitch_network`."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_mtl.utils.serialization import register_serializable

_GRANULARITIES = ("channel", "layer")


@register_serializable
class CrossStitch(keras.layers.Layer):
    """A cross-stitch unit: learned linear mixing of T task activations.

    Takes the activations x_1, ..., x_T of the same layer in T task
    networks (same shape `(..., C)`) and returns T new activations, each a
    learned linear combination of all of them, at every position:

        x~_i[..., c] = sum_j alpha[c, i, j] * x_j[..., c]    (per channel)
        x~_i         = sum_j alpha[i, j] * x_j               (per layer)

    For two tasks A, B this is the paper's unit
    [x~_A; x~_B] = [[a_AA, a_AB], [a_BA, a_BB]] [x_A; x_B]. The alphas are
    trainable and receive gradients from every task; alpha = identity makes
    the T networks independent, alpha = all 1/T makes them share one
    representation.

    Initialisation follows the paper: alpha_ii = `alpha_self` (0.9) and
    alpha_ij = (1 - alpha_self) / (T - 1) for i != j, so that every row sums
    to 1 (the paper's best setting (0.9, 0.1) for T = 2).

    Args:
        granularity: `"channel"` (default: one T x T matrix per channel of
            the last axis) or `"layer"` (one T x T matrix for the whole
            layer).
        alpha_self: initial weight of each task's own activation, in
            [0, 1]. Default 0.9.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a list of T >= 1 tensors of identical shape `(..., C)`.

    Returns:
        A list of T tensors of the same shape, in the task order of the
        inputs.

    Example:

    >>> from keras_mtl.layers.cross_stitch import CrossStitch
    >>> unit = CrossStitch()
    >>> a, b = unit([np.ones((1, 2), "float32"), np.zeros((1, 2), "float32")])
    >>> keras.ops.convert_to_numpy(a).astype("float64").round(3).tolist()
    [[0.9, 0.9]]
    >>> keras.ops.convert_to_numpy(b).astype("float64").round(3).tolist()
    [[0.1, 0.1]]

    References:
        Ishan Misra, Abhinav Shrivastava, Abhinav Gupta, Martial Hebert.
        "Cross-stitch Networks for Multi-task Learning". CVPR 2016.
        arXiv:1604.03539.

    Note:
        The paper trains the alphas with a learning rate 10^2-10^3 times
        the network's (their magnitude is ~1 while the network's updates
        are small). A Keras optimizer has one learning rate; scale the
        alphas' learning rate with a custom optimizer if needed. Both
        granularities are offered; which one the paper's experiments used
        was not re-checked against its text.
    """

    def __init__(self, granularity="channel", alpha_self=0.9, **kwargs):
        super().__init__(**kwargs)
        if granularity not in _GRANULARITIES:
            raise ValueError(
                f"`granularity` must be one of {_GRANULARITIES}, got {granularity!r}."
            )
        alpha_self = float(alpha_self)
        if not 0.0 <= alpha_self <= 1.0:
            raise ValueError(f"`alpha_self` must be in [0, 1], got {alpha_self!r}.")
        self.granularity = granularity
        self.alpha_self = alpha_self

    def build(self, input_shape):
        shapes = _as_shape_list(input_shape)
        first = tuple(shapes[0])
        for shape in shapes[1:]:
            if len(shape) != len(first) or any(
                a is not None and b is not None and a != b
                for a, b in zip(shape[1:], first[1:])
            ):
                raise ValueError(
                    "CrossStitch needs inputs of identical shapes, got "
                    f"{[tuple(s) for s in shapes]}."
                )
        self.num_tasks = len(shapes)
        channels = first[-1]
        if self.granularity == "channel" and channels is None:
            raise ValueError(
                "CrossStitch(granularity='channel') needs a known last axis, "
                f"got input shapes {[tuple(s) for s in shapes]}."
            )
        shape = (self.num_tasks, self.num_tasks)
        if self.granularity == "channel":
            shape = (channels,) + shape
        self.alpha = self.add_weight(
            shape=shape, initializer=self._initial_alpha, name="alpha"
        )

    def _initial_alpha(self, shape, dtype=None):
        tasks = shape[-1]
        other = (1.0 - self.alpha_self) / (tasks - 1) if tasks > 1 else 0.0
        eye = ops.eye(tasks, dtype=dtype)
        if tasks == 1:
            matrix = eye
        else:
            matrix = self.alpha_self * eye + other * (1.0 - eye)
        return ops.broadcast_to(matrix, shape)

    def call(self, inputs):
        inputs = list(inputs)
        stacked = ops.stack(inputs, axis=-1)  # (..., C, T)
        alpha = ops.cast(self.alpha, stacked.dtype)
        if self.granularity == "channel":
            mixed = ops.einsum("...cj,cij->...ci", stacked, alpha)
        else:
            mixed = ops.einsum("...cj,ij->...ci", stacked, alpha)
        return [mixed[..., task] for task in range(len(inputs))]

    def compute_output_shape(self, input_shape):
        return [tuple(shape) for shape in _as_shape_list(input_shape)]

    def get_config(self):
        config = super().get_config()
        config.update(granularity=self.granularity, alpha_self=self.alpha_self)
        return config


def _as_shape_list(input_shape):
    if (
        isinstance(input_shape, Sequence)
        and input_shape
        and isinstance(input_shape[0], (list, tuple))
    ):
        return [tuple(shape) for shape in input_shape]
    raise ValueError(
        "CrossStitch takes a list of T task activations, got input shape "
        f"{input_shape!r}."
    )
