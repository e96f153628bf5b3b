"""FairGrad: alpha-fair allocation of the update among the tasks."""

import math

import keras
from keras import ops

from keras_mtl.weighting._solver_ops import psd_solve, solver_dtype, solver_function
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

#: Ridge added to the Gramian, relative to each task's squared gradient norm,
#: so that the weights stay finite when the equation has no solution.
_RIDGE = 1e-8
#: Floor of the squared gradient norms used for the ridge, relative to the
#: largest one (gives zero gradients a finite weight).
_NORM_FLOOR = 1e-60
#: Largest weight returned (only reached for vanishing gradients).
_MAX_WEIGHT = 1e30


def _solve_fair_weights(gramian, alpha, max_iter=200, tol=1e-20, present=None):
    """Solves A w = w^(-1/alpha), w > 0, for a `(T, T)` float64 PSD matrix.

    The equation is the stationarity condition of the strictly convex

        F(w) = 1/2 w^T A w - sum_t phi(w_t),   phi'(w) = w^(-1/alpha),

    (phi = log for alpha = 1). A is divided by its largest diagonal entry s
    (the solution scales as s^(-alpha / (1 + alpha))). A ridge
    `_RIDGE * diag(A)` (with the diagonal floored at `_NORM_FLOOR`) keeps F
    bounded below when a task gradient is zero or the gradients are
    positively dependent, in which case the equation has no solution. F is
    minimised by Newton's method (affine invariant, so the very different
    scales of the tasks do not matter) with a fraction-to-the-boundary rule
    and Armijo backtracking, which converges globally and quadratically.
    The Newton systems are solved after a symmetric diagonal scaling, by a
    Cholesky factorisation that never raises (`psd_solve`): a system that
    is not numerically positive definite gives a non-finite step, which
    ends the iteration at the current w.

    With `present` (`(T,)` float64, 1.0 for the present tasks), the absent
    tasks' rows and columns are replaced by those of the identity, whose
    equation w = w^(-1/alpha) the start w_t = 1 already solves; the Newton
    steps, which never move them (zero gradient, decoupled Hessian), and
    the objective (restricted to the present tasks) are those of the
    present block alone.
    """
    dtype = gramian.dtype
    power = alpha / (1.0 + alpha)
    inv_alpha = 1.0 / alpha
    if present is not None:
        gramian = gramian * present[:, None] * present[None, :]
    diag = ops.diagonal(gramian)
    scale = ops.max(diag)
    scale = ops.where(scale > 0, scale, ops.ones_like(scale))
    floor = ops.maximum(diag / scale, _NORM_FLOOR)
    matrix = gramian / scale + ops.diag(_RIDGE * floor)
    if present is not None:
        matrix = matrix * present[:, None] * present[None, :] + ops.diag(1.0 - present)

    def task_sum(values):
        if present is None:
            return ops.sum(values)
        return ops.sum(ops.where(present > 0, values, ops.zeros_like(values)))

    def objective(w):
        quad = 0.5 * task_sum(w * ops.matmul(matrix, w))
        if alpha == 1.0:
            barrier = task_sum(ops.log(w))
        else:
            expo = 1.0 - inv_alpha
            barrier = task_sum(ops.power(w, expo)) / expo
        return quad - barrier

    def cond(it, w, previous, done):
        return ops.logical_and(it < max_iter, ops.logical_not(done))

    def body(it, w, previous, done):
        grad = ops.matmul(matrix, w) - ops.power(w, -inv_alpha)
        hess = matrix + ops.diag(inv_alpha * ops.power(w, -inv_alpha - 1.0))
        inv_sqrt = ops.rsqrt(ops.diagonal(hess))
        scaled = inv_sqrt[:, None] * hess * inv_sqrt[None, :]
        step = -inv_sqrt * psd_solve(scaled, (inv_sqrt * grad)[:, None])[:, 0]
        decrement = -ops.sum(grad * step)
        # Largest step keeping w > 0 (at most 0.99 of the way to the boundary).
        negative = step < 0
        ratios = ops.where(
            negative, -w / ops.where(negative, step, -ops.ones_like(step)), 1e30
        )
        t_max = ops.minimum(ops.cast(1.0, dtype), 0.99 * ops.min(ratios))
        f_now = objective(w)

        # Close to the solution F cannot resolve the decrease: full steps.
        search = decrement >= 1e-8

        def ls_cond(k, t):
            trial = objective(w + t * step)
            armijo = trial <= f_now - 0.25 * t * decrement
            return ops.logical_and(
                ops.logical_and(search, k < 60), ops.logical_not(armijo)
            )

        def ls_body(k, t):
            return k + 1, 0.5 * t

        tries, t = ops.while_loop(
            ls_cond, ls_body, (ops.convert_to_tensor(0, "int32"), t_max)
        )
        # No decrease found: F's rounding noise dominates, w is optimal to
        # working precision.
        stalled = ops.logical_and(search, tries >= 60)
        moving = ops.logical_and(decrement > 0, ops.logical_not(stalled))
        new_w = ops.where(moving, w + t * step, w)
        # Converged, or at the rounding-noise floor: a small decrement that no
        # longer shrinks (Newton's decrements shrink quadratically).
        noise_floor = ops.logical_and(decrement < 1e-12, decrement > 0.25 * previous)
        converged = ops.logical_or(decrement < tol, noise_floor)
        new_done = ops.logical_or(ops.logical_not(moving), converged)
        return it + 1, new_w, decrement, new_done

    # Start from the solution of the diagonal approximation.
    w0 = ops.power(ops.diagonal(matrix), -power)
    inf = ops.full((), float("inf"), dtype)
    _, w, _, _ = ops.while_loop(
        cond,
        body,
        (
            ops.convert_to_tensor(0, "int32"),
            w0,
            inf,
            ops.convert_to_tensor(False),
        ),
    )
    weights = w * ops.power(scale, -power)
    return ops.minimum(weights, _MAX_WEIGHT)


