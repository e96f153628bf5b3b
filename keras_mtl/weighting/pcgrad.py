"""PCGrad, projecting conflicting gradients (Yu et al., NeurIPS 2020)."""

from __future__ import annotations

from typing import ClassVar

import keras
from keras import ops

from keras_mtl.weighting._portable_random_ops import next_seed, to_uint32, uint32
from keras_mtl.weighting._solver_ops import solver_dtype
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Added to ||g_j||^2 in the projection, as in LibMTL's PCGrad.py.
_EPS = 1e-8


def _xor_shift(x, bits):
    return ops.bitwise_xor(x, ops.right_shift(x, uint32(bits)))


def _mix32(x):
    """MurmurHash3's 32-bit finaliser (a bijective integer hash)."""
    x = _xor_shift(x, 16)
    x = x * uint32(0x85EBCA6B)
    x = _xor_shift(x, 13)
    x = x * uint32(0xC2B2AE35)
    return _xor_shift(x, 16)


def _seed_to_uint32(seed):
    """A `(2,)` integer seed modulo 2^32, as uint32: a seed generator's
    state (int64 on TensorFlow, uint32 on JAX) or an int32 array (JAX's
    default integers, cast with two's-complement wrap-around)."""
    seed = ops.convert_to_tensor(seed)
    if ops.dtype(seed) == "int32":
        return ops.cast(seed, "uint32")
    return to_uint32(seed)


def random_orders(seed, num_tasks, task_mask=None):
    """`(T, T)` int32 orders, row i a pseudo-random permutation of the tasks.

    The permutations are the argsorts of hashed integer keys derived from a
    `(2,)` integer seed, so they are bit-identical in eager mode and under
    XLA (TensorFlow's stateless random kernels differ between the two), and
    on TensorFlow and JAX (32-bit unsigned arithmetic wraps alike).

    With `task_mask` (`(T,)`, nonzero for the present tasks), the key of
    the pair (i, j) of present tasks is the key that pair (r_i, r_j) gets
    without a mask for K = (number of present tasks) tasks, r_i being the
    rank of task i among the present ones: restricted to the present tasks,
    row i is then exactly row r_i of `random_orders(seed, K)`. Where the
    absent tasks land in the orders is left unspecified.
    """
    seed = _seed_to_uint32(seed)
    base = _mix32(ops.bitwise_xor(seed[0], _mix32(seed[1] + uint32(0x7F4A7C15))))
    if task_mask is None:
        index = ops.cast(ops.arange(num_tasks * num_tasks), "uint32")
    else:
        present = ops.cast(ops.convert_to_tensor(task_mask) > 0, "int32")
        rank = ops.cumsum(present) - present
        count = ops.sum(present)
        index = ops.reshape(rank[:, None] * count + rank[None, :], (-1,))
        index = ops.cast(index, "uint32")
    keys = _mix32(index * uint32(0x9E3779B9) + base)
    keys = ops.cast(ops.right_shift(keys, uint32(1)), "int32")
    keys = ops.reshape(keys, (num_tasks, num_tasks))
    # A stable sort on both backends (TensorFlow's sorts by `top_k`, which
    # keeps equal keys in index order).
    return ops.cast(ops.argsort(keys, axis=1), "int32")


def pcgrad_weights(gramian, orders):
    """PCGrad's effective weights from the Gramian and the visit orders.

    Each projected gradient g_i^pc stays a combination sum_m C_im g_m of the
    original rows (C starts as the identity), so the whole procedure runs
    on the `(T, T)` Gramian: at visit k, task i looks at j = orders[i, k]
    and, when g_i^pc . g_j = (C A)_ij < 0, subtracts
    (g_i^pc . g_j) / (||g_j||^2 + 1e-8) g_j, i.e. adds that coefficient to
    C_ij. All tasks i advance together. The update sum_i g_i^pc has the
    weights sum_i C_im on the original rows.

    Args:
        gramian: `(T, T)` float tensor A = G G^T (T static).
        orders: `(T, T)` int tensor; row i is a permutation of the tasks.

    Returns:
        `(T,)` effective weights.
    """
    num = gramian.shape[0]
    dtype = gramian.dtype
    sq_norms = ops.diagonal(gramian)
    coeffs = ops.eye(num, dtype=dtype)
    for k in range(num):
        j = orders[:, k]
        columns = ops.take(gramian, j, axis=1)  # [m, i] = A[m, j_i]
        dots = ops.sum(coeffs * ops.transpose(columns), axis=1)
        denom = ops.take(sq_norms, j, axis=0) + _EPS
        shift = ops.where(dots < 0, -dots / denom, ops.zeros_like(dots))
        coeffs = coeffs + ops.one_hot(j, num, dtype=dtype) * shift[:, None]
    return ops.sum(coeffs, axis=0)


