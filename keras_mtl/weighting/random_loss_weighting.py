"""Random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

import math
import numbers

import keras
from keras import ops

from keras_mtl.weighting._portable_random_ops import uniform as portable_uniform
from keras_mtl.weighting._present_task_ops import (
    masked_softmax,
    present_count,
    present_ranks,
    present_tasks,
)
from keras_mtl.weighting._softmax_ops import task_softmax
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

_DISTRIBUTIONS = (
    "normal",
    "uniform",
    "dirichlet",
    "bernoulli",
    "constrained_bernoulli",
)
# Distributions whose draws are passed through a softmax (LibMTL).
_SOFTMAX_DISTRIBUTIONS = ("normal", "uniform", "dirichlet")


@register_strategy("rlw", "random", "random_loss_weighting")
class RandomLossWeighting(LossWeighting):
    """Weights the task losses with fresh random weights at every step.

    At every training step a vector lambda~ of T random numbers is drawn and
    mapped to task weights w; the objective is `sum_t w_t L_t` with w held
    constant. The distributions (`distribution=`) are those of the paper and
    of the authors' LibMTL implementation:

        "normal" (default):  lambda~ ~ N(0, I_T),   w = softmax(lambda~)
        "uniform":           lambda~ ~ U(0, 1)^T,   w = softmax(lambda~)
        "dirichlet":         lambda~ ~ Dir(1, ..., 1), w = softmax(lambda~)
        "bernoulli":         w ~ Bernoulli(1/2)^T conditioned on w != 0
                             (0/1 weights, not normalised)
        "constrained_bernoulli": w = one-hot vector of a uniformly drawn
                             task (one task per step)

    The softmax-based weights lie on the simplex (non-negative, sum 1), and
    by symmetry E[w_t] = 1/T. The Bernoulli weights are 0 or 1 with
    E[w_t] = 2^(T-1) / (2^T - 1), about 1/2. The conditioning on a non-zero
    vector is sampled exactly and without a rejection loop: the index J of
    the first 1 has P(J = j) = 2^(T-1-j) / (2^T - 1) (j = 0..T-1, drawn by
    inverse CDF), the entries before J are 0 and those after J are fair
    coin flips, which makes every non-zero 0/1 vector equally likely.

    The paper proposes RLW as a "litmus test": a loss-weighting method
    should beat random weights to be considered useful.

    With `training=False` (evaluation) no random number is drawn and the
    strategy returns the expected weights E[w] (1/T for every distribution
    but "bernoulli", 2^(T-1) / (2^T - 1) for it), so evaluation losses are
    deterministic and the random state does not advance.

    Properties: stateful (only the random generator; `reset_state()`
    rewinds it to its initial seed), one backward pass, not invariant to
    loss scales (a task with a 100x larger loss dominates on average).

    Missing tasks: with a `task_mask` (a model compiled with
    `missing_labels`) and K present tasks, the weights are drawn for the K
    present tasks alone (softmax over K draws, a uniform one-hot among the
    K tasks, or a non-zero 0/1 vector of length K) and absent tasks get 0.
    The draws are exactly those of a strategy built for K tasks with the
    same seed state: the j-th present task (in task order) receives the
    random numbers that task j of that strategy would receive, and the
    generator advances once per step as usual. With `training=False` the
    present tasks get the expected weights for K tasks (1/K, or
    2^(K-1) / (2^K - 1) for "bernoulli"). With no task present every
    weight is 0.

    Args:
        distribution: one of "normal" (default, the LibMTL default and the
            paper's main choice), "uniform", "dirichlet", "bernoulli",
            "constrained_bernoulli".
        seed: None or an int, the seed of the strategy's
            `keras.random.SeedGenerator` (a given seed gives the same weight
            sequence).
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.random_loss_weighting import (
    ...     RandomLossWeighting)
    >>> strategy = RandomLossWeighting(seed=0)
    >>> _, weights = strategy(keras.ops.convert_to_tensor([1.0, 2.0, 3.0]))
    >>> round(float(keras.ops.sum(weights)), 5)
    1.0
    >>> _, weights = strategy(keras.ops.ones(3), training=False)
    >>> [round(float(w), 3) for w in weights]
    [0.333, 0.333, 0.333]

    References:
        Baijiong Lin, Feiyang Ye, Yu Zhang, Ivor W. Tsang. "Reasonable
        Effectiveness of Random Weighting: A Litmus Test for Multi-Task
        Learning". Transactions on Machine Learning Research (TMLR), 2022.
        arXiv:2111.10603 (earlier title "A Closer Look at Loss Weighting in
        Multi-Task Learning"). Code: LibMTL
        (median-research-group/LibMTL, `LibMTL/weighting/RLW.py`; the
        distribution options are in its earlier versions of that file).

    Note:
        Following LibMTL, the Dirichlet draws (already on the simplex) are
        still passed through a softmax, which makes them close to uniform
        (each w_t lies in [1 / (e + T - 1), e / (e + T - 1)]); the paper's
        text was not re-checked on this point. The Bernoulli weights are not
        normalised (LibMTL). The paper's sixth distribution (a normal with
        random mean and variance) is not offered. The draws are built from
        the library's counter-based uniform generator
        (`_portable_random_ops`, 24-bit resolution; normal draws by
        Box-Muller) rather than `keras.random`, whose TensorFlow kernels
        give different numbers under XLA: a seeded run then weights the
        tasks the same way eagerly, in graphs and in `jit_compile=True`
        steps. The random state of `seed_generator` is one of the strategy's
        weights (`Strategy.build` adds it; Keras alone would leave it out),
        so `set_weights`, `.keras` files and `BackupAndRestore` continue the
        same random sequence.
    """

    stateful = True
    supports_missing_tasks = True

    def __init__(self, distribution="normal", seed=None, **kwargs):
        super().__init__(**kwargs)
        key = distribution.strip().lower() if isinstance(distribution, str) else None
        if key not in _DISTRIBUTIONS:
            raise ValueError(
                "RandomLossWeighting `distribution` must be one of "
                f"{_DISTRIBUTIONS}, got distribution={distribution!r}."
            )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
        ):
            raise ValueError(
                f"RandomLossWeighting `seed` must be None or an int, got seed={seed!r}."
            )
        self.distribution = key
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self._initial_seed_state = [
            int(v) for v in ops.convert_to_numpy(self.seed_generator.state.value)
        ]

    # --- Sampling -------------------------------------------------------

    def _uniform(self, shape):
        """U[0, 1) draws, the same eagerly, in graphs and under XLA."""
        return portable_uniform(shape, self.seed_generator, dtype=self.compute_dtype)

    def _sample(self, num_tasks):
        if self.distribution == "normal":
            # Box-Muller: two independent uniform vectors give N(0, 1) draws.
            u = self._uniform((2, num_tasks))
            radius = ops.sqrt(-2.0 * ops.log(1.0 - u[0]))  # 1 - u in (0, 1]
            return task_softmax(radius * ops.cos(2.0 * math.pi * u[1]))
        if self.distribution == "uniform":
            return task_softmax(self._uniform((num_tasks,)))
        if self.distribution == "dirichlet":
            # Dir(1, ..., 1) = independent Exp(1) variables, normalised.
            exponential = -ops.log(1.0 - self._uniform((num_tasks,)))
            return task_softmax(exponential / ops.sum(exponential))
        if self.distribution == "constrained_bernoulli":
            index = ops.cast(ops.floor(self._uniform((1,))[0] * num_tasks), "int32")
            index = ops.minimum(index, num_tasks - 1)
            return ops.one_hot(index, num_tasks, dtype=self.compute_dtype)
        return self._sample_nonzero_bernoulli(num_tasks)

    def _sample_nonzero_bernoulli(self, num_tasks):
        """A uniform draw among the 2^T - 1 non-zero 0/1 vectors."""
        # CDF of the position J of the first 1, as constants:
        #   P(J <= j) = (1 - 2^-(j+1)) / (1 - 2^-T),  j = 0..T-1.
        cdf = ops.convert_to_tensor(
            [
                (1.0 - 2.0 ** -(j + 1)) / (1.0 - 2.0**-num_tasks)
                for j in range(num_tasks)
            ],
            dtype=self.compute_dtype,
        )
        u = self._uniform((num_tasks + 1,))
        first = ops.sum(ops.cast(cdf < u[0], "int32"))
        first = ops.minimum(first, num_tasks - 1)
        dtype = self.compute_dtype
        coins = ops.cast(u[1:] < 0.5, dtype)
        index = ops.arange(num_tasks, dtype="int32")
        return ops.where(
            index < first,
            ops.zeros((num_tasks,), dtype),
            ops.where(index == first, ops.ones((num_tasks,), dtype), coins),
        )

    def _sample_present(self, present):
        """Weights of the K present tasks, drawn as by a K-task strategy
        with the same seed state (0 for absent tasks).

        Each draw of `_sample` takes its random numbers from one flat
        uniform vector, one block of K per random quantity; the element
        index i of that vector determines its value whatever the length of
        the vector. The T-task vector drawn here holds every index a K-task
        strategy would read, so present task t takes element
        block * K + rank_t, where rank_t is its position among the present
        tasks."""
        num_tasks = self.num_tasks
        dtype = self.compute_dtype
        ranks = present_ranks(present)
        safe_ranks = ops.maximum(ranks, 0)
        count = present_count(present, "int32")
        zeros = ops.zeros((num_tasks,), dtype)

        def take(values, offset):
            return ops.take(values, offset + safe_ranks)

        if self.distribution == "normal":
            u = self._uniform((2 * num_tasks,))
            radius = ops.sqrt(-2.0 * ops.log(1.0 - take(u, 0)))
            z = radius * ops.cos(2.0 * math.pi * take(u, count))
            return masked_softmax(z, present)
        if self.distribution == "uniform":
            return masked_softmax(take(self._uniform((num_tasks,)), 0), present)
        if self.distribution == "dirichlet":
            exponential = -ops.log(1.0 - take(self._uniform((num_tasks,)), 0))
            exponential = ops.where(present, exponential, zeros)
            total = ops.sum(exponential)
            total = ops.where(total > 0, total, ops.ones_like(total))
            return masked_softmax(exponential / total, present)
        if self.distribution == "constrained_bernoulli":
            u = self._uniform((1,))[0]
            index = ops.cast(ops.floor(u * ops.cast(count, dtype)), "int32")
            index = ops.minimum(index, count - 1)
            chosen = ops.logical_and(present, ops.equal(ranks, index))
            return ops.cast(chosen, dtype)
        # "bernoulli": the CDF of the first 1 for K tasks, row K - 1 of a
        # constant table (the same float32 constants as `_sample` uses for
        # K tasks), +inf beyond K so that those entries are never counted.
        table = [
            [
                (1.0 - 2.0 ** -(j + 1)) / (1.0 - 2.0**-k) if j < k else math.inf
                for j in range(num_tasks)
            ]
            for k in range(1, num_tasks + 1)
        ]
        cdf = ops.take(
            ops.convert_to_tensor(table, dtype=dtype), ops.maximum(count - 1, 0), axis=0
        )
        u = self._uniform((num_tasks + 1,))
        first = ops.sum(ops.cast(cdf < u[0], "int32"))
        first = ops.minimum(first, count - 1)
        coins = ops.cast(take(u, 1) < 0.5, dtype)
        weights = ops.where(
            ranks < first,
            zeros,
            ops.where(ops.equal(ranks, first), ops.ones_like(zeros), coins),
        )
        return ops.where(present, weights, zeros)

    def expected_weights(self, num_tasks=None):
        """Returns E[w], the weights used when `training=False`."""
        num_tasks = self.num_tasks if num_tasks is None else int(num_tasks)
        if self.distribution == "bernoulli":
            # 2^(T-1) / (2^T - 1), written so that it cannot overflow.
            value = 0.5 / (1.0 - 2.0**-num_tasks)
        else:
            value = 1.0 / num_tasks
        return ops.full((num_tasks,), value, dtype=self.compute_dtype)

    # --- Contract -------------------------------------------------------

    def compute_weights(self, losses, training=True, task_mask=None):
        num_tasks = self.num_tasks
        if task_mask is not None:
            present = present_tasks(task_mask)
            if not training:
                weights = self._expected_present_weights(present)
            else:
                weights = self._sample_present(present)
            return ops.cast(weights, losses.dtype)
        if not training:
            return ops.cast(self.expected_weights(num_tasks), losses.dtype)
        return ops.cast(self._sample(num_tasks), losses.dtype)

    def _expected_present_weights(self, present):
        """E[w] for the K present tasks (0 for absent ones)."""
        dtype = self.compute_dtype
        count = ops.maximum(present_count(present, dtype), 1.0)
        if self.distribution == "bernoulli":
            value = 0.5 / (1.0 - ops.power(2.0, -count))
        else:
            value = 1.0 / count
        return ops.where(present, value, ops.zeros((self.num_tasks,), dtype))

    def reset_state(self):
        self.seed_generator.state.assign(
            ops.convert_to_tensor(
                self._initial_seed_state, dtype=self.seed_generator.state.dtype
            )
        )

    def get_config(self):
        config = super().get_config()
        config.update({"distribution": self.distribution, "seed": self.seed})
        return config
