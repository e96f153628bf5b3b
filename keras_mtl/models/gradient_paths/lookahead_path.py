"""The look-ahead path: a virtual step and a held-out batch before the step.

For strategies with `lookahead = True` (Auto-Lambda). The batch `fit`
gives the step is cut into a training half B_in and a held-out half B_out
(`multi_batch_path.sub_batches`). Before the ordinary loss path runs on
the whole batch, the path

1. takes a virtual SGD step on the strategy's weighted training losses,
   theta' = theta - eta grad sum_t w_t L_t(theta; B_in), eta the
   optimizer's current learning rate;
2. takes d = grad sum_t p_t L_t(theta'; B_out), the gradient of the
   held-out loss at theta' (p: the strategy's outer weights);
3. evaluates the training losses at theta + eps d and theta - eps d,
   eps = 0.01 / ||d||, and hands them to the strategy's
   `update_from_lookahead`, which updates its weights.

The losses at other parameters are taken with the model's variables mapped
to those values in a `keras.StatelessScope`: the model's variables are not
written, and what the passes would assign (BatchNorm statistics) is
dropped. Gradients under the scope come from a tape on TensorFlow and from
`jax.value_and_grad` on JAX (`JaxLookaheadGradientPath`).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_mtl.models import _distribution as distribution
from keras_mtl.models import _targets as targets
from keras_mtl.models.gradient_paths.loss_path import LossGradientPath
from keras_mtl.models.gradient_paths.multi_batch_path import (
    check_batch_size,
    sub_batches,
)

#: The finite-difference radius, over the norm of d (DARTS, Auto-Lambda).
RADIUS = 0.01


class LookaheadGradientPath(LossGradientPath):
    """The loss path after the strategy's look-ahead (TensorFlow)."""

    def check_fit(self, batch_size):
        check_batch_size(batch_size, self.strategy)

    def __call__(self, x, y, sample_weights):
        self.look_ahead(x, y, sample_weights)
        return super().__call__(x, y, sample_weights)

    # --- Backend-specific ---------------------------------------------------

    def value_and_gradients(self, fn, values):
        """`fn(values)` (a scalar) and its gradients with respect to
        `values` (a list of tensors)."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(values)
            value = fn(values)
        grads = tape.gradient(value, values)
        return value, [
            ops.zeros_like(v) if g is None else g for g, v in zip(grads, values)
        ]

    def other_variables(self, variables):
        """Variables the look-ahead scope maps to their current values
        (none on TensorFlow: unmapped variables read themselves)."""
        return []

    # --- The look-ahead -------------------------------------------------------

    def lookahead_variables(self):
        """The parameters of the virtual step: every trainable variable of
        the model but the strategy's own."""
        own = {id(v) for v in self.strategy.variables}
        return [v for v in self.model.trainable_variables if id(v) not in own]

    def losses_at(self, variables, values, batch):
        """The `(T,)` task losses of `batch` with `variables` set to
        `values`, nothing written."""
        x, y, sample_weights = batch
        mapping = list(zip(variables, values))
        mapping += [(v, v.value) for v in self.other_variables(variables)]
        with keras.StatelessScope(state_mapping=mapping):
            y_pred = self.model(x, training=True)
            losses = self.model._options.task_losses(y, y_pred, sample_weights).losses
        return ops.cast(losses, "float32")

    def look_ahead(self, x, y, sample_weights):
        """Steps 1 to 3 of the module docstring; the strategy updates its
        weights from them (nothing else changes)."""
        strategy = self.strategy
        size = targets.static_batch_size(x)
        if size is not None and size < strategy.batches_per_step:
            return  # known while tracing: no held-out half (JAX)
        inner, outer = sub_batches((x, y, sample_weights), 2)
        variables = self.lookahead_variables()
        theta = [v.value for v in variables]
        rate = ops.cast(self.model.optimizer.learning_rate, "float32")
        weights = ops.cast(ops.stop_gradient(strategy.lookahead_weights()), "float32")
        outer_weights = ops.cast(strategy.outer_weights(), "float32")

        def inner_loss(values):
            return ops.sum(weights * self.losses_at(variables, values, inner))

        def outer_loss(values):
            return ops.sum(outer_weights * self.losses_at(variables, values, outer))

        _, grads = self.value_and_gradients(inner_loss, theta)
        virtual = [
            t - ops.cast(rate, t.dtype) * ops.cast(g, t.dtype)
            for t, g in zip(theta, _global(grads))
        ]
        _, direction = self.value_and_gradients(outer_loss, virtual)
        direction = [ops.cast(d, "float32") for d in _global(direction)]
        norm = ops.sqrt(sum(ops.sum(ops.square(d)) for d in direction))
        epsilon = ops.where(
            norm > 0, RADIUS / ops.where(norm > 0, norm, 1.0), 0.0 * norm
        )

        def moved(sign):
            return [
                t + ops.cast(sign * epsilon * d, t.dtype)
                for t, d in zip(theta, direction)
            ]

        strategy.update_from_lookahead(
            self.losses_at(variables, moved(1.0), inner),
            self.losses_at(variables, moved(-1.0), inner),
            epsilon,
            rate,
        )


def _global(grads):
    """Gradients of global-batch losses summed over the replicas (each
    replica's is its share)."""
    return [distribution.sum_over_replicas(g) for g in grads]