@register_strategy("pcgrad", "pc_grad")
class PCGrad(GradientAggregation):
    """Gradient surgery: project each gradient off the ones it conflicts with.

    Notation: T tasks, g_t the gradient of task t (row t of G). For each
    task i, starting from g_i^pc = g_i, the tasks j are visited in a fresh
    uniformly random order (all T tasks, i itself included, as in the
    reference), and

        if g_i^pc . g_j < 0:
            g_i^pc <- g_i^pc - (g_i^pc . g_j) / (||g_j||^2 + 1e-8) g_j

    projecting onto the normal plane of the ORIGINAL g_j. The update is the
    sum of the projected gradients, update = sum_i g_i^pc, the scale of a
    sum of task gradients (the plain sum when no pair conflicts).

    Each g_i^pc is a combination of the original rows, so the whole
    procedure runs on the `(T, T)` Gramian, and the returned weights are
    the effective ones, update = sum_t weights_t g_t with
    weights_j = 1 - sum_i (g_i^pc . g_j) / (||g_j||^2 + 1e-8) over the
    projections made onto g_j (LibMTL's `batch_weight`).

    Properties: stateless apart from the random orders (from a
    `keras.random.SeedGenerator`: the same `seed` gives the same sequence,
    eagerly and under XLA alike);
    T backward passes; parameter gradients only (LibMTL refuses
    `rep_grad`). After the surgery of two tasks, g_1^pc . g_2 >= 0 and
    g_2^pc . g_1 >= 0; non-conflicting gradients pass unchanged. Not scale
    invariant.

    With `training=False` (evaluation) the random state does not advance:
    the call draws what the next training call will draw.

    Missing tasks: with a `task_mask`, the rows of absent tasks are
    dropped (their Gramian rows and columns are zeroed, so nothing is
    projected onto or from them) and they get weight 0. The visit orders
    restricted to the present tasks are those a PCGrad built for the K
    present tasks draws from the same seed-generator state (see
    `random_orders`), so the weights of the present tasks and the update
    are those of that K-task PCGrad on the present rows.

    Args:
        seed: seed of the random visit orders (None for a random seed).
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.pcgrad import PCGrad
    >>> grads = np.array([[1.0, 0.0], [-1.0, 1.0]], "float32")
    >>> update = PCGrad(seed=0).aggregate(grads)
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [0.5, 1.5]

    References:
        Tianhe Yu, Saurabh Kumar, Abhishek Gupta, Sergey Levine, Karol
        Hausman, Chelsea Finn. "Gradient Surgery for Multi-Task Learning".
        NeurIPS 2020. arXiv:2001.06782. Official code: tianheyu927/PCGrad;
        matched against LibMTL `LibMTL/weighting/PCGrad.py` (commit
        b1f2a6f).

    Note:
        The weights are the effective weights (as LibMTL's return value),
        not ones. The permutations come from a hash of the seed generator's
        state rather than from `keras.random` draws, whose values differ
        between eager and XLA execution; they are not those of Python's
        `random.shuffle` in the reference (any uniform order is correct).

        The projections are computed from the Gramian in float64 instead of
        on the float32 gradient vectors (the same math; the rounding
        differs). The RNG state (the seed generator's)
        is one of the strategy's weights, saved and restored with it.
    """

    requires: ClassVar[str] = "gramian"
    supports_missing_tasks: ClassVar[bool] = True

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"PCGrad `seed` must be None or an int, got {seed!r}.")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config

    def _task_orders(self, num_tasks, task_mask=None, advance=True):
        """`(T, T)` int32: row i is a random permutation of the tasks (with
        `task_mask`: of the present tasks as `random_orders` says). The
        seed generator advances only when `advance` (in training)."""
        seed = next_seed(self.seed_generator, advance)
        if task_mask is None:
            return random_orders(seed, num_tasks)
        return random_orders(seed, num_tasks, task_mask)

    def _orders_for_call(self, num_tasks, task_mask, training):
        """`_task_orders`, without advancing the generator unless training
        (a call with `training=False` draws the orders the next training
        call will draw)."""
        args = (num_tasks,) if task_mask is None else (num_tasks, task_mask)
        if training:
            return self._task_orders(*args)
        return self._task_orders(*args, advance=False)

    def compute_weights(self, gramian, losses=None, training=True, task_mask=None):
        num = gramian.shape[0]
        if num == 1:
            # g . g >= 0: a single task is never projected.
            weights = ops.ones((1,), self.compute_dtype)
            if task_mask is not None:
                weights = weights * ops.cast(task_mask, self.compute_dtype)
            return weights
        wide = solver_dtype()
        gramian = ops.cast(gramian, wide)
        if task_mask is None:
            orders = self._orders_for_call(num, None, training)
        else:
            # Drop the absent rows: with a zero row and column no dot
            # product with an absent task is negative, so nothing is
            # projected onto or from it.
            present = ops.cast(ops.convert_to_tensor(task_mask) > 0, wide)
            gramian = gramian * present[:, None] * present[None, :]
            orders = self._orders_for_call(num, task_mask, training)
        weights = pcgrad_weights(gramian, orders)
        if task_mask is not None:
            weights = weights * present
        return ops.cast(weights, self.compute_dtype)
