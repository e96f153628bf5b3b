"""CR-MOGM: a moving average of the weights of a Gramian weighting."""

from __future__ import annotations

import numbers

from keras import ops

from keras_mtl.weighting._argument_ops import float_vector
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy


@register_strategy("crmogm", "cr_mogm")
class CRMOGM(GradientAggregation):
    """Smooths the task weights of another strategy with a moving average.

    Notation: G the `(T, P)` task gradients, A = G G^T its Gramian, W the
    wrapped strategy (`weighting`), which maps A to task weights. At step k
    the wrapped strategy's weights lambda^_k = W(A_k) are averaged with the
    previous ones,

        lambda_k = alpha * lambda_{k-1} + (1 - alpha) * lambda^_k,
        update   = sum_t lambda_k,t g_t,

    starting from lambda_0 = `initial_weights`, or, when it is None, from
    lambda_0 = lambda^_1 (so the first weights are W's whatever alpha is).
    The update has the scale of W's weights (for MGDA and UPGrad the scale
    of a mean of gradients).

    The paper shows that stochastic MGDA, PCGrad or CAGrad, whose weights
    come from noisy mini-batch gradients, need not converge to a Pareto
    stationary point, and that a moving average of the weights (the
    "correction") restores convergence.

    alpha = 0 returns W's weights unchanged; alpha = 1 keeps lambda_0 for
    ever. A constant W is a fixed point.

    Properties: stateful (lambda_{k-1}, per task, and the wrapped
    strategy's own state); needs what W needs (only the Gramian); not
    differentiable through the weights (the stored average is a constant).
    With `training=False` the average is computed from the stored one but
    not stored, and W is called with `training=False`.

    Missing tasks (when W supports them): W's weights are those of W built
    for the present tasks; the average of a present task is updated, an
    absent task's is kept (it gets weight 0). A task whose first step this
    is starts from lambda^ (or its `initial_weights` entry).

    Args:
        weighting: the wrapped strategy: a name, config dict, class or
            instance (as for `keras_mtl.weighting.get`) of a strategy whose
            update is a combination sum_t w_t g_t of weights computed from
            the Gramian (`requires = "gramian"`): "mgda" (default), "upgrad",
            "dualproj", "imtl", "nash_mtl", "cagrad", "pcgrad", "fairgrad",
            "aligned_mtl", "krum", ...
        alpha: in [0, 1], the weight of the past in the average (default
            0.9, TorchJD's).
        initial_weights: None or T floats, lambda_0.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.cr_mogm import CRMOGM
    >>> strategy = CRMOGM("mgda", alpha=0.5)
    >>> _ = strategy.aggregate(np.array([[1.0, 0.0], [0.0, 1.0]], "float32"))
    >>> _ = strategy.aggregate(np.array([[1.0, 0.0], [0.0, 2.0]], "float32"))
    >>> # MGDA: [0.5, 0.5], then [0.8, 0.2]; averaged: [0.65, 0.35]
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(strategy.average)]
    [0.65, 0.35]

    References:
        Shiji Zhou, Wenpeng Zhang, Jiyan Jiang, Wenliang Zhong, Jinjie Gu,
        Wenwu Zhu. "On the Convergence of Stochastic Multi-Objective
        Gradient Manipulation and Beyond". Advances in Neural Information
        Processing Systems 35 (NeurIPS), 2022. Matched to TorchJD 0.18.0
        (`torchjd/aggregation/_cr_mogm.py`, `CRMOGMWeighting`): wrapping
        UPGrad, the same weights over sequences of four calls to 2e-15
        (float64) and 9e-7 (float32), for alpha in {0, 0.5, 0.9, 1}, with
        and without `initial_weights`, on random, rank-deficient,
        duplicated-row and mixed-scale gradients; given the same wrapped
        weights, the average is exactly TorchJD's. (Wrapping MGDA, the
        results differ as this library's MGDA differs from TorchJD's
        `MGDAWeighting`, whose Frank-Wolfe loop stops early.)

    Note:
        Follows TorchJD's convention, alpha on the PAST weights (the paper's
        notation was not re-checked). TorchJD has no default wrapped
        weighting (here MGDA, the paper's first example) and lets alpha
        change between calls; here alpha is a constructor argument (its
        Corollary 1 schedule, alpha_k = 1 - lr_k / lr_0, would need a
        callback that rebuilds the strategy). Only Gramian weightings can
        be wrapped (TorchJD also wraps weightings of the matrix, such as its
        random one). The stored average is read with `stop_gradient`.
    """

    requires = "gramian"
    stateful = True
    supports_missing_tasks = True

    def __init__(self, weighting="mgda", alpha=0.9, initial_weights=None, **kwargs):
        if kwargs.pop("rep_grad", False):
            raise ValueError(
                "CRMOGM takes rep_grad from the wrapped strategy: pass "
                "weighting=<strategy>(rep_grad=True) instead of rep_grad=True."
            )
        super().__init__(**kwargs)
        from keras_mtl.weighting import get  # the package imports this module

        inner = get(weighting)
        if (
            not isinstance(inner, GradientAggregation)
            or inner.requires != "gramian"
            or type(inner).call is not GradientAggregation.call
            or type(inner).compute_weights is GradientAggregation.compute_weights
        ):
            raise ValueError(
                "CRMOGM `weighting` must be a strategy whose weights come from "
                "the Gramian (requires='gramian'), such as 'mgda' or 'upgrad'; "
                f"got weighting={weighting!r}."
            )
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, numbers.Real)
            or not 0.0 <= float(alpha) <= 1.0
        ):
            raise ValueError(f"CRMOGM `alpha` must be in [0, 1], got alpha={alpha!r}.")
        initial_weights = float_vector(initial_weights, "initial_weights", "CRMOGM")
        self.weighting = inner
        self.alpha = float(alpha)
        self.initial_weights = initial_weights
        self.rep_grad = inner.rep_grad
        self.supports_missing_tasks = inner.supports_missing_tasks

    # --- Binding and state ------------------------------------------------

    def set_task_names(self, task_names):
        super().set_task_names(task_names)
        self.weighting.set_task_names(task_names)

    def build(self, input_shape):
        super().build(input_shape)
        if (
            self.initial_weights is not None
            and len(self.initial_weights) != self.num_tasks
        ):
            raise ValueError(
                f"CRMOGM `initial_weights` has {len(self.initial_weights)} "
                f"entries, expected one per task ({self.num_tasks})."
            )
        if not self.weighting.built:
            self.weighting.build(input_shape)
        self.average = self.add_weight(
            shape=(self.num_tasks,),
            initializer="zeros",
            trainable=False,
            name="average",
            task_axis=0,
        )
        self.started = self.add_weight(
            shape=(self.num_tasks,),
            initializer="zeros",
            trainable=False,
            name="started",
            task_axis=0,
        )

    def per_task_state(self):
        return super().per_task_state() + self.weighting.per_task_state()

    def reset_state(self):
        self.weighting.reset_state()
        for variable in (self.average, self.started):
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def on_epoch_end(self):
        self.weighting.on_epoch_end()

    # --- Hooks of the wrapped strategy ----------------------------------

    def transform_losses(self, losses, task_mask=None):
        if task_mask is None:
            return self.weighting.transform_losses(losses)
        return self.weighting.transform_losses(losses, task_mask=task_mask)

    def head_gradient_scales(self, losses, weights):
        return self.weighting.head_gradient_scales(losses, weights)

    # --- Weights ------------------------------------------------------------

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        gramian = ops.convert_to_tensor(gramian)
        if task_mask is None:
            current = self.weighting.compute_weights(gramian, losses, training=training)
        else:
            current = self.weighting.compute_weights(
                gramian, losses, training=training, task_mask=task_mask
            )
        current = ops.cast(current, gramian.dtype)
        if task_mask is not None:
            current = current * ops.cast(task_mask, gramian.dtype)
        if self.initial_weights is None:
            initial = current
        else:
            initial = ops.convert_to_tensor(self.initial_weights, dtype=gramian.dtype)
        started = ops.convert_to_tensor(self.started) > 0
        average = ops.cast(ops.convert_to_tensor(self.average), gramian.dtype)
        previous = ops.where(started, ops.stop_gradient(average), initial)
        weights = self.alpha * previous + (1.0 - self.alpha) * current
        if task_mask is None:
            new_average = weights
            new_started = ops.ones((self.num_tasks,), self.started.dtype)
        else:
            # Absent tasks: weight 0, their average and start flag kept.
            present = ops.convert_to_tensor(task_mask) > 0
            new_average = ops.where(present, weights, average)
            new_started = ops.where(present, 1.0, ops.convert_to_tensor(self.started))
            weights = ops.where(present, weights, ops.zeros_like(weights))
        if training:
            self.average.assign(ops.cast(new_average, self.average.dtype))
            self.started.assign(ops.cast(new_started, self.started.dtype))
        return weights

    def get_config(self):
        from keras_mtl.weighting import serialize

        config = super().get_config()
        config.pop("rep_grad", None)
        # The wrapped strategy is built with this one, from the model.
        inner_config = serialize(self.weighting)
        inner_config.pop("build_config", None)
        config.update(
            {
                "weighting": inner_config,
                "alpha": self.alpha,
                "initial_weights": self.initial_weights,
            }
        )
        return config