def _fair_weights(gramian, alpha):
    return _solve_fair_weights(gramian, alpha)


def _present_fair_weights(gramian, alpha, present):
    return _solve_fair_weights(gramian, alpha, present=present)


# On JAX, in float64 whether or not `jax_enable_x64` is set (see
# `solver_function`); on TensorFlow, as written (the same results as ever).
if keras.backend.backend() == "jax":
    _fair_weights = solver_function(_fair_weights)
    _present_fair_weights = solver_function(_present_fair_weights)


@register_strategy("fairgrad", "fair_grad")
class FairGrad(GradientAggregation):
    """FairGrad: task weights from alpha-fair allocation of the update.

    Notation: G is the `(T, P)` matrix of task gradients g_t, A = G G^T its
    Gramian, d the update and u_t = g_t . d the "utility" of task t (its
    first-order loss decrease). FairGrad picks d to maximise the alpha-fair
    sum of utilities sum_t u_t^(1 - alpha) / (1 - alpha) in a ball, whose
    solution is d = sum_t w_t g_t with w > 0 solving (Equation 4 of the
    paper)

        (A w)_t = w_t^(-1 / alpha)        for every task t,

    i.e. g_t . d = w_t^(-1/alpha). The reference solves this with
    `scipy.optimize.least_squares` (bounds w >= 0, start 1/T); here it is
    solved in-graph (float64) as the minimisation of the strictly convex
    1/2 w^T A w - sum_t phi(w_t), phi' = w^(-1/alpha), by damped Newton
    steps, which reaches the same unique root.

    Special cases (Section 3 of the paper): alpha = 0 is linear
    scalarisation (returned as w_t = 1/T, as in TorchJD's FairGrad); alpha =
    1 is proportional fairness, the Nash bargaining solution of Nash-MTL
    (w_t g_t . d = 1); alpha = 2 is minimum potential delay fairness; alpha
    -> infinity tends to max-min fairness (g_t . d equal for all tasks, the
    MGDA direction when its weights are all positive).

    Default alpha = 1.0 as in LibMTL (`--FairGrad_alpha`) and the official
    code (`methods/weight_methods.py`, `FairGrad(alpha=1.0)`).

    Scale: the update is sum_t w_t g_t with the weights above, as in LibMTL
    (`LibMTL/weighting/FairGrad.py`). Scaling all gradients by c > 0 scales
    the weights by c^(-2 alpha / (1 + alpha)) and the update by
    c^((1 - alpha) / (1 + alpha)): with alpha = 1 the update is invariant to
    the gradients' scale, and scaling a single task's gradient by c only
    divides that task's weight by c, leaving the update unchanged.

    Properties: stateless; weights positive; permutation equivariant; needs
    only the Gramian (`requires = "gramian"`).

    Missing tasks: with a `task_mask`, the rows of absent tasks are
    dropped: the equation is solved for the present tasks only, (A_PP w_P)
    = w_P^(-1/alpha) on the present block P of the Gramian (its scale and
    ridge included), and absent tasks get weight 0; with alpha = 0 the
    weights are 1/K on the K present tasks. (Left in, a zero row would have
    no solution and get the 1e30 cap.)

    Args:
        alpha: the fairness parameter, a finite float >= 0.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.fairgrad import FairGrad
    >>> grads = np.array([[2.0, 0.0], [0.0, 0.5]], "float32")
    >>> strategy = FairGrad(alpha=1.0)
    >>> update, weights = strategy(grads)
    >>> np.round(keras.ops.convert_to_numpy(weights).astype("float64"), 3).tolist()
    [0.5, 2.0]
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [1.0, 1.0]

    References:
        Ban, H. and Ji, K. "Fair Resource Allocation in Multi-Task
        Learning." ICML 2024, arXiv:2402.15638. Official code:
        https://github.com/OptMN-Lab/fairgrad (`methods/weight_methods.py`);
        LibMTL port `LibMTL/weighting/FairGrad.py`.

    Note:
        The official code multiplies the combined gradient by T ("to match
        the sum loss") and then clips the shared gradient's norm to
        `max_norm = 1`; LibMTL does neither, and neither do we (clip in the
        optimizer if wanted).

        Where the equation has a solution we return it to about 1e-8
        relative. `least_squares` (default tolerances) stops early when the
        weights are large, i.e. for small gradients (for alpha = 1 a single
        task with ||g|| = 4e-4 gets 505 instead of 1 / ||g|| = 2444): there
        the reference differs from the exact root and from us.

        When the equation has no solution (a zero task gradient, or
        gradients with a non-negative combination equal to zero, such as g
        and -g) the reference's weights diverge; ours stay finite through a
        ridge 1e-8 * ||g_t||^2 added to the diagonal of A (floored at 1e-60
        times the largest squared norm), which changes solvable problems by
        about 1e-8 relative, and are capped at 1e30. The update is then
        finite but dominated by rounding when alpha is large. For alpha
        above about 50 some weights may underflow to 0 (the exact ones are
        astronomically small). Not differentiable through the weights.
    """

    requires = "gramian"
    supports_missing_tasks = True

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        try:
            alpha = float(alpha)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"FairGrad `alpha` must be a finite float >= 0, got {alpha!r}."
            ) from error
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(
                f"FairGrad `alpha` must be a finite float >= 0, got {alpha!r}."
            )
        self.alpha = alpha

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        gramian = ops.convert_to_tensor(gramian)
        num_tasks = gramian.shape[0]
        if task_mask is None:
            if self.alpha == 0.0:
                return ops.full([num_tasks], 1.0 / num_tasks, gramian.dtype)
            weights = _fair_weights(ops.cast(gramian, solver_dtype()), self.alpha)
            return ops.cast(weights, gramian.dtype)
        present = ops.cast(ops.convert_to_tensor(task_mask) > 0, solver_dtype())
        if self.alpha == 0.0:
            weights = present / ops.maximum(ops.sum(present), 1.0)
        else:
            weights = _present_fair_weights(
                ops.cast(gramian, solver_dtype()), self.alpha, present
            )
            weights = weights * present
        return ops.cast(weights, gramian.dtype)
