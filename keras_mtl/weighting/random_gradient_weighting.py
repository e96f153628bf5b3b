"""Random gradient weighting, RGW (Lin et al., TMLR 2022)."""

from __future__ import annotations

from typing import ClassVar

from keras import ops

from keras_mtl.weighting._random_task_weights import RandomTaskWeights
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy


@register_strategy("rgw", "random_gradient_weighting")
class RandomGradientWeighting(RandomTaskWeights, GradientAggregation):
    """Combines the per-task gradients with fresh random weights each step.

    Notation: G is the `(T, P)` matrix of task gradients g_t. At every
    training step a vector of T random numbers is drawn, independently of
    the data, and mapped to weights w; the shared update is

        update = sum_t w_t g_t = w^T G.

    The distributions (`distribution=`) are those of random loss weighting
    (`RandomLossWeighting`, the paper's twin method): the default "normal"
    draws z ~ N(0, I_T) and sets w = softmax(z), so that w > 0,
    sum_t w_t = 1 and, by symmetry, E[w_t] = 1/T; "uniform", "dirichlet",
    "bernoulli" and "constrained_bernoulli" are as documented there.

    Scale: with the softmax distributions the update is a random convex
    combination of the task gradients, with the scale of their MEAN (as in
    LibMTL's `RGW.py` and TorchJD's `Random`), not of their sum: its
    expectation is the row mean of G.

    RGW and RLW: for the same w, RLW's gradient of sum_t w_t L_t has the
    same shared part, w^T G, but scales each head's gradient by w_t, while
    RGW, like every gradient method here (LibMTL's convention), gives each
    head its own task's gradient, unscaled. A seeded RGW draws exactly the
    weights of a `RandomLossWeighting` with the same `distribution` and
    `seed`, step for step.

    With `training=False` no random number is drawn: the weights are E[w]
    (1/T for the softmax distributions and "constrained_bernoulli"), so the
    random state does not advance.

    Properties: stateful (only the random generator; `reset_state()`
    rewinds it to its initial seed); T backward passes (one per task, like
    every gradient method); not invariant to gradient scales; supports
    `rep_grad` (LibMTL's RGW does: the weights do not depend on the
    gradients).

    Missing tasks: with a `task_mask` and K present tasks, the weights are
    drawn for the K present tasks alone, exactly as a strategy built for K
    tasks with the same seed state would draw them (see
    `RandomLossWeighting`); absent tasks get weight 0.

    Args:
        distribution: one of "normal" (default, the paper's, LibMTL's and
            TorchJD's), "uniform", "dirichlet", "bernoulli",
            "constrained_bernoulli".
        seed: None or an int, the seed of the strategy's
            `keras.random.SeedGenerator`.
        rep_grad: see `GradientAggregation`.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.random_gradient_weighting import (
    ...     RandomGradientWeighting)
    >>> grads = keras.ops.convert_to_tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> strategy = RandomGradientWeighting(seed=0)
    >>> update, weights = strategy(grads)  # a random convex combination
    >>> round(float(keras.ops.sum(weights)), 5)
    1.0
    >>> update, weights = strategy(grads, training=False)  # E[w] = 1/T
    >>> [round(float(v), 4) for v in update]
    [0.6667, 0.6667]

    References:
        Baijiong Lin, Feiyang Ye, Yu Zhang, Ivor W. Tsang. "Reasonable
        Effectiveness of Random Weighting: A Litmus Test for Multi-Task
        Learning". Transactions on Machine Learning Research (TMLR), 2022.
        arXiv:2111.10603. Code: LibMTL (median-research-group/LibMTL,
        `LibMTL/weighting/RGW.py` on branch v1.1.6, commit b65bf41);
        TorchJD 0.18.0 (`torchjd/aggregation/_random.py`, `Random`).

    Note:
        Checked against TorchJD 0.18.0's `Random` given the same weights
        (its weights are softmax(randn(T)) from torch's global generator,
        which cannot be reproduced here): the update w^T G agrees to 1e-16
        (float64) and 6e-8 (float32).
        The draws are not torch's: they come from the library's portable
        uniform generator (normal draws by Box-Muller, 24-bit uniforms),
        identical eagerly, in graphs and under XLA; the seed state is one of
        the strategy's weights (saved, restored, rewound by `reset_state`).
        The distribution options other than "normal" are those LibMTL
        offers for RLW (the paper's ablation); LibMTL's RGW has only the
        normal one.
    """

    stateful = True
    supports_missing_tasks = True
    supports_rep_grad: ClassVar[bool] = True

    def __init__(self, distribution="normal", seed=None, rep_grad=False, **kwargs):
        super().__init__(rep_grad=rep_grad, **kwargs)
        self._init_random_weights(distribution, seed)

    def call(self, grads, losses=None, training=True, task_mask=None):
        self._check_num_tasks(grads, "gradients")
        weights = self.random_weights(training=training, task_mask=task_mask)
        weights = ops.cast(weights, grads.dtype)
        if task_mask is not None:
            weights = weights * ops.cast(task_mask, grads.dtype)
        return ops.matmul(weights[None, :], grads)[0], weights

    def get_config(self):
        config = super().get_config()
        config.update({"distribution": self.distribution, "seed": self.seed})
        return config
