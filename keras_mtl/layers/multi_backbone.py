"""Multi-backbone feature fusion (MBMT-Net, Ciubotariu and Czibula, 2022)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import keras
from keras import ops

from keras_mtl.utils.serialization import register_serializable

_ALIGN_MODES = ("smallest", "largest")


@register_serializable
class MultiBackbone(keras.layers.Layer):
    """Several backbones on the same input, fused into one feature map.

    The multi-backbone trunk of MBMT-Net: B parallel backbones (typically
    different pretrained networks) read the same image; their feature maps
    are brought to one spatial size and concatenated along the channels,
    and every task head reads the fused map:

        F_b   = backbone_b(preprocess_b(x))             (H_b, W_b, C_b)
        F~_b  = resize(F_b, (H, W))                     bilinear by default
        fused = concat_b F~_b                           (H, W, sum_b C_b)
        out   = conv1x1(fused)  if projection_channels  (H, W, P)

    (H, W) is the smallest (`align="smallest"`, the default) or largest
    (`"largest"`) height and width among the feature maps (per dimension),
    or an explicit `(H, W)`. A map already of size (H, W) is not resized.
    Each backbone can have its own preprocessing (e.g. the normalisation
    its pretrained weights expect) and can be frozen.

    Backbones must map the input to channels-last feature maps
    `(batch, H_b, W_b, C_b)`: for example `keras.applications` models built
    with `include_top=False` (and `pooling=None`), or small custom CNNs.
    Load pretrained weights into a backbone with `load_backbone_weights`
    before passing it.

    A frozen backbone (`backbone_trainable[b] = False`) gets no gradient
    updates and runs its batch normalisations in inference mode (Keras'
    rule for non-trainable layers). Setting `trainable` on the whole
    `MultiBackbone` later overrides the per-backbone flags, as for any Keras
    layer.

    Inside a `keras_mtl.MultiTaskModel` the fused map (or the projection)
    is the shared representation, and all backbones are shared variables.

    Args:
        backbones: a non-empty list of Keras layers or models (each is
            owned by this layer and saved with it).
        preprocessors: None, or a list with one entry per backbone: a Keras
            layer applied to the input before that backbone (e.g.
            `keras.layers.Rescaling` or `keras.layers.Normalization`), or
            None for no preprocessing.
        align: `"smallest"`, `"largest"` or an explicit `(height, width)`.
        interpolation: resize method of `keras.ops.image.resize`
            (`"bilinear"` default, `"nearest"`, `"bicubic"`, ...).
        projection_channels: None (default: output the concatenation), or
            the channels of a 1x1 convolution applied after fusion.
        projection_activation: activation of that projection (default None).
        backbone_trainable: None (keep each backbone's own `trainable`
            flag), or one bool per backbone; False freezes that backbone.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> from keras_mtl.layers.multi_backbone import MultiBackbone
    >>> def cnn(channels, strides):
    ...     return keras.Sequential([
    ...         keras.Input((16, 16, 3)),
    ...         keras.layers.Conv2D(channels, 3, strides=strides,
    ...                             padding="same", activation="relu")])
    >>> trunk = MultiBackbone(
    ...     [cnn(4, 2), cnn(6, 4)],
    ...     preprocessors=[keras.layers.Rescaling(1 / 255), None],
    ...     align="largest",
    ...     backbone_trainable=[True, False],
    ... )
    >>> inputs = keras.Input((16, 16, 3))
    >>> fused = trunk(inputs)
    >>> tuple(fused.shape)
    (None, 8, 8, 10)
    >>> pooled = keras.layers.GlobalAveragePooling2D()(fused)
    >>> model = keras_mtl.MultiTaskModel(
    ...     inputs,
    ...     {"a": keras.layers.Dense(3)(pooled), "b": keras.layers.Dense(1)(pooled)},
    ... )
    >>> len(trunk.trainable_weights)  # the frozen backbone's 2 are left out
    2

    References:
        George Ciubotariu, Gabriela Czibula. "MBMT-Net: A Multi-Task
        Learning Based Convolutional Neural Network Architecture for Dense
        Prediction Tasks". IEEE Access, vol. 10, 2022.
        doi:10.1109/ACCESS.2022.3225746.

    Note:
        The paper fuses by concatenation; resizing to a common size and the
        optional 1x1 projection are this library's way of combining
        backbones whose output strides differ (the paper's exact alignment
        step was not checked against its text).
    """

    def __init__(
        self,
        backbones,
        preprocessors=None,
        align="smallest",
        interpolation="bilinear",
        projection_channels=None,
        projection_activation=None,
        backbone_trainable=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            isinstance(backbones, (str, bytes))
            or not isinstance(backbones, Sequence)
            or not backbones
        ):
            raise ValueError(
                f"`backbones` must be a non-empty list of Keras layers, got "
                f"{backbones!r}."
            )
        for index, backbone in enumerate(backbones):
            if not isinstance(backbone, keras.layers.Layer):
                raise ValueError(
                    f"`backbones[{index}]` must be a Keras layer or model, got "
                    f"{type(backbone).__name__}."
                )
        count = len(backbones)
        if preprocessors is None:
            preprocessors = [None] * count
        preprocessors = list(preprocessors)
        if len(preprocessors) != count:
            raise ValueError(
                f"`preprocessors` must have one entry per backbone ({count}), "
                f"got {len(preprocessors)}."
            )
        for index, layer in enumerate(preprocessors):
            if layer is not None and not isinstance(layer, keras.layers.Layer):
                raise ValueError(
                    f"`preprocessors[{index}]` must be None or a Keras layer, "
                    f"got {type(layer).__name__}."
                )
        self.align = _check_align(align)
        if not isinstance(interpolation, str):
            raise ValueError(
                f"`interpolation` must be a string, got {interpolation!r}."
            )
        self.interpolation = interpolation
        if projection_channels is not None and (
            isinstance(projection_channels, bool)
            or not isinstance(projection_channels, int)
            or projection_channels < 1
        ):
            raise ValueError(
                "`projection_channels` must be None or a positive int, got "
                f"{projection_channels!r}."
            )
        self.projection_channels = projection_channels
        self.projection_activation = projection_activation
        if backbone_trainable is not None:
            backbone_trainable = [bool(flag) for flag in backbone_trainable]
            if len(backbone_trainable) != count:
                raise ValueError(
                    f"`backbone_trainable` must have one bool per backbone "
                    f"({count}), got {len(backbone_trainable)}."
                )
            for backbone, flag in zip(backbones, backbone_trainable):
                backbone.trainable = flag
        self.backbone_trainable = backbone_trainable
        self.backbones = list(backbones)
        # Only real layers are tracked (and saved); the index map keeps the
        # pairing with the backbones.
        self._preprocessor_index = [
            None if layer is None else i for i, layer in enumerate(preprocessors)
        ]
        self.preprocessing_layers = [p for p in preprocessors if p is not None]
        self.projection = None
        if projection_channels is not None:
            self.projection = keras.layers.Conv2D(
                projection_channels,
                1,
                activation=projection_activation,
                dtype=self.dtype_policy,
                name="projection",
            )

    @property
    def preprocessors(self):
        """One preprocessing layer (or None) per backbone."""
        layers = iter(self.preprocessing_layers)
        return [None if i is None else next(layers) for i in self._preprocessor_index]

    def _feature_shapes(self, input_shape):
        shapes = []
        for index, (backbone, pre) in enumerate(
            zip(self.backbones, self.preprocessors)
        ):
            shape = tuple(input_shape)
            if pre is not None:
                if not pre.built:
                    pre.build(shape)
                shape = tuple(pre.compute_output_shape(shape))
            if not backbone.built:
                backbone.build(shape)
            out = backbone.compute_output_shape(shape)
            if isinstance(out, dict) or (
                isinstance(out, (list, tuple)) and out and isinstance(out[0], tuple)
            ):
                raise ValueError(
                    f"Backbone {index} ({backbone.name!r}) has several outputs; "
                    "MultiBackbone needs one feature map per backbone."
                )
            out = tuple(out)
            if len(out) != 4:
                raise ValueError(
                    f"Backbone {index} ({backbone.name!r}) outputs shape {out}; "
                    "MultiBackbone needs channels-last feature maps "
                    "(batch, height, width, channels) (use include_top=False "
                    "and pooling=None for keras.applications models)."
                )
            if out[-1] is None:
                raise ValueError(
                    f"Backbone {index} ({backbone.name!r}) has an unknown "
                    f"number of channels: output shape {out}."
                )
            shapes.append(out)
        return shapes

    def _target_size(self, shapes):
        if not isinstance(self.align, str):
            return tuple(self.align)
        pick = min if self.align == "smallest" else max
        size = []
        for axis in (1, 2):
            values = [shape[axis] for shape in shapes]
            if any(v is None for v in values):
                if len(set(values)) == 1:
                    size.append(None)
                    continue
                raise ValueError(
                    f"align={self.align!r} needs known feature-map sizes, got "
                    f"{shapes}; pass an explicit align=(height, width)."
                )
            size.append(pick(values))
        return tuple(size)

    def build(self, input_shape):
        shapes = self._feature_shapes(input_shape)
        self._target = self._target_size(shapes)
        channels = sum(shape[-1] for shape in shapes)
        if self.projection is not None:
            self.projection.build((input_shape[0],) + self._target + (channels,))

    def call(self, inputs, training=None):
        features = []
        for backbone, pre in zip(self.backbones, self.preprocessors):
            x = inputs if pre is None else pre(inputs)
            feature = backbone(x, training=training)
            size = tuple(feature.shape[1:3])
            if None not in self._target and size != self._target:
                feature = ops.image.resize(
                    feature, self._target, interpolation=self.interpolation
                )
            features.append(feature)
        fused = features[0] if len(features) == 1 else ops.concatenate(features, -1)
        if self.projection is not None:
            fused = self.projection(fused)
        return fused

    def compute_output_shape(self, input_shape):
        shapes = self._feature_shapes(input_shape)
        size = self._target_size(shapes)
        channels = self.projection_channels or sum(s[-1] for s in shapes)
        return (input_shape[0],) + size + (channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            backbones=[keras.saving.serialize_keras_object(b) for b in self.backbones],
            preprocessors=[
                None if p is None else keras.saving.serialize_keras_object(p)
                for p in self.preprocessors
            ],
            align=self.align if isinstance(self.align, str) else list(self.align),
            interpolation=self.interpolation,
            projection_channels=self.projection_channels,
            projection_activation=keras.activations.serialize(
                keras.activations.get(self.projection_activation)
            )
            if self.projection_activation is not None
            else None,
            backbone_trainable=self.backbone_trainable,
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Keras' deserialization consumes nested configs: work on a copy.
        config = copy.deepcopy(config)
        config["backbones"] = [
            keras.saving.deserialize_keras_object(b) for b in config["backbones"]
        ]
        if config.get("preprocessors") is not None:
            config["preprocessors"] = [
                None if p is None else keras.saving.deserialize_keras_object(p)
                for p in config["preprocessors"]
            ]
        return cls(**config)


def _check_align(align):
    if isinstance(align, str):
        if align not in _ALIGN_MODES:
            raise ValueError(
                f"`align` must be one of {_ALIGN_MODES} or (height, width), "
                f"got {align!r}."
            )
        return align
    if (
        isinstance(align, Sequence)
        and len(align) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in align)
    ):
        return tuple(align)
    raise ValueError(
        f"`align` must be one of {_ALIGN_MODES} or (height, width) of positive "
        f"ints, got {align!r}."
    )


def load_backbone_weights(backbone, weights_path, by_name=False, skip_mismatch=False):
    """Loads pretrained weights from a local file into a backbone.

    For weights the user already has on disk (this library downloads
    nothing): build the backbone with `weights=None`, then load the file.
    Accepted files are those of `keras.Model.load_weights`:
    `*.weights.h5` (Keras 3 `save_weights`), `*.keras` (a saved model of
    the same architecture), and legacy `*.h5` / `*.hdf5` weight files such
    as the `*_no_top*.h5` files of `keras.applications` (matched by layer
    order, or by layer name with `by_name=True`).

    Args:
        backbone: the Keras model to load into (built, same architecture).
        weights_path: path of the local weights file.
        by_name: legacy `.h5` only: match layers by name instead of order.
        skip_mismatch: skip layers whose weights do not match in shape.

    Returns:
        The backbone, for chaining.

    Raises:
        FileNotFoundError: if `weights_path` is not a file.
        ValueError: if the file type is not one of the above.
    """
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No weights file at {path!r}: load_backbone_weights reads a local "
            "file (nothing is downloaded)."
        )
    kwargs = {"skip_mismatch": skip_mismatch}
    if path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5"):
        kwargs["by_name"] = bool(by_name)
    elif by_name:
        raise ValueError(
            f"`by_name=True` only applies to legacy .h5 files, got {path!r}."
        )
    elif not path.endswith((".weights.h5", ".keras")):
        raise ValueError(
            f"Unsupported weights file {path!r}: expected *.weights.h5, "
            "*.keras, or a legacy *.h5 / *.hdf5 file."
        )
    backbone.load_weights(path, **kwargs)
    return backbone
