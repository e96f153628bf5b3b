"""CAGrad, conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math
from typing import ClassVar

import tensorflow as tf
from keras import ops

from keras_mtl.weighting._newton_ops import armijo_step, max_step_to_boundary
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Stabilisers of the reference (Cranial-XIX/CAGrad, LibMTL CAGrad.py).
_EPS = 1e-8
# Interior-point schedule of the inner solver: the barrier weight starts at
# 1 (relative to the scale of the objective) and halves at every Newton step.
_NEWTON_STEPS = 80
_MU_DECAY = 0.5
_MU_MIN = 1e-15
_HESS_FLOOR = 1e-13


def _inner_objective(points, gramian, mean_row, c):
    """F(w) = w.A(1/T) + c sqrt(w.A.w + 1e-8) for a `(N, T)` batch of w."""
    quad = tf.reduce_sum(points * tf.matmul(points, gramian), axis=1)
    return tf.linalg.matvec(points, mean_row) + c * tf.sqrt(
        tf.maximum(quad, 0.0) + _EPS
    )


def cagrad_inner_weights(gramian, c):
    """Solves CAGrad's inner problem on the simplex.

        minimise_{w in simplex}  F(w) = w^T A b + c sqrt(w^T A w + 1e-8),

    with A the `(T, T)` Gramian and b = 1/T (so w^T A b = g_w . g_0). F is
    convex; it is minimised by a primal log-barrier interior-point method:
    damped Newton steps on F/S - mu sum_t log w_t under sum_t w_t = 1, with
    mu halving from 1 to 1e-15 (S a scale of F's gradient), fraction-to-
    boundary and Armijo line searches. 80 steps in float64 reach the
    minimum to about 1e-9 relative on well-posed inputs.

    Args:
        gramian: `(T, T)` float64 tensor (T static).
        c: float64 scalar, the radius factor c = alpha ||g_0|| + 1e-8.

    Returns:
        `(T,)` weights on the simplex.
    """
    num = gramian.shape[0]
    dtype = gramian.dtype
    if num == 1:
        return tf.ones([1], dtype)
    mean_row = tf.reduce_mean(gramian, axis=1)
    start = tf.fill([num], tf.constant(1.0 / num, dtype))

    def gradient(w):
        aw = tf.linalg.matvec(gramian, w)
        s = tf.sqrt(tf.maximum(tf.reduce_sum(w * aw), 0.0) + _EPS)
        return mean_row + c * aw / s, aw, s

    grad0, _, _ = gradient(start)
    scale = tf.maximum(tf.reduce_max(tf.abs(grad0)), tf.constant(1e-300, dtype))

    def barrier(points, mu):
        values = _inner_objective(points, gramian, mean_row, c) / scale
        logs = tf.reduce_sum(tf.math.log(points), axis=1)
        values = values - mu * logs
        inside = tf.reduce_all(points > 0, axis=1)
        return tf.where(inside, values, tf.constant(float("inf"), dtype))

    def body(k, w, mu):
        grad_f, aw, s = gradient(w)
        grad = grad_f / scale - mu / w
        hess_f = (c / scale) * (gramian / s - aw[:, None] * aw[None, :] / (s * s * s))
        # Newton step in the scaled variables delta = dw / w (better
        # conditioned when some w_t are tiny) under sum_t dw_t = 0, i.e.
        # w . delta = 0, from the KKT system (LU with pivoting: the
        # Hessian of F is singular along w, since F is 1-homogeneous up to
        # the constant 1e-8, but the KKT matrix is not).
        # The floor keeps it non-singular despite rounding.
        hess = w[:, None] * hess_f * w[None, :] + (mu + _HESS_FLOOR) * tf.eye(
            num, dtype=dtype
        )
        kkt = tf.concat(
            [
                tf.concat([hess, w[:, None]], axis=1),
                tf.concat([w[None, :], tf.zeros([1, 1], dtype)], axis=1),
            ],
            axis=0,
        )
        rhs = tf.concat([-w * grad, tf.zeros([1], dtype)], axis=0)
        delta = tf.linalg.solve(kkt, rhs[:, None])[:num, 0]
        direction = w * delta
        slope = tf.reduce_sum(grad * direction)
        descent = tf.logical_and(tf.reduce_all(tf.math.is_finite(direction)), slope < 0)
        direction = tf.where(descent, direction, tf.zeros_like(direction))
        slope = tf.where(descent, slope, tf.zeros_like(slope))
        value = barrier(w[None, :], mu)[0]
        step = armijo_step(
            lambda p: barrier(p, mu),
            w,
            direction,
            value,
            slope,
            max_step_to_boundary(w, direction),
            full_step_ok=tf.logical_and(descent, -slope < 1e-10),
        )
        w = w + step * direction
        w = w / tf.reduce_sum(w)
        mu = tf.maximum(mu * _MU_DECAY, _MU_MIN)
        return k + 1, w, mu

    _, w, _ = tf.while_loop(
        lambda k, w, mu: k < _NEWTON_STEPS,
        body,
        (tf.constant(0), start, tf.ones([], dtype)),
    )
    return w


_compiled_inner_weights = tf.function(cagrad_inner_weights, autograph=False)

_RESCALES = (0, 1, 2)


@register_strategy("cagrad", "conflict_averse")
class CAGrad(GradientAggregation):
    """Conflict-averse gradient descent.

    Notation: T tasks, g_t the gradient of task t (row t of G), A = G G^T,
    g_0 = (1/T) sum_t g_t the mean gradient, g_w = sum_t w_t g_t, and Delta
    the simplex. CAGrad looks for the update d in the ball
    ||d - g_0|| <= c ||g_0|| that maximises the worst task improvement
    min_t g_t . d. Its dual is a T-dimensional problem:

        w* = argmin_{w in Delta}  g_w . g_0 + C sqrt(||g_w||^2 + 1e-8),
        C  = c sqrt(||g_0||^2 + 1e-8) + 1e-8,
        d  = g_0 + (C / (||g_{w*}|| + 1e-8)) g_{w*},

    and the update is d / r with r = 1 (`rescale=0`), 1 + c^2 (`rescale=1`)
    or 1 + c (`rescale=2`). Without the small constants (those of the
    authors' code, kept for fidelity) this is d = g_0 + c ||g_0||
    g_w / ||g_w||.

    The inner problem (SLSQP on the Gramian in the reference) is solved in
    the graph by an interior-point Newton method in float64
    (`cagrad_inner_weights`), to the exact minimiser.

    Scale: the method's own, not a sum: with c = 0 the update is the MEAN
    gradient g_0 (divided by r = 1 with `rescale=1`), exactly LibMTL's
    update. The returned weights are the effective weights of the rows,
    update = sum_t weights_t g_t with weights_t = (1/T + C w*_t /
    (||g_{w*}|| + 1e-8)) / r (LibMTL returns w* itself).

    Properties: stateless; T backward passes; parameter gradients only (as
    in LibMTL); not scale invariant; for c < 1 it converges to a minimum of
    the average loss. Before rescaling, ||d - g_0|| <= c ||g_0|| and
    min_t g_t . d >= min_t g_t . g_0 (up to the constants above).

    Args:
        c: the radius factor c >= 0 (`calpha`). Default 0.5 (LibMTL
            `config.py`); the authors use 0.4 on NYUv2 (`nyuv2/run.sh`).
        rescale: 0, 1 or 2 as in LibMTL: divide the update by 1, 1 + c^2
            or 1 + c. Default 1 (LibMTL).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.cagrad import CAGrad
    >>> grads = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    >>> update = CAGrad(c=0.5).aggregate(grads)
    >>> np.round(update.numpy().astype("float64"), 3).tolist()
    [0.6, 0.6]

    References:
        Bo Liu, Xingchao Liu, Xiaojie Jin, Peter Stone, Qiang Liu.
        "Conflict-Averse Gradient Descent for Multi-task Learning". NeurIPS
        2021. arXiv:2110.14048. Official code: Cranial-XIX/CAGrad; matched
        against LibMTL `LibMTL/weighting/CAGrad.py` (commit e56caa7).

    Note:
        The reference solves the inner problem with scipy's SLSQP at its
        default tolerance (1e-6 on the objective), so its w* is only
        approximately optimal; ours is the exact minimiser, which can differ
        from the reference's by up to about 1e-3 on ill-conditioned inputs.
        The constants 1e-8 make the update not exactly scale-equivariant
        for very small gradients (||g_0|| below about 1e-4), as in the
        reference.
    """

    requires: ClassVar[str] = "gramian"

    def __init__(self, c=0.5, rescale=1, **kwargs):
        super().__init__(**kwargs)
        try:
            c_value = float(c)
        except (TypeError, ValueError):
            c_value = float("nan")
        if not (math.isfinite(c_value) and c_value >= 0.0):
            raise ValueError(f"CAGrad `c` must be finite and >= 0, got {c!r}.")
        if rescale not in _RESCALES or isinstance(rescale, bool):
            raise ValueError(
                f"CAGrad `rescale` must be one of {_RESCALES}, got {rescale!r}."
            )
        self.c = c_value
        self.rescale = int(rescale)

    def get_config(self):
        config = super().get_config()
        config.update({"c": self.c, "rescale": self.rescale})
        return config

    def compute_weights(self, gramian, losses=None, training=True):
        gramian = ops.cast(gramian, "float64")
        num = gramian.shape[0]
        g0_norm = ops.sqrt(ops.mean(gramian) + _EPS)
        radius = self.c * g0_norm + _EPS
        w = _compiled_inner_weights(gramian, radius)
        gw_sq = ops.sum(w * ops.matmul(gramian, w))
        gw_norm = ops.sqrt(ops.maximum(gw_sq, 0.0))
        lmbda = radius / (gw_norm + _EPS)
        weights = 1.0 / num + lmbda * w
        divisor = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return ops.cast(weights / divisor, self.compute_dtype)
