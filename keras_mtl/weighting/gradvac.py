"""Gradient Vaccine (Wang et al., ICLR 2021)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_mtl.weighting._portable_random_ops import uniform as portable_uniform
from keras_mtl.weighting._solver_ops import eager_function, executing_eagerly
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Stabilisers of the reference implementation (LibMTL GradVac.py).
_COS_EPS = 1e-8
_COEF_EPS = 1e-8


@register_strategy("gradvac", "grad_vac", "gradient_vaccine")
class GradVac(GradientAggregation):
    """Gradient Vaccine: raises pairwise gradient similarity to adaptive targets.

    Notation: T tasks, g_t the gradient of task t on the shared parameters
    (row t of the `(T, P)` input), cos(a, b) = a.b / (||a|| ||b|| + 1e-8),
    and phi_ij the target cosine similarity of the pair (i, j), an EMA of
    past observed similarities (zero before the first step).

    For each task i (in order 0..T-1), starting from gv_i = g_i, the other
    tasks j are visited in a random order, and

        phi = cos(gv_i, g_j)
        if phi < phi_ij:
            w = ||gv_i|| (phi_ij sqrt(1 - phi^2) - phi sqrt(1 - phi_ij^2))
                / (||g_j|| sqrt(1 - phi_ij^2) + 1e-8)
            gv_i <- gv_i + w g_j
            phi_ij <- (1 - beta) phi_ij + beta phi
        update = sum_i gv_i.

    The added multiple of g_j makes cos(gv_i, g_j) equal to the target
    phi_ij (up to the epsilons), so with the zero initial targets the first
    step projects every conflicting gradient onto the normal plane of the
    other task's gradient, as PCGrad does. Each gv_i is a linear combination
    of the original rows, and the returned weights are the effective
    coefficients: update = sum_t weights_t g_t with
    weights_j = 1 + sum_i w_ij.

    The update has the scale of a sum of task gradients (the sum of the
    rows when no pair conflicts). Defaults follow LibMTL's `config.py`
    (`GradVac_beta` = 0.5, `GradVac_group_type` = 0, whole model); other
    ports often use a slower EMA (beta = 1e-2).

    Properties: stateful (targets phi `(T, T)`; `reset_state()` zeroes
    them) and random (task orders, from `seed`), T backward passes,
    parameter gradients only (as in LibMTL). The cosines and targets do not
    depend on the gradients' scales, but the update, a sum of rows, does.

    With `training=False` (evaluation) neither the random state nor the
    targets change: the call draws what the next training call will draw.

    Missing tasks: with a `task_mask`, the rows of absent tasks are
    dropped: only pairs of present tasks are adjusted and only their
    targets phi_ij move (the targets of pairs with an absent task keep
    their values; `targets` is marked per task along its first axis, and
    its columns of absent tasks are left untouched by the step itself).
    The visit orders restricted to the present tasks are those a GradVac
    built for the K present tasks draws from the same seed-generator state,
    so the update, the present tasks' weights and the new targets of
    present pairs are those of that K-task GradVac with the same targets.
    Absent tasks get weight 0. (With a single present task the seed
    generator still advances, where a one-task GradVac draws nothing.)

    Args:
        beta: EMA rate beta in [0, 1] of the targets. Default 0.5 (LibMTL).
        group_type: the parameter granularity of the similarities; only 0
            (the whole shared model, one similarity per task pair) is
            supported, since the `(T, P)` input carries no layer structure.
        seed: seed of the random task orders (None for a random seed).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.gradvac import GradVac
    >>> strategy = GradVac(seed=0)
    >>> grads = np.array([[1.0, 0.0], [-1.0, 1.0]], "float32")
    >>> update = strategy.aggregate(grads)
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [0.5, 1.5]

    References:
        Zirui Wang, Yulia Tsvetkov, Orhan Firat, Yuan Cao. "Gradient
        Vaccine: Investigating and Improving Multi-task Optimization in
        Massively Multilingual Models". ICLR 2021. arXiv:2010.05874. No
        official code; LibMTL (median-research-group/LibMTL,
        `LibMTL/weighting/GradVac.py`) is the reference implementation.

    Note:
        As in LibMTL (and unlike the paper's Algorithm 1, which updates
        every target at every step), a target phi_ij is only updated when
        the pair's similarity falls below it; starting from zero, targets
        therefore never become positive. Only `group_type=0` is supported:
        the per-layer and per-matrix groupings of LibMTL need the layer
        boundaries of the shared parameters. The task orders come from a
        counter-based hash of the seed generator's state
        (`_portable_random_ops`), so that eager calls and compiled (XLA)
        steps draw the same orders; that state is one of
        the strategy's weights, saved and restored with it.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, beta=0.5, group_type=0, seed=None, **kwargs):
        super().__init__(**kwargs)
        beta = float(beta)
        if not (math.isfinite(beta) and 0.0 <= beta <= 1.0):
            raise ValueError(f"GradVac `beta` must be in [0, 1], got {beta!r}.")
        if group_type != 0:
            raise ValueError(
                "GradVac only supports `group_type=0` (whole model); got "
                f"{group_type!r}. Per-layer groupings need the layer structure "
                "of the shared parameters, which the (T, P) input does not carry."
            )
        self.beta = beta
        self.group_type = 0
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"GradVac `seed` must be None or an int, got {seed!r}.")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        super().build(input_shape)
        self.targets = self.add_weight(
            shape=(self.num_tasks, self.num_tasks),
            initializer="zeros",
            trainable=False,
            name="targets",
            task_axis=0,
        )

    def reset_state(self):
        self.targets.assign(ops.zeros_like(self.targets.value))

    def _task_orders(self, num_tasks, task_mask=None, advance=True):
        """Returns `(T, T)` int indices: row i is the order of visits for i.

        Each row is an independent uniform permutation of all tasks; task i
        itself is skipped when it comes up, which leaves a uniform random
        order of the other tasks.

        With `task_mask`, present task i (of rank r_i among the K present
        tasks) draws for present task j the value a K-task GradVac draws
        at (r_i, r_j) from the same seed-generator state (the draws depend
        on the flat index only), and the absent tasks come last: restricted
        to the present tasks, the orders are that K-task GradVac's.
        """
        if task_mask is None:
            noise = portable_uniform(
                (num_tasks, num_tasks), self.seed_generator, advance=advance
            )
            return ops.argsort(noise, axis=1)
        flat = portable_uniform(
            (num_tasks * num_tasks,), self.seed_generator, advance=advance
        )
        present = ops.cast(ops.convert_to_tensor(task_mask) > 0, "int32")
        rank = ops.cumsum(present) - present
        count = ops.sum(present)
        index = ops.clip(rank[:, None] * count + rank[None, :], 0, num_tasks**2 - 1)
        noise = ops.take(flat, index)
        noise = ops.where(present[None, :] > 0, noise, ops.full_like(noise, 2.0))
        return ops.argsort(noise, axis=1)

    def call(self, grads, losses=None, training=True, task_mask=None):
        self._check_num_tasks(grads, "gradients")
        num_tasks = self.num_tasks
        dtype = grads.dtype
        targets = ops.cast(self.targets, dtype)
        weights = ops.ones((num_tasks,), dtype=dtype)
        if task_mask is not None:
            # Drop the absent rows (zero by contract; zeroed to be sure).
            present = ops.cast(ops.convert_to_tensor(task_mask) > 0, dtype)
            grads = grads * present[:, None]
            weights = weights * present
        if num_tasks == 1:
            # No pair to adjust and no random draw.
            return grads[0], weights
        norms = ops.sqrt(ops.sum(ops.square(grads), axis=1))
        # A call with training=False draws the orders of the next training
        # call without advancing the generator.
        args = (num_tasks,) if task_mask is None else (num_tasks, task_mask)
        if training:
            orders = self._task_orders(*args)
        else:
            orders = self._task_orders(*args, advance=False)
        update, targets, weights = _vaccinate(
            grads,
            norms,
            orders,
            targets,
            weights,
            None if task_mask is None else present,
            self.beta,
        )
        if training:
            self.targets.assign(targets)
        return update, weights

    def get_config(self):
        config = super().get_config()
        config.update(
            {"beta": self.beta, "group_type": self.group_type, "seed": self.seed}
        )
        return config


