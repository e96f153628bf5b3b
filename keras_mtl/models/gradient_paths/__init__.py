"""The gradient paths of `MultiTaskModel`'s training step (see `base.py`).

- `LossGradientPath`: strategies of the task losses (`requires="losses"`).
- `MatrixGradientPath`: gradient methods, `per_task_gradients="matrix"`.
- `StagedGramianGradientPath`: Gramian methods, `per_task_gradients="gramian"`
  (stage by stage where the trunk has cuts, else `GramianGradientPath`).
- `RepresentationGradientPath`: strategies with `rep_grad=True`.
"""

from keras_mtl.models.gradient_paths.base import GradientPath, StepResult
from keras_mtl.models.gradient_paths.gramian_path import GramianGradientPath
from keras_mtl.models.gradient_paths.loss_path import LossGradientPath
from keras_mtl.models.gradient_paths.matrix_path import MatrixGradientPath
from keras_mtl.models.gradient_paths.representation_path import (
    RepresentationGradientPath,
)
from keras_mtl.models.gradient_paths.staged_gramian_path import (
    StagedGramianGradientPath,
)


def select_gradient_path(model, strategy, per_task_gradients):
    """The gradient path for `strategy` on `model`, validated (it raises
    when the model cannot give the strategy what it needs)."""
    if strategy.requires == "losses":
        return LossGradientPath(model)
    if getattr(strategy, "rep_grad", False):
        return RepresentationGradientPath(model)
    if per_task_gradients == "gramian":
        return StagedGramianGradientPath(model)
    return MatrixGradientPath(model)


__all__ = [
    "GradientPath",
    "GramianGradientPath",
    "LossGradientPath",
    "MatrixGradientPath",
    "RepresentationGradientPath",
    "StagedGramianGradientPath",
    "StepResult",
    "select_gradient_path",
]
