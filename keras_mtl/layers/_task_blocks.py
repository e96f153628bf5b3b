"""Private base of `FoldTasks` and `UnfoldTasks`."""

from __future__ import annotations

import numpy as np
from keras import layers


class TaskBlocks(layers.Layer):
    """A layer between a batch and its T task blocks.

    Stores and validates `num_tasks`, serializes it, and maps a Keras mask
    through the same `_blocks` as the inputs. Subclasses implement
    `_blocks(x)` and `compute_output_shape`.
    """

    def __init__(self, num_tasks, **kwargs):
        super().__init__(**kwargs)
        if (
            isinstance(num_tasks, bool)
            or not isinstance(num_tasks, int | np.integer)
            or num_tasks < 1
        ):
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}.")
        self.num_tasks = int(num_tasks)
        self.supports_masking = True

    def _blocks(self, x):
        raise NotImplementedError

    def call(self, inputs):
        return self._blocks(inputs)

    def compute_mask(self, inputs, mask=None):
        if mask is None:
            return None
        return self._blocks(mask)

    def get_config(self):
        config = super().get_config()
        config.update(num_tasks=self.num_tasks)
        return config
