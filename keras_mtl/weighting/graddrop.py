"""Gradient Sign Dropout (Chen et al., NeurIPS 2020)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_mtl.weighting._portable_random_ops import uniform as portable_uniform
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy

# Stabiliser of the sign purity, as in the reference implementation.
_PURITY_EPS = 1e-7


@register_strategy("graddrop", "grad_drop", "gradient_sign_dropout")
class GradDrop(GradientAggregation):
    """Gradient Sign Dropout: keeps one sign per coordinate, chosen at random.

    Notation: T tasks, g_t the gradient of task t (row t of the `(T, P)`
    input, usually taken with respect to the shared representation), and
    all operations below are per coordinate p.

    The positive sign purity of the task gradients at p is

        P_p = 0.5 * (1 + sum_t g_tp / (sum_t |g_tp| + 1e-7))   in [0, 1].

    One uniform U_p ~ U[0, 1) is drawn per coordinate. If P_p > U_p the
    positive components survive, if P_p < U_p the negative ones:

        M_tp = [P_p > U_p] [g_tp > 0] + [P_p < U_p] [g_tp < 0]
        update_p = sum_t (leak + (1 - leak) M_tp) g_tp.

    Where all tasks agree in sign, P_p is (almost) 0 or 1 and the summed
    gradient passes unchanged; where they conflict, a sign is kept with
    probability equal to its share of the total magnitude, so that the
    expected kept sign follows the net gradient. `leak` in [0, 1] lets that
    fraction of every dropped component through (leak = 1 is plain
    summation). The update has the scale of a sum of task gradients.

    Defaults follow LibMTL (`leak` = 0.0 in `config.py`). The returned
    weights are nominal ones (the method masks coordinates, it does not
    weight tasks).

    Properties: stateless apart from the RNG (`seed`), T backward passes
    (or T head passes plus one trunk pass with `rep_grad=True`), invariant
    to the order of the tasks for given draws, not scale invariant (the
    purity's 1e-7 makes very small gradients look conflicting).

    With `training=False` (evaluation) the random state does not advance:
    the call draws what the next training call will draw.

    Missing tasks: with a `task_mask`, the (zero) rows of absent tasks
    are dropped: they add nothing to the purity's sums nor to the update,
    so for the same uniform draws (one per coordinate, independent of T)
    the update is exactly that of GradDrop on the present rows. Absent
    tasks get weight 0, present ones the nominal 1.

    Args:
        leak: fraction in [0, 1] of the dropped components that is still
            applied. Default 0.0 (LibMTL).
        seed: seed of the uniform draws (None for a random seed).
        rep_grad: apply the mask to gradients with respect to the shared
            representation (the paper's and LibMTL's setting; recommended)
            instead of the shared parameters.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.graddrop import GradDrop
    >>> strategy = GradDrop(seed=0)
    >>> grads = np.array([[1.0, -2.0], [3.0, -0.5]], "float32")
    >>> update = strategy.aggregate(grads)
    >>> np.round(keras.ops.convert_to_numpy(update).astype("float64"), 3).tolist()
    [4.0, -2.5]

    References:
        Zhao Chen, Jiquan Ngiam, Yanping Huang, Thang Luong, Henrik
        Kretzschmar, Yuning Chai, Dragomir Anguelov. "Just Pick a Sign:
        Optimizing Deep Multitask Models with Gradient Sign Dropout".
        NeurIPS 2020. arXiv:2010.06808. No official code; LibMTL
        (median-research-group/LibMTL, `LibMTL/weighting/GradDrop.py`) is
        the reference implementation.

    Note:
        The paper and LibMTL apply GradDrop to the gradients at a layer's
        activations and compute the purity from the batch-summed products
        g_t * sign(activation), so that a feature keeps one mask for all
        examples. The strategy only sees the `(T, P)` gradient matrix (the
        representation flattened over the batch, without the activations),
        so the purity and the mask are computed per coordinate, i.e. per
        example and feature; this equals LibMTL for a batch of one example
        with positive activations. Unlike LibMTL, parameter gradients
        (`rep_grad=False`, the default of the contract) are also accepted:
        the rule is well defined on any coordinates, but the paper motivates
        it at the activations. The uniform draws come from a counter-based
        hash of the seed generator's state (`_portable_random_ops`), so that
        eager calls and compiled (XLA) steps draw the same masks; that state
        is one of the strategy's weights, saved and restored with it.
    """

    supports_rep_grad = True
    supports_missing_tasks = True

    def __init__(self, leak=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        leak = float(leak)
        if not (math.isfinite(leak) and 0.0 <= leak <= 1.0):
            raise ValueError(f"GradDrop `leak` must be in [0, 1], got {leak!r}.")
        self.leak = leak
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"GradDrop `seed` must be None or an int, got {seed!r}.")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def sign_purity(self, grads):
        """Returns the `(P,)` positive sign purity of `(T, P)` gradients."""
        total = ops.sum(grads, axis=0)
        magnitude = ops.sum(ops.abs(grads), axis=0)
        return 0.5 * (1.0 + total / (magnitude + _PURITY_EPS))

    def _draw_uniform(self, shape, advance=True):
        """Returns U[0, 1) draws of `shape`, one per coordinate (the
        generator advances only when `advance`)."""
        return portable_uniform(shape, self.seed_generator, advance=advance)

    def call(self, grads, losses=None, training=True, task_mask=None):
        self._check_num_tasks(grads, "gradients")
        dtype = grads.dtype
        if task_mask is not None:
            # Drop the absent rows (zero by contract; zeroed to be sure).
            task_mask = ops.cast(ops.convert_to_tensor(task_mask) > 0, dtype)
            grads = grads * task_mask[:, None]
        purity = self.sign_purity(grads)
        shape = tuple(purity.shape)
        if any(d is None for d in shape):
            shape = ops.shape(purity)  # only known when the graph runs
        # A call with training=False draws what the next training call will
        # draw, without advancing the generator.
        if training:
            uniform = self._draw_uniform(shape)
        else:
            uniform = self._draw_uniform(shape, advance=False)
        uniform = ops.cast(uniform, dtype)
        keep_positive = ops.cast(purity > uniform, dtype)[None, :]
        keep_negative = ops.cast(purity < uniform, dtype)[None, :]
        mask = keep_positive * ops.cast(grads > 0, dtype) + keep_negative * ops.cast(
            grads < 0, dtype
        )
        update = ops.sum(grads * (self.leak + (1.0 - self.leak) * mask), axis=0)
        weights = ops.ones((ops.shape(grads)[0],), dtype=dtype)
        if task_mask is not None:
            weights = weights * task_mask
        return update, weights

    def get_config(self):
        config = super().get_config()
        config.update({"leak": self.leak, "seed": self.seed})
        return config
