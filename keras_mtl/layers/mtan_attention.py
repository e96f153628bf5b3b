"""MTAN task-specific attention module (Liu, Johns and Davison, CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_mtl.utils.serialization import register_serializable


@register_serializable
class MTANAttention(keras.layers.Layer):
    """The task-specific soft-attention module of MTAN.

    In MTAN (Multi-Task Attention Network) a single shared network is
    trained for all tasks, and each task owns, at every block j, a small
    attention module that selects the features it needs from the shared
    block. With u_j the shared block's first (intermediate) feature, p_j
    its output feature (both channels-last, same spatial size) and a_{j-1}
    the task's attended feature of the previous block, this layer computes

        z_j    = [u_j ; a_{j-1}]          (channel concatenation; u_j alone
                                           at the first block)
        mask_j = sigmoid(BN(conv1x1(relu(BN(conv1x1(z_j))))))  in (0, 1)
        a_j    = mask_j * p_j             (element-wise)

    i.e. the paper's g_j (two 1x1 convolutions with batch norm, ReLU and a
    sigmoid) and the element-wise product with the shared feature. The mask
    has the channels of p_j; the hidden 1x1 convolution has
    `intermediate_channels` (default: the channels of p_j, as in the
    authors' SegNet MTAN). A 1x1 convolution is a dense map of the channel
    axis, so the layer works on any rank `(batch, ..., channels)`: images,
    sequences or vectors. The convolutions have no bias: the batch
    normalisation after each one cancels it (the authors' code keeps a bias
    that then receives no gradient).

    Block structure, this layer versus the paper's SegNet MTAN encoder:
    the paper (and its official code) passes a_j through a 3x3
    conv-BN-ReLU f_j that is SHARED by all tasks' attention branches, then
    2x2 max pooling, to give a_{j-1} of the next block at the next
    resolution. f_j and the pooling are not part of this layer: apply one
    shared `keras.layers.Conv2D`/`BatchNormalization`/`ReLU` and a
    `MaxPooling2D` to every task's output, as in the example, and pass the
    result as the third input of the next block's `MTANAttention`. The
    decoder's attention modules of the paper (which upsample instead) are
    built the same way. `a_{j-1}` must have the spatial size of u_j.

    Args:
        intermediate_channels: channels of the hidden 1x1 convolution.
            None (default) uses the channels of the shared feature p_j.
        epsilon: batch-norm epsilon (default 1e-5, PyTorch's, as in the
            authors' code).
        momentum: batch-norm momentum of the moving statistics in Keras'
            convention (default 0.9, i.e. PyTorch's 0.1).
        kernel_initializer: initializer of the 1x1 convolutions (the
            authors use Xavier normal, `"glorot_normal"`).
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[u_j, p_j]` or `[u_j, p_j, a_prev]`.
        training: passed to the batch normalisations.

    Returns:
        The attended feature a_j, with the shape of p_j.

    Example:

    >>> from keras_mtl.layers.mtan_attention import MTANAttention
    >>> x = keras.Input((8, 8, 3))
    >>> # shared network: two blocks of (first conv u_j, second conv p_j)
    >>> u0 = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    >>> p0 = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(u0)
    >>> u1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(
    ...     keras.layers.MaxPooling2D()(p0))
    >>> p1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(u1)
    >>> f0 = keras.layers.Conv2D(8, 3, padding="same", activation="relu")
    >>> outputs = {}
    >>> for task, units in [("seg", 5), ("depth", 1)]:
    ...     a0 = MTANAttention(name=f"{task}_att0")([u0, p0])
    ...     a0 = keras.layers.MaxPooling2D()(f0(a0))  # shared f_0, then pool
    ...     a1 = MTANAttention(name=f"{task}_att1")([u1, p1, a0])
    ...     outputs[task] = keras.layers.Conv2D(units, 1)(a1)
    >>> model = keras_mtl.MultiTaskModel(x, outputs)
    >>> tuple(outputs["seg"].shape)
    (None, 4, 4, 5)

    References:
        Shikun Liu, Edward Johns, Andrew J. Davison. "End-to-End Multi-Task
        Learning with Attention". CVPR 2019. arXiv:1803.10704. Official
        code: https://github.com/lorenmt/mtan (`model_segnet_mtan.py`).
    """

    def __init__(
        self,
        intermediate_channels=None,
        epsilon=1e-5,
        momentum=0.9,
        kernel_initializer="glorot_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if intermediate_channels is not None and (
            isinstance(intermediate_channels, bool)
            or not isinstance(intermediate_channels, int)
            or intermediate_channels < 1
        ):
            raise ValueError(
                "`intermediate_channels` must be None or a positive int, got "
                f"{intermediate_channels!r}."
            )
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be positive, got {epsilon!r}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}.")
        self.intermediate_channels = intermediate_channels
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        shapes = _check_shapes(input_shape)
        feature_channels = shapes[1][-1]
        hidden = self.intermediate_channels or feature_channels
        gate_shape = tuple(shapes[0][:-1]) + (
            sum(shape[-1] for shape in shapes[:1] + shapes[2:]),
        )
        self.hidden_conv = keras.layers.Dense(
            hidden,
            use_bias=False,
            kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy,
            name="hidden_conv1x1",
        )
        self.hidden_norm = keras.layers.BatchNormalization(
            epsilon=self.epsilon,
            momentum=self.momentum,
            dtype=self.dtype_policy,
            name="hidden_bn",
        )
        self.mask_conv = keras.layers.Dense(
            feature_channels,
            use_bias=False,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="mask_conv1x1",
        )
        self.mask_norm = keras.layers.BatchNormalization(
            epsilon=self.epsilon,
            momentum=self.momentum,
            dtype=self.dtype_policy,
            name="mask_bn",
        )
        self.hidden_conv.build(gate_shape)
        hidden_shape = gate_shape[:-1] + (hidden,)
        self.hidden_norm.build(hidden_shape)
        self.mask_conv.build(hidden_shape)
        self.mask_norm.build(tuple(shapes[1]))

    def attention_mask(self, inputs, training=False):
        """The mask `mask_j` in (0, 1), with the shape of p_j."""
        inputs = list(inputs)
        if not self.built:
            self.build([tuple(x.shape) for x in inputs])
        gate_input = inputs[0]
        if len(inputs) == 3:
            gate_input = ops.concatenate([inputs[0], inputs[2]], axis=-1)
        hidden = self.hidden_norm(self.hidden_conv(gate_input), training=training)
        hidden = ops.relu(hidden)
        logits = self.mask_norm(self.mask_conv(hidden), training=training)
        return ops.sigmoid(logits)

    def call(self, inputs, training=None):
        inputs = list(inputs)
        return self.attention_mask(inputs, training=training) * inputs[1]

    def compute_output_shape(self, input_shape):
        return tuple(_check_shapes(input_shape)[1])

    def get_config(self):
        config = super().get_config()
        config.update(
            intermediate_channels=self.intermediate_channels,
            epsilon=self.epsilon,
            momentum=self.momentum,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


def _check_shapes(input_shape):
    if not (
        isinstance(input_shape, Sequence)
        and len(input_shape) in (2, 3)
        and all(isinstance(shape, (list, tuple)) for shape in input_shape)
    ):
        raise ValueError(
            "MTANAttention takes [shared_intermediate, shared_output] or "
            "[shared_intermediate, shared_output, previous_attention], got "
            f"input shape {input_shape!r}."
        )
    shapes = [tuple(shape) for shape in input_shape]
    spatial = shapes[1][1:-1]
    for index, shape in enumerate(shapes):
        if shape[-1] is None:
            raise ValueError(
                f"MTANAttention needs known channel axes, got input shapes {shapes}."
            )
        if len(shape) != len(shapes[1]) or any(
            a is not None and b is not None and a != b
            for a, b in zip(shape[1:-1], spatial)
        ):
            raise ValueError(
                "MTANAttention needs inputs of the same spatial size (pool or "
                f"resize the previous attention first), got shapes {shapes} "
                f"(input {index} differs)."
            )
    return shapes