def _vaccinate_loops(grads, norms, orders, targets, weights, present, beta):
    """The visits of `GradVac.call`: `(update, targets, weights)` from the
    `(T, P)` gradients, their norms, the `(T, T)` visit orders, the targets
    and the initial weights (`present`: None, or the `(T,)` 0/1 mask of the
    present tasks in the dtype of `grads`)."""
    num_tasks = grads.shape[0]
    dtype = grads.dtype

    def visit_task(i, carry):
        update, targets, weights = carry
        onehot_i = ops.one_hot(i, num_tasks, dtype=dtype)
        order = ops.take(orders, i, axis=0)

        def visit_other(position, inner):
            row, targets, weights = inner
            j = ops.take(order, position)
            onehot_j = ops.one_hot(j, num_tasks, dtype=dtype)
            pair = onehot_i[:, None] * onehot_j[None, :]
            g_j = ops.matmul(onehot_j[None, :], grads)[0]
            norm_j = ops.sum(onehot_j * norms)
            target = ops.sum(targets * pair)
            row_norm = ops.sqrt(ops.sum(ops.square(row)))
            cos = ops.sum(row * g_j) / (row_norm * norm_j + _COS_EPS)
            adjust = ops.logical_and(ops.not_equal(j, i), cos < target)
            if present is not None:
                # Only pairs of present tasks are adjusted and update
                # their targets.
                both = ops.sum(present * onehot_i) * ops.sum(present * onehot_j)
                adjust = ops.logical_and(adjust, both > 0)
            sin = ops.sqrt(ops.maximum(1.0 - ops.square(cos), 0.0))
            sin_target = ops.sqrt(ops.maximum(1.0 - ops.square(target), 0.0))
            coef = (
                row_norm
                * (target * sin - cos * sin_target)
                / (norm_j * sin_target + _COEF_EPS)
            )
            coef = ops.where(adjust, coef, ops.zeros_like(coef))
            new_target = (1.0 - beta) * target + beta * cos
            delta = ops.where(adjust, new_target - target, ops.zeros_like(target))
            return (
                row + coef * g_j,
                targets + delta * pair,
                weights + coef * onehot_j,
            )

        row = ops.matmul(onehot_i[None, :], grads)[0]
        row, targets, weights = ops.fori_loop(
            0, num_tasks, visit_other, (row, targets, weights)
        )
        return update + row, targets, weights

    update = ops.zeros_like(grads[0])
    update, targets, weights = ops.fori_loop(
        0, num_tasks, visit_task, (update, targets, weights)
    )
    return update, targets, weights


def _vaccinate(grads, norms, orders, targets, weights, present, beta):
    """`_vaccinate_loops`, as one compiled function when called eagerly.

    Eagerly the nested loops would run op by op on TensorFlow (O(T^2)
    iterations of a few dozen ops) and be traced and compiled again at
    every call on JAX (their bodies are new closures each time): they run
    instead as one graph per shape on TensorFlow, without XLA (the same
    kernels), and as one `jax.jit` per shape on JAX (the loops were
    compiled by XLA either way). Inside a traced step they are part of the
    step, as before."""
    args = (grads, norms, orders, targets, weights, present, beta)
    if executing_eagerly(*args[:-1]):
        return _eager_loops(*args)
    return _vaccinate_loops(*args)


_eager_loops = eager_function(_vaccinate_loops, static_argnums=(6,))
