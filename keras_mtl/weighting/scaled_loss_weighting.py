"""SLW: scaled loss weighting, the exact weights SLAW approximates."""

from __future__ import annotations

import math

from keras import ops

from keras_mtl.weighting._task_state_ops import present_or_all
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

_GRADIENTS_OF = ("last_layer", "all")


@register_strategy("slw", "scaled_loss_weighting")
class ScaledLossWeighting(LossWeighting):
    """Weights each task by the inverse norm of its shared-layer gradient.

    Notation: T tasks, L_t the current batch loss of task t, n_t =
    ||grad_W L_t|| the norm of its gradient with respect to the variables W
    of the last shared layer (the per-task gradients the model passes as
    `shared_grads`), eps = 1e-5. Every training step:

        w_t = T * (1 / max(n_t, eps)) / sum_j (1 / max(n_j, eps)),

    and the objective is sum_t w_t L_t with w constant (no gradient flows
    through the weights). The weights sum to T, and whenever every n_t >=
    eps the weighted gradients have equal norms,

        w_t n_t = T / sum_j (1 / n_j)   for every t,

    so no task dominates the shared layer by the scale of its loss. This is
    the "ideal" weighting that SLAW (`keras_mtl.weighting.SLAW`) estimates
    from loss statistics without the T extra backward passes.

    On regression tasks y_t = sigma_t * f_t(x) (the MTRegression toy), once
    each head has learned the output scale sigma_t, a task's residual and
    its head weights both scale with sigma_t, so n_t ~ sigma_t^2 and the
    weights approach w_t ~ 1 / sigma_t^2 (normalised to sum to T), the
    target weights of the SLAW paper. Early in training, before the heads
    have scaled up, n_t ~ sigma_t and w_t ~ 1 / sigma_t.

    Defaults from the authors' code (mtcrawshaw/meta, branch slaw, class
    `SLW`, earlier `CLW`, in `meta/train/loss.py`): the gradient of the
    last shared layer's parameters (`network.last_shared_params()`), eps =
    1e-5 (`EPSILON`), weights normalised to the initial total weight (T).

    Missing tasks: with a `task_mask` (see `Strategy`) an absent task, whose
    gradient row is zero, gets weight 0 and is left out of the
    normalisation; the K present tasks get the weights of SLW on them
    alone, summing to K:

        w_t = K * (1 / max(n_t, eps)) / sum_{j present} (1 / max(n_j, eps)).

    Properties: stateless; needs per-task gradients of the last shared
    layer (T extra backward passes through it only); adapts to rescaling
    a task's loss: multiplying L_t by c > 0 divides w_t by c relative to
    the other weights, so the weighted gradients keep equal norms (while
    every n_t >= eps).

    Args:
        gradients_of: `"last_layer"` (default, the authors' choice) or
            `"all"` (every shared variable); sets the instance's
            `shared_gradients`, which tells the model which per-task
            gradients to pass.
        epsilon: floor of the gradient norms, > 0. Default 1e-5.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.scaled_loss_weighting import ScaledLossWeighting
    >>> slw = ScaledLossWeighting()
    >>> grads = keras.ops.convert_to_tensor([[3.0, 4.0], [0.0, 1.0]])
    >>> _, w = slw(keras.ops.convert_to_tensor([1.0, 1.0]), shared_grads=grads)
    >>> [round(float(x), 3) for x in w]  # norms 5 and 1
    [0.333, 1.667]

    References:
        Michael Crawshaw, Jana Kosecka. "SLAW: Scaled Loss Approximate
        Weighting for Efficient Multi-Task Learning". arXiv:2109.08218,
        2021 (SLW is the exact method of Section 3). Code:
        https://github.com/mtcrawshaw/meta (branch slaw).

    Note:
        Non-finite gradient norms give unit weights for the step (the model
        skips such steps anyway). With every norm below eps all weights are
        1.
    """

    supports_missing_tasks = True

    def __init__(self, gradients_of="last_layer", epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        if gradients_of not in _GRADIENTS_OF:
            raise ValueError(
                "ScaledLossWeighting `gradients_of` must be one of "
                f"{_GRADIENTS_OF}, got {gradients_of!r}."
            )
        try:
            epsilon = float(epsilon)
        except (TypeError, ValueError):
            raise ValueError(
                f"ScaledLossWeighting `epsilon` must be a number, got {epsilon!r}."
            ) from None
        if not (epsilon > 0 and math.isfinite(epsilon)):
            raise ValueError(
                "ScaledLossWeighting `epsilon` must be a finite number > 0, "
                f"got {epsilon!r}."
            )
        self.gradients_of = gradients_of
        self.epsilon = epsilon
        #: Tells the model which per-task gradients to pass as `shared_grads`.
        self.shared_gradients = gradients_of

    def weights_from_gradients(self, shared_grads, task_mask=None):
        """The `(T,)` weights for `(T, P)` per-task gradients (0 for the
        tasks absent from `task_mask`, if given)."""
        grads = ops.cast(ops.stop_gradient(shared_grads), "float32")
        norms = ops.sqrt(ops.sum(ops.square(grads), axis=1))
        inverse = 1.0 / ops.maximum(norms, self.epsilon)
        # The zero row of an absent task would have the largest inverse norm
        # 1 / eps: it is left out of the normalisation.
        present = present_or_all(task_mask, self.num_tasks)
        inverse = ops.where(present, inverse, 0.0)
        count = ops.sum(ops.cast(present, "float32"))
        total = ops.sum(inverse)
        weights = count * inverse / ops.where(total > 0.0, total, 1.0)
        # Weights of 1 when they are not finite or when every present
        # gradient is infinite (total 0).
        valid = ops.logical_and(
            total > 0.0,
            ops.all(ops.logical_or(ops.isfinite(weights), ops.logical_not(present))),
        )
        weights = ops.where(valid, weights, ops.ones_like(weights))
        return ops.where(present, weights, 0.0)

    def call(self, losses, shared_grads=None, training=True, task_mask=None):
        """Returns `(sum_t w_t L_t, w)` with w from `shared_grads`.

        Args:
            losses: `(T,)` task losses.
            shared_grads: `(T, P')` per-task gradients of the shared
                variables chosen by `gradients_of` (passed by the model).
            training: unused (the strategy is stateless).
            task_mask: None, or `(T,)` floats, 1.0 for the tasks present in
                the step (see `Strategy`).
        """
        self._check_num_tasks(losses)
        if shared_grads is None:
            raise ValueError(
                "ScaledLossWeighting needs the per-task gradients "
                "`shared_grads` (a (T, P) tensor); MultiTaskModel passes them "
                "during training."
            )
        self._check_num_tasks(shared_grads, what="shared_grads")
        weights = self.weights_from_gradients(shared_grads, task_mask=task_mask)
        weights = ops.stop_gradient(ops.cast(weights, losses.dtype))
        return ops.sum(weights * losses), weights

    def get_config(self):
        config = super().get_config()
        config.update({"gradients_of": self.gradients_of, "epsilon": self.epsilon})
        return config
