"""The auxiliary module: training-only soft sharing for hard-sharing nets."""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.utils.serialization import register_serializable


@register_serializable
class AuxiliaryModule(keras.layers.Layer):
    """Task-specific branches over the shared layers, used only in training.

    Liu et al. regularise a hard-sharing multi-task network with an
    auxiliary module that imitates soft parameter sharing: for every task a
    branch reads the outputs of the shared hidden layers h_1..h_K, level by
    level, and each branch also sees the other tasks' branches of the level
    below (connected across tasks, in the spirit of cross-stitch units). The
    branches are supervised by the task losses through auxiliary heads, and
    their gradients reach the shared layers, which is the regularising
    effect. At test time the module is removed: the inference cost is that
    of the plain hard-sharing network.

    For task t and level k (a_t^0 is empty):

        a_t^k = f_t^k( concat( h_k, a_t^{k-1}, [a_s^{k-1} for s != t] ) )

    where the cross-task inputs a_s^{k-1} are present when
    `cross_connect=True`, and f_t^k is a Dense layer (vector taps) or a 3x3
    Conv2D (feature-map taps) with `units[k]` units and a ReLU. Feature maps
    of different sizes are resized (bilinear) to the size of the last tap.
    The layer returns the T top-level features [a_1^K, ..., a_T^K]; an
    auxiliary head per task maps them to the task's output.

    Use it through `keras_mtl.models.add_auxiliary_module`, which wires the
    taps, the branches and the auxiliary heads into a `MultiTaskModel` whose
    `inference_model()` drops them again.

    Args:
        num_tasks: the number of tasks T (one branch each).
        units: units (or filters) per level: an int for every level or a
            list with one entry per tap.
        cross_connect: whether each branch reads the other tasks' branch
            outputs of the level below.
        pooling: `"none"` keeps feature maps spatial; `"global"` averages
            spatial taps over their spatial axes first (dense branches).

    Example:

    >>> taps = [keras.Input((16,)), keras.Input((8,))]
    >>> features = keras_mtl.layers.AuxiliaryModule(num_tasks=2, units=4)(taps)
    >>> [tuple(f.shape) for f in features]
    [(None, 4), (None, 4)]

    References:
        Y. Liu, B. Zhuang, C. Shen, H. Chen, W. Yin. "Auxiliary Learning for
        Deep Multi-task Learning." arXiv 1909.02214 (v2), 2019. (Version 1:
        "Training Compact Neural Networks via Auxiliary
        Overparameterization".)

    Note:
        The paper's exact branch connectivity and its lambda_aux could not
        be verified from the text available here; this layer implements the
        level-by-level, cross-connected branches described above, and
        `aux_weight` (default 1) of the builder is lambda_aux.
    """

    def __init__(
        self, num_tasks, units=64, cross_connect=True, pooling="none", **kwargs
    ):
        super().__init__(**kwargs)
        if int(num_tasks) < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
        if pooling not in ("none", "global"):
            raise ValueError(f"pooling must be 'none' or 'global', got {pooling!r}.")
        units_list = [units] if isinstance(units, int) else list(units)
        if not units_list or any(int(u) < 1 for u in units_list):
            raise ValueError(f"units must be positive, got {units!r}.")
        self.num_tasks = int(num_tasks)
        self.units = units if isinstance(units, int) else [int(u) for u in units]
        self.cross_connect = bool(cross_connect)
        self.pooling = pooling
        self.branches = []

    def _units_for(self, level, num_levels):
        if isinstance(self.units, int):
            return self.units
        if len(self.units) != num_levels:
            raise ValueError(
                f"AuxiliaryModule got {len(self.units)} units for {num_levels} taps."
            )
        return self.units[level]

    def _prepared_rank(self, shape):
        rank = len(shape)
        if self.pooling == "global" and rank > 2:
            return 2
        if rank not in (2, 4):
            raise ValueError(
                "AuxiliaryModule taps must be vectors (batch, features) or "
                f"channels-last feature maps (batch, H, W, C), got shape {shape}; "
                'use pooling="global" for other ranks.'
            )
        return rank

    def build(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        ranks = {self._prepared_rank(s) for s in shapes}
        if len(ranks) != 1:
            raise ValueError(
                "AuxiliaryModule taps mix vectors and feature maps "
                f"({shapes}); pass pooling='global' to average the maps."
            )
        self._rank = ranks.pop()
        self.branches = []
        for level, shape in enumerate(shapes):
            width = self._units_for(level, len(shapes))
            previous = 0 if level == 0 else self._units_for(level - 1, len(shapes))
            fan_in = shape[-1] + previous * (
                self.num_tasks if self.cross_connect else 1
            )
            level_branches = []
            for task in range(self.num_tasks):
                if self._rank == 2:
                    branch = keras.layers.Dense(
                        width, activation="relu", name=f"aux_l{level}_t{task}"
                    )
                    branch.build((None, fan_in))
                else:
                    branch = keras.layers.Conv2D(
                        width,
                        3,
                        padding="same",
                        activation="relu",
                        name=f"aux_l{level}_t{task}",
                    )
                    branch.build((None, None, None, fan_in))
                level_branches.append(branch)
            self.branches.append(level_branches)

    def _prepare(self, tap, size):
        if self._rank == 2 and len(tap.shape) > 2:
            return ops.mean(tap, axis=tuple(range(1, len(tap.shape) - 1)))
        if self._rank == 4 and size is not None:
            if tuple(tap.shape[1:3]) == tuple(size):
                return tap  # already the target size: resizing would only cost
            return ops.image.resize(tap, size, interpolation="bilinear")
        return tap

    def call(self, taps):
        taps = list(taps)
        size = None
        if self._rank == 4:
            size = tuple(int(d) for d in taps[-1].shape[1:3])
        previous = None
        for level, tap in enumerate(taps):
            tap = self._prepare(tap, size)
            current = []
            for task in range(self.num_tasks):
                parts = [tap]
                if previous is not None:
                    parts.append(previous[task])
                    if self.cross_connect:
                        parts.extend(p for s, p in enumerate(previous) if s != task)
                features = parts[0] if len(parts) == 1 else ops.concatenate(parts, -1)
                current.append(self.branches[level][task](features))
            previous = current
        return previous

    def compute_output_shape(self, input_shape):
        shapes = [tuple(s) for s in input_shape]
        width = self._units_for(len(shapes) - 1, len(shapes))
        last = shapes[-1]
        rank = self._prepared_rank(last)
        shape = (last[0], width) if rank == 2 else (*last[:3], width)
        return [shape] * self.num_tasks

    def get_config(self):
        config = super().get_config()
        config.update(
            num_tasks=self.num_tasks,
            units=self.units,
            cross_connect=self.cross_connect,
            pooling=self.pooling,
        )
        return config
