"""`StackedBiRNN`: bidirectional RNN layers that expose every depth."""

from __future__ import annotations

import numpy as np
from keras import layers

from keras_mtl.utils.serialization import register_serializable

_CELLS = {"lstm": layers.LSTM, "gru": layers.GRU}
_MERGE_MODES = ("concat", "sum", "ave", "mul")


@register_serializable
class StackedBiRNN(layers.Layer):
    """A stack of bidirectional LSTM/GRU layers returning every layer's output.

    Layer l reads the per-token output of layer l - 1 (layer 1 reads the
    input sequence, e.g. word embeddings) and runs a forward and a backward
    RNN over it:

        h^1 = BiRNN_1(x),   h^l = BiRNN_l(h^(l-1))   (l = 2..num_layers)
        BiRNN(s)_i = merge(fwd(s)_i, bwd(s)_i)       per token i

    The layer returns the list `[h^1, ..., h^L]`, each `(B, N, D_out)` for
    input `(B, N, D)` with `D_out = 2 * units` (`merge_mode="concat"`) or
    `units`, so task heads can be attached at any depth (Søgaard & Goldberg:
    low-level tasks at lower layers). A head reading h^l depends only on
    layers 1..l: its loss gives layers above l zero gradient
    (`output_variables(l - 1)` lists the variables it depends on).

    There is no embedding inside: put an `Embedding` (with `mask_zero=True`
    for padded sequences) before it. The layer follows Keras masks: padded
    steps are skipped by every RNN, and every output carries the input's
    mask, so per-token heads and losses see it.

    Args:
        num_layers: L, the number of bidirectional layers (int >= 1).
        units: hidden size of each direction's RNN (int >= 1).
        cell: `"lstm"` (default, as in the paper) or `"gru"`.
        dropout: dropout rate on the inputs of every RNN, in [0, 1).
        recurrent_dropout: dropout rate on the recurrent state, in [0, 1).
        merge_mode: how the two directions are combined: `"concat"`
            (default), `"sum"`, `"ave"` or `"mul"`.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> from keras_mtl.layers.stacked_birnn import StackedBiRNN
    >>> tokens = keras.Input((None,), dtype="int32")
    >>> embedded = keras.layers.Embedding(50, 8, mask_zero=True)(tokens)
    >>> depths = StackedBiRNN(num_layers=3, units=4)(embedded)
    >>> [tuple(h.shape) for h in depths]
    [(None, None, 8), (None, None, 8), (None, None, 8)]

    References:
        Anders Søgaard, Yoav Goldberg. "Deep multi-task learning with low
        level tasks supervised at lower layers". ACL 2016 (short papers),
        pp. 231-235. doi:10.18653/v1/P16-2038.
    """

    def __init__(
        self,
        num_layers,
        units,
        cell="lstm",
        dropout=0.0,
        recurrent_dropout=0.0,
        merge_mode="concat",
        **kwargs,
    ):
        super().__init__(**kwargs)
        for what, value in (("num_layers", num_layers), ("units", units)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | np.integer)
                or value < 1
            ):
                raise ValueError(f"{what} must be an int >= 1, got {value!r}.")
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}.")
        for what, value in (
            ("dropout", dropout),
            ("recurrent_dropout", recurrent_dropout),
        ):
            if isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{what} must be in [0, 1), got {value!r}.")
        if merge_mode not in _MERGE_MODES:
            raise ValueError(
                f"merge_mode must be one of {_MERGE_MODES}, got {merge_mode!r}."
            )
        self.num_layers = int(num_layers)
        self.units = int(units)
        self.cell = cell
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.merge_mode = merge_mode
        self.supports_masking = True
        rnn = _CELLS[cell]
        self.rnn_layers = [
            layers.Bidirectional(
                rnn(
                    self.units,
                    return_sequences=True,
                    dropout=self.dropout,
                    recurrent_dropout=self.recurrent_dropout,
                    dtype=self.dtype_policy,
                    name=f"{cell}_{index + 1}",
                ),
                merge_mode=merge_mode,
                dtype=self.dtype_policy,
                name=f"bidirectional_{index + 1}",
            )
            for index in range(self.num_layers)
        ]

    @property
    def output_units(self) -> int:
        """Features per token of every output."""
        return 2 * self.units if self.merge_mode == "concat" else self.units

    def build(self, input_shape):
        shape = tuple(input_shape)
        for rnn in self.rnn_layers:
            rnn.build(shape)
            shape = shape[:-1] + (self.output_units,)
        super().build(input_shape)

    def output_variables(self, output_index: int) -> list:
        """The trainable variables output `output_index` (0-based) depends on.

        Output l (depth l + 1) depends on RNN layers 1..l + 1 only;
        `attach_heads` uses this to tell which variables a head at a given
        depth trains.
        """
        if isinstance(output_index, bool) or not isinstance(output_index, int):
            raise ValueError(f"output_index must be an int, got {output_index!r}.")
        if not -self.num_layers <= output_index < self.num_layers:
            raise ValueError(
                f"output_index must be in [0, {self.num_layers}), got {output_index}."
            )
        depth = output_index % self.num_layers + 1
        return [v for rnn in self.rnn_layers[:depth] for v in rnn.trainable_variables]

    def call(self, inputs, mask=None, training=None):
        outputs, hidden = [], inputs
        for rnn in self.rnn_layers:
            hidden = rnn(hidden, mask=mask, training=training)
            outputs.append(hidden)
        return outputs

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        return [mask for _ in range(self.num_layers)]

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)[:-1] + (self.output_units,)
        return [shape for _ in range(self.num_layers)]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_layers=self.num_layers,
            units=self.units,
            cell=self.cell,
            dropout=self.dropout,
            recurrent_dropout=self.recurrent_dropout,
            merge_mode=self.merge_mode,
        )
        return config
