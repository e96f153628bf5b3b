"""Random task weights shared by RLW and RGW (Lin et al., TMLR 2022).

`RandomTaskWeights` is a mixin of the two strategies of the paper: random
loss weighting (`RandomLossWeighting`) weights the task losses with the
draws, random gradient weighting (`RandomGradientWeighting`) the per-task
gradients. Both draw the same weights from the same seed state, so a seeded
RLW and a seeded RGW give the same shared update (see their docstrings).
The draws use the library's counter-based uniform generator
(`_portable_random_ops`), identical eagerly, in graphs and under XLA.
"""

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

DISTRIBUTIONS = (
    "normal",
    "uniform",
    "dirichlet",
    "bernoulli",
    "constrained_bernoulli",
)


class RandomTaskWeights:
    """Mixin: random task weights drawn from `self.seed_generator`.

    The class using it calls `_init_random_weights(distribution, seed)` in
    its `__init__` (after the Keras layer's), and `random_weights(training,
    task_mask)` to get the `(T,)` weights of a step.
    """

    def _init_random_weights(self, distribution, seed):
        name = type(self).__name__
        key = distribution.strip().lower() if isinstance(distribution, str) else None
        if key not in DISTRIBUTIONS:
            raise ValueError(
                f"{name} `distribution` must be one of "
                f"{DISTRIBUTIONS}, got distribution={distribution!r}."
            )
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
        ):
            raise ValueError(
                f"{name} `seed` must be None or an int, got seed={seed!r}."
            )
        self.distribution = key
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self._initial_seed_state = [
            int(v) for v in ops.convert_to_numpy(self.seed_generator.state.value)
        ]

    def random_weights(self, training=True, task_mask=None):
        """The `(T,)` weights of a step (float32, the compute dtype).

        Draws (advancing the generator) when `training` is True; returns the
        expected weights, without drawing, otherwise. With a `task_mask`,
        the weights of a strategy built for the present tasks alone."""
        if task_mask is not None:
            present = present_tasks(task_mask)
            if not training:
                return self._expected_present_weights(present)
            return self._sample_present(present)
        if not training:
            return self.expected_weights(self.num_tasks)
        return self._sample(self.num_tasks)

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
