"""COSMOS scalarisation: a weighted sum rewarded for aligning with a ray."""

from __future__ import annotations

from keras import ops

from keras_mtl.weighting._argument_ops import as_float, float_vector
from keras_mtl.weighting._present_task_ops import present_count, present_tasks
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

# Each norm of the cosine is floored here (torch's `cosine_similarity`).
_NORM_EPSILON = 1e-8


def _floored_norm(x):
    """max(||x||, eps), written so that its gradient is finite (0) at x = 0."""
    return ops.sqrt(ops.maximum(ops.sum(x * x), _NORM_EPSILON**2))


@register_strategy("cosmos")
class COSMOS(LossWeighting):
    """A linear scalarisation minus the cosine between losses and preference.

    Notation: L the `(T,)` task losses, r the preference ray (`preference`),
    lambda >= 0 (`lambda_`). The objective is

        l(L; r) = sum_t r_t L_t - lambda * cos(r, L),
        cos(r, L) = (r / max(||r||, eps)) . (L / max(||L||, eps)),  eps = 1e-8,

    whose gradient with respect to L (reported as the task weights) is

        dl/dL = r - lambda * (r^ - cos(r, L) L^) / ||L||,

    with r^ = r / ||r|| and L^ = L / ||L||. The cosine term pulls the loss
    vector towards the ray r, which is what spreads the solutions of
    different rays along the Pareto front. It is invariant to a common
    scaling of the losses, and stationary when L is parallel to r
    (then dl/dL = r).

    Scale: the linear part has the scale of the preference: with the
    default r_t = 1/T, that of the MEAN of the losses (the paper's rays lie
    on the simplex).

    Properties: stateless, one backward pass, not invariant to loss scales
    (the linear part).

    Missing tasks: with a `task_mask`, the objective is that of COSMOS over
    the present tasks alone: the default ray becomes 1/K over the K present
    tasks; a given `preference` keeps its entries for them (not
    renormalised). Absent tasks get weight 0.

    Args:
        lambda_: lambda >= 0, the weight of the cosine term (default 2.0,
            the official code's value on Multi-MNIST; the paper uses 0.01 to
            8 depending on the data set). 0 gives the linear scalarisation.
        preference: None (r_t = 1/T) or one float >= 0 per task, the ray r.
        **kwargs: passed to `LossWeighting` (`name`, `dtype`).

    Example:

    >>> from keras_mtl.weighting.cosmos import COSMOS
    >>> strategy = COSMOS(lambda_=2.0, preference=[0.2, 0.3, 0.5])
    >>> value, weights = strategy(keras.ops.convert_to_tensor([1.0, 2.0, 3.0]))
    >>> round(float(value), 5)
    0.30565
    >>> [round(float(v), 4) for v in weights]
    [0.169, 0.3248, 0.4938]

    References:
        Michael Ruchte, Josif Grabocka. "Scalable Pareto Front Approximation
        for Deep Multi-Objective Learning". IEEE International Conference
        on Data Mining (ICDM), 2021. arXiv:2103.13392. Official code:
        https://github.com/ruchtem/cosmos (`multi_objective/methods/cosmos/
        cosmos.py`). Matched to TorchJD 0.18.0
        (`torchjd/scalarization/_cosmos.py`, `COSMOS`): same value and
        gradient with respect to the losses to 1e-15 in float64 and 1e-6
        (relative) in float32, for lambda in {0, 0.5, 2, 8} on random,
        parallel-to-the-ray, duplicated and mixed-scale losses.

    Note:
        COSMOS trains ONE network conditioned on the ray (the ray appended
        to the input features, or mapped to extra image channels), with a
        fresh ray r ~ Dir(alpha) every step, so that a single model covers
        the Pareto front. This strategy implements the objective for a
        given ray, as TorchJD's `COSMOS` does: the conditioning is a
        modelling choice of the network, outside a strategy. Sampling rays
        without conditioning the network would only be random loss
        weighting (`"rlw"`, "dirichlet") plus the cosine term, so it is not
        offered. TorchJD requires the ray; the default here is the centre
        of the simplex.
    """

    supports_missing_tasks = True

    def __init__(self, lambda_=2.0, preference=None, **kwargs):
        super().__init__(**kwargs)
        lambda_ = as_float(lambda_, "lambda_", "COSMOS", allow_bool=False)
        if not lambda_ >= 0.0 or lambda_ == float("inf"):
            raise ValueError(
                f"COSMOS `lambda_` must be a finite number >= 0, got lambda_={lambda_}."
            )
        self.lambda_ = lambda_
        self.preference = float_vector(
            preference, "preference", "COSMOS", non_negative=True
        )

    def build(self, input_shape):
        super().build(input_shape)
        if self.preference is not None and len(self.preference) != self.num_tasks:
            raise ValueError(
                f"COSMOS has {len(self.preference)} `preference` values but is "
                f"used with {self.num_tasks} tasks."
            )

    def _ray(self, dtype, present):
        if self.preference is not None:
            ray = ops.convert_to_tensor(self.preference, dtype=dtype)
        elif present is None:
            ray = ops.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=dtype)
        else:
            count = ops.maximum(present_count(present, dtype), 1.0)
            ray = ops.ones((self.num_tasks,), dtype=dtype) / count
        if present is not None:
            ray = ops.where(present, ray, ops.zeros_like(ray))
        return ray

    def call(self, losses, training=True, task_mask=None):
        self._check_num_tasks(losses)
        losses = ops.cast(losses, self.compute_dtype)
        present = None if task_mask is None else present_tasks(task_mask)
        if present is not None:
            losses = ops.where(present, losses, ops.zeros_like(losses))
        ray = self._ray(losses.dtype, present)
        ray_norm = _floored_norm(ray)
        loss_norm = _floored_norm(losses)
        unit_ray = ray / ray_norm
        unit_losses = losses / loss_norm
        cosine = ops.sum(unit_ray * unit_losses)
        objective = ops.sum(ray * losses) - self.lambda_ * cosine
        weights = ray - self.lambda_ * (unit_ray - cosine * unit_losses) / loss_norm
        if present is not None:
            weights = ops.where(present, weights, ops.zeros_like(weights))
        return objective, ops.stop_gradient(weights)

    def get_config(self):
        config = super().get_config()
        config.update({"lambda_": self.lambda_, "preference": self.preference})
        return config
