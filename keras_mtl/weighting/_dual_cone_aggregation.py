"""The shared base of UPGrad and DualProj (TorchJD's dual-cone aggregators).

Both take a preference vector p and the Gramian normalisation and
regularisation constants of TorchJD, and both solve a QP on the dual cone
of the task gradients; they differ only in what they project (each task's
gradient for UPGrad, the preference-weighted mean for DualProj).
"""

import math

from keras import ops

from keras_mtl.weighting._dual_cone_ops import normalize_and_regularize
from keras_mtl.weighting._solver_ops import solver_dtype
from keras_mtl.weighting.gradient_aggregation import GradientAggregation

_EPS_MODES = ("absolute", "relative")


def _check_pref_vector(cls_name, pref_vector):
    if pref_vector is None:
        return None
    if isinstance(pref_vector, str):
        raise ValueError(
            f"{cls_name} `pref_vector` must be None or a sequence of floats, "
            f"got {pref_vector!r}."
        )
    try:
        values = [float(v) for v in pref_vector]
    except TypeError as error:
        raise ValueError(
            f"{cls_name} `pref_vector` must be None or a sequence of floats, "
            f"got {pref_vector!r}."
        ) from error
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"{cls_name} `pref_vector` must be a non-empty sequence of finite "
            f"floats, got {pref_vector!r}."
        )
    return values


def _check_eps(cls_name, name, value):
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{cls_name} `{name}` must be a finite non-negative float, got {value!r}."
        )
    return value


class DualConeAggregation(GradientAggregation):
    """Arguments, validation and Gramian preparation of UPGrad and DualProj.

    Args:
        pref_vector: the preference p (None: p_t = 1/T).
        norm_eps, reg_eps: TorchJD's Gramian normalisation and
            regularisation constants.
        eps_mode: "absolute" (TorchJD) or "relative" (no absolute
            threshold on the Gramian's trace), see
            `_dual_cone_ops.normalize_and_regularize`.
    """

    requires = "gramian"
    supports_missing_tasks = True

    def __init__(
        self,
        pref_vector=None,
        norm_eps=1e-4,
        reg_eps=1e-4,
        eps_mode="absolute",
        **kwargs,
    ):
        super().__init__(**kwargs)
        name = type(self).__name__
        if eps_mode not in _EPS_MODES:
            raise ValueError(
                f"{name} `eps_mode` must be one of {_EPS_MODES}, got {eps_mode!r}."
            )
        self.eps_mode = eps_mode
        self.pref_vector = _check_pref_vector(name, pref_vector)
        self.norm_eps = _check_eps(name, "norm_eps", norm_eps)
        self.reg_eps = _check_eps(name, "reg_eps", reg_eps)

    def build(self, input_shape):
        super().build(input_shape)
        if self.pref_vector is not None and len(self.pref_vector) != self.num_tasks:
            raise ValueError(
                f"{type(self).__name__} `pref_vector` has {len(self.pref_vector)} "
                f"entries but the strategy is built for {self.num_tasks} tasks."
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pref_vector": (
                    None if self.pref_vector is None else list(self.pref_vector)
                ),
                "norm_eps": self.norm_eps,
                "reg_eps": self.reg_eps,
                "eps_mode": self.eps_mode,
            }
        )
        return config

    def _preference_and_matrix(self, gramian, task_mask=None):
        """The preference `(T,)` and prepared Gramian `(T, T)`, in float64
        (in float32 on JAX without x64, see `solver_dtype`).

        With `task_mask`, the absent tasks' rows and columns of the Gramian
        are zeroed and their preference is 0; the default preference is
        1/K over the K present tasks, a given one keeps its entries for the
        present tasks. The prepared matrix is then block diagonal: its
        present block is the one a strategy built for the present tasks
        prepares (same trace), the absent block `reg_eps * I`, so the QPs
        give the absent tasks v = 0 and the present ones the K-task
        solution.
        """
        gramian = ops.convert_to_tensor(gramian)
        num_tasks = gramian.shape[0]
        wide = solver_dtype()
        if task_mask is None:
            if self.pref_vector is None:
                pref = ops.full((num_tasks,), 1.0 / num_tasks, dtype=wide)
            else:
                pref = ops.convert_to_tensor(self.pref_vector, dtype=wide)
        else:
            present = ops.cast(ops.convert_to_tensor(task_mask) > 0, wide)
            if self.pref_vector is None:
                pref = present / ops.maximum(ops.sum(present), 1.0)
            else:
                pref = ops.convert_to_tensor(self.pref_vector, dtype=wide) * present
            keep = ops.cast(present, gramian.dtype)
            gramian = gramian * keep[:, None] * keep[None, :]
        matrix = normalize_and_regularize(
            gramian, self.norm_eps, self.reg_eps, self.eps_mode
        )
        return pref, ops.cast(matrix, wide)
