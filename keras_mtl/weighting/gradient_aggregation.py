"""Base class of strategies that combine per-task gradients."""

from __future__ import annotations

from typing import ClassVar

from keras import ops

from keras_mtl.weighting.strategy import Strategy


class GradientAggregation(Strategy):
    """A strategy that combines per-task gradients into one update.

    Notation: T tasks, P shared parameters, G the `(T, P)` matrix whose row
    t is g_t, the gradient of task loss L_t with respect to the shared
    variables (flattened and concatenated), and G G^T the `(T, T)` Gramian.

    Each training step the model computes G (T backward passes through the
    shared trunk), hands it to the strategy, and applies the returned `(P,)`
    update to the shared variables; each task's own variables receive that
    task's own gradient, unscaled. The strategy may also be used standalone
    on any `(T, P)` matrix through `aggregate(grads, losses)`.

    Subclasses implement one of two methods:

    - `compute_weights(gramian, losses, training)` for methods whose update
      is a linear combination `d = sum_t w_t g_t` with weights that depend
      only on the Gramian (MGDA, Nash-MTL, IMTL-G, UPGrad, ...). The base
      class forms the Gramian and the combination. Set `requires =
      "gramian"` for these.
    - `call(grads, losses, training)` returning `(update, weights)` for
      methods that need the gradients themselves (PCGrad, GradDrop, ...).
      `weights` are the `(T,)` effective or nominal task weights for the
      logs (document which).

    Args:
        rep_grad: if True, the model hands the strategy gradients with
            respect to the shared representation (one row per task, the
            representation flattened over the batch) instead of the shared
            parameters, and back-propagates the combined cotangent through
            the trunk once (the "UB" variants). Only for methods with
            `supports_rep_grad = True`; others raise `ValueError`.
        **kwargs: passed to `Strategy` (`name`, `dtype`).

    Several mini-batches per step: a subclass with `batches_per_step = k`
    (MoDo, SDMGrad) receives `grads` of shape `(k, T, P)`, the per-task
    gradients on k independent sub-batches of the step's batch (the model
    splits each batch of `fit` into k consecutive parts), and `losses` of
    shape `(k, T)`. Given a single `(T, P)` matrix (standalone use,
    `aggregate`), such a strategy uses it for every one of the k batches.

    `update` is a descent direction to be *subtracted* by the optimizer,
    with the scale of a sum of task gradients (equal weighting returns the
    sum of the rows).
    """

    requires: ClassVar[str] = "gradients"
    #: Whether the method may be applied to gradients with respect to the
    #: shared representation instead of the shared parameters ("UB" variants).
    supports_rep_grad: ClassVar[bool] = False

    def __init__(self, rep_grad: bool = False, **kwargs):
        super().__init__(**kwargs)
        if rep_grad and not self.supports_rep_grad:
            raise ValueError(
                f"{type(self).__name__} does not support rep_grad=True: the "
                "method is defined on gradients of the shared parameters."
            )
        self.rep_grad = bool(rep_grad)

    def get_config(self):
        config = super().get_config()
        config["rep_grad"] = self.rep_grad
        return config

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        """Returns `(T,)` weights from the `(T, T)` Gramian.

        `task_mask` (see `Strategy`) is passed only by models compiled with
        `missing_labels`; only strategies with `supports_missing_tasks`
        receive it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_weights() or call()."
        )

    def call(self, grads, losses=None, training=True, task_mask=None):
        """Combines the `(T, P)` per-task gradients.

        Args:
            grads: float tensor `(T, P)`.
            losses: optional float tensor `(T,)` of the task losses.
            training: whether to update the strategy's state.
            task_mask: None, or `(T,)` floats, 1.0 for the tasks with
                labelled samples in this step (see `Strategy`); the rows of
                absent tasks are zero.

        Returns:
            A tuple `(update, weights)` of shapes `(P,)` and `(T,)`.
        """
        self._check_num_tasks(grads, "gradients")
        gramian = ops.matmul(grads, ops.transpose(grads))
        if task_mask is None:
            weights = self.compute_weights(gramian, losses, training=training)
        else:
            weights = self.compute_weights(
                gramian, losses, training=training, task_mask=task_mask
            )
            weights = ops.cast(weights, grads.dtype) * ops.cast(task_mask, grads.dtype)
        weights = ops.cast(weights, grads.dtype)
        return ops.matmul(weights[None, :], grads)[0], weights

    def transform_losses(self, losses, task_mask=None):
        """The task losses whose per-task gradients the model computes.

        Called by the model inside its gradient tape on the `(T,)` task
        losses. The default is the identity. A strategy with trainable
        variables (IMTL's loss scales) returns a transformation of the
        losses; the model then trains those variables with the gradient of
        the sum of the transformed losses, while `call` still receives the
        untransformed losses. `task_mask` is passed as to `call` (only to
        strategies with `supports_missing_tasks`): an absent task's term
        should then be 0, so that its variables get no gradient. It must be
        elementwise: transformed loss t may depend on loss t only (the model
        takes task t's gradient through loss t alone).
        """
        del task_mask
        return losses

    def head_gradient_scales(self, losses, weights):
        """Multipliers of each task's gradient on its own (head) variables.

        The model scales task t's gradient on the variables only task t
        uses by the t-th entry. The default, ones, is LibMTL's convention
        for gradient methods: each head receives its own task's gradient,
        unscaled. Methods whose reference code back-propagates a transformed
        or weighted loss through the heads override this (DB-MTL: the
        gradient of log L_t; ExcessMTL: w_t).

        Args:
            losses: `(T,)` task losses of the step.
            weights: the `(T,)` weights returned by `call` in this step.

        Returns:
            A `(T,)` tensor.
        """
        return ops.ones_like(losses)

    def aggregate(self, grads, losses=None):
        """Returns the `(P,)` update for a `(T, P)` gradient matrix.

        Works eagerly and standalone, without a model: the strategy is built
        for T tasks on first use. A strategy with `batches_per_step = k > 1`
        also takes the `(k, T, P)` gradients of k batches. Stateful strategies update
        their state as in a training step.
        """
        grads = ops.convert_to_tensor(grads, dtype=self.compute_dtype)
        batches = self.batches_per_step
        if len(grads.shape) != 2 and not (
            batches > 1 and len(grads.shape) == 3 and grads.shape[0] == batches
        ):
            expected = "a (T, P) matrix" + (
                f" or a ({batches}, T, P) stack" if batches > 1 else ""
            )
            raise ValueError(
                f"aggregate() expects {expected} of per-task gradients, got "
                f"shape {tuple(grads.shape)}."
            )
        if losses is not None:
            losses = ops.convert_to_tensor(losses, dtype=self.compute_dtype)
        update, _ = self(grads, losses, training=True)
        return update
