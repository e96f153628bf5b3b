"""Base class of strategies that combine task losses into one objective."""

from __future__ import annotations

from typing import ClassVar

from keras import ops

from keras_mtl.weighting.strategy import Strategy


class LossWeighting(Strategy):
    """A strategy that turns the T task losses into one scalar objective.

    The model differentiates the returned objective once (one backward
    pass), so these strategies cost about as much as plain summation.

    Subclasses implement one of two methods:

    - `compute_weights(losses, training)` returning `(T,)` weights w; the
      objective is then `sum_t stop_gradient(w_t) * L_t` (the weights are
      constants for the model update, as in the papers of DWA, SLAW, RLW).
    - `call(losses, training)` returning `(objective, weights)` directly,
      for strategies whose objective is not a weighted sum with constant
      weights (uncertainty weighting adds a regulariser and learns its
      weights through the objective; LogSE sums log-losses). `weights` is
      then the effective weight of each task's loss gradient, reported in
      the training logs as `<task>_weight`.

    State changes (`assign`) happen only when `training` is True, so that
    calling a strategy outside training leaves it untouched.

    Example:

    >>> import keras_mtl
    >>> strategy = keras_mtl.weighting.get("ew")
    >>> total, weights = strategy(keras.ops.convert_to_tensor([1.0, 2.0]))
    >>> float(total), keras.ops.convert_to_numpy(weights).tolist()
    (3.0, [1.0, 1.0])
    """

    requires: ClassVar[str] = "losses"

    def compute_weights(self, losses, training=True, task_mask=None):
        """Returns the `(T,)` task weights for these `(T,)` losses.

        `task_mask` (see `Strategy`) is passed only by models compiled with
        `missing_labels`; only strategies with `supports_missing_tasks`
        receive it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_weights() or call()."
        )

    def call(self, losses, training=True, task_mask=None):
        """Combines `(T,)` task losses.

        Args:
            losses: float tensor of shape `(T,)`, the task losses.
            training: whether to update the strategy's state.
            task_mask: None, or `(T,)` floats, 1.0 for the tasks with
                labelled samples in this step (see `Strategy`).

        Returns:
            A tuple `(objective, weights)`: the scalar to differentiate and
            the `(T,)` effective task weights.
        """
        self._check_num_tasks(losses)
        if task_mask is None:
            weights = self.compute_weights(losses, training=training)
        else:
            weights = self.compute_weights(
                losses, training=training, task_mask=task_mask
            )
            weights = ops.cast(weights, losses.dtype) * task_mask
        weights = ops.stop_gradient(ops.cast(weights, losses.dtype))
        return ops.sum(weights * losses), weights
