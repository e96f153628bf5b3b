"""Krum and Multi-Krum, Byzantine-robust selection of task gradients."""

from __future__ import annotations

import numbers
import warnings

from keras import ops

from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.registry import register_strategy


def _non_negative_int(owner, name, value, minimum=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{owner} `{name}` must be an int, got {name}={value!r}.")
    if value < minimum:
        raise ValueError(f"{owner} `{name}` must be >= {minimum}, got {name}={value}.")
    return int(value)


@register_strategy("krum", "multi_krum")
class Krum(GradientAggregation):
    """Krum: the task gradient closest to its neighbours (or the mean of m).

    Notation: T task gradients g_t (the rows of G), of which up to f
    (`n_byzantine`) may be arbitrary ("Byzantine"); A = G G^T the Gramian.
    The distance between two gradients is read off the Gramian,

        D_ij = ||g_i - g_j|| = sqrt(max(A_ii + A_jj - 2 A_ij, 0)),

    and the score of gradient i is the sum of its distances to its T - f - 2
    nearest other gradients,

        s(i) = sum_{j in N_i} D_ij,   N_i = the T - f - 2 nearest j != i.

    Krum selects the gradient with the smallest score; Multi-Krum
    (`n_selected = m > 1`) averages the m gradients with the smallest
    scores:

        update = (1/m) sum_{i in S} g_i,   S = the m smallest scores.

    The weights are 1/m on the selected tasks and 0 elsewhere. Scale: the
    update has the scale of ONE task gradient (a mean), as in TorchJD, not
    of a sum.

    Properties: stateless, needs only the Gramian (`requires = "gramian"`),
    permutation equivariant (up to ties between scores, broken in favour of
    the lower task index), positively homogeneous, not continuous in G (the
    selection jumps). Robustness (paper, Proposition 1): with T >= 2f + 3
    and honest gradients unbiased with bounded variance, the selected
    gradient stays within a bounded angle of the true gradient whatever the
    f others are.

    Args:
        n_byzantine: f >= 0, the number of task gradients that may be
            arbitrary. Needs T >= f + 3 (checked when the strategy is
            built); a warning says when T < 2f + 3, where the paper's
            guarantee does not hold (TorchJD accepts these silently).
        n_selected: m >= 1 (<= T), the number of gradients averaged
            (1: Krum; more: Multi-Krum).
        squared: False (default, TorchJD's choice): the score sums
            distances; True: it sums squared distances, as the paper
            defines it. The two can select different gradients.
        **kwargs: passed to `GradientAggregation` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.krum import Krum
    >>> grads = np.array([[5.0], [6.0], [14.0], [19.0], [25.0]], "float32")
    >>> keras.ops.convert_to_numpy(Krum(n_byzantine=1).aggregate(grads)).tolist()
    [6.0]
    >>> update = Krum(n_byzantine=1, squared=True).aggregate(grads)
    >>> keras.ops.convert_to_numpy(update).tolist()
    [19.0]
    >>> update = Krum(n_byzantine=1, n_selected=2).aggregate(grads)
    >>> keras.ops.convert_to_numpy(update).tolist()
    [5.5]

    References:
        Peva Blanchard, El Mahdi El Mhamdi, Rachid Guerraoui, Julien
        Stainer. "Machine Learning with Adversaries: Byzantine Tolerant
        Gradient Descent". Advances in Neural Information Processing
        Systems 30 (NeurIPS), 2017. Applied to task gradients as in TorchJD
        0.18.0 (`torchjd/aggregation/_krum.py`, `Krum`, `KrumWeighting`),
        which this class matches: on random, rank-deficient, duplicated-row
        and mixed-scale 5-row inputs with f = 0..2 and m = 1..3, the same
        update to 1e-16 (float64) and 8e-8 (float32) in the 25 cases
        without a tie at the m-th score; of the 11 with one, 2 select a
        different row (Note (3)).

    Note:
        Deviations: (1) the paper's score sums SQUARED distances; the
        default follows TorchJD (plain distances) and `squared=True` gives
        the paper's. (2) TorchJD has no default f; here `n_byzantine=1`, so
        that `compile(loss_weighting="krum")` works for T >= 4 tasks (with
        three tasks pass `n_byzantine=0`; two tasks are too few for Krum).
        (3) Ties between scores: here the lower task index wins. TorchJD
        takes `torch.topk`, whose order among equal scores follows the
        partial sort of its CPU kernel and has no rule (for scores
        [0, 0, 3, 0, 0] it selects index 1; for six equal scores, index
        3), so on ties the two may select different, equally scored
        gradients. Ties are not rare: with T = f + 3 the score is the
        distance to the nearest neighbour, so the two closest gradients
        always tie for the smallest score (and Multi-Krum with m = 2
        selects both, without ambiguity). (4) Missing tasks are
        not supported: the method needs at least f + 3 gradients, which a
        step with absent tasks may not have.
    """

    requires = "gramian"

    def __init__(self, n_byzantine=1, n_selected=1, squared=False, **kwargs):
        super().__init__(**kwargs)
        self.n_byzantine = _non_negative_int("Krum", "n_byzantine", n_byzantine)
        self.n_selected = _non_negative_int("Krum", "n_selected", n_selected, 1)
        if not isinstance(squared, bool):
            raise ValueError(f"Krum `squared` must be a bool, got squared={squared!r}.")
        self.squared = squared

    def build(self, input_shape):
        super().build(input_shape)
        num_tasks, f = self.num_tasks, self.n_byzantine
        if num_tasks < 3:
            raise ValueError(
                f"Krum needs at least 3 tasks (n_byzantine + 3), got {num_tasks}: "
                "use another strategy."
            )
        if num_tasks < f + 3:
            raise ValueError(
                f"Krum with n_byzantine={f} needs at least n_byzantine + 3 = "
                f"{f + 3} tasks, got {num_tasks}: pass n_byzantine <= "
                f"{num_tasks - 3}."
            )
        if num_tasks < self.n_selected:
            raise ValueError(
                f"Krum n_selected={self.n_selected} is more than the number of "
                f"tasks ({num_tasks}): pass n_selected <= {num_tasks}."
            )
        if num_tasks < 2 * f + 3:
            warnings.warn(
                f"Krum with n_byzantine={f} and {num_tasks} tasks: the paper's "
                f"robustness guarantee needs at least 2 * n_byzantine + 3 = "
                f"{2 * f + 3} tasks.",
                stacklevel=2,
            )

    def scores(self, gramian):
        """The `(T,)` Krum scores s(i) of the gradients with this Gramian."""
        gramian = ops.convert_to_tensor(gramian)
        num_tasks = gramian.shape[0]
        norms = ops.diagonal(gramian)
        squared = ops.maximum(norms[:, None] + norms[None, :] - 2.0 * gramian, 0.0)
        distances = squared if self.squared else ops.sqrt(squared)
        # Sorted rows start with the zero self-distance: drop it, keep the
        # next T - f - 2.
        nearest = ops.sort(distances, axis=1)[:, 1 : num_tasks - self.n_byzantine - 1]
        return ops.sum(nearest, axis=1)

    def compute_weights(self, gramian, losses=None, training=True):
        gramian = ops.convert_to_tensor(gramian)
        num_tasks = gramian.shape[0]
        _, selected = ops.top_k(-self.scores(gramian), k=self.n_selected)
        chosen = ops.sum(ops.one_hot(selected, num_tasks, dtype=gramian.dtype), axis=0)
        return chosen / float(self.n_selected)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "n_byzantine": self.n_byzantine,
                "n_selected": self.n_selected,
                "squared": self.squared,
            }
        )
        return config
