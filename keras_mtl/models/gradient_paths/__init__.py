"""The gradient paths of `MultiTaskModel`'s training step (see `base.py`).

- `LossGradientPath`: strategies of the task losses (`requires="losses"`).
- `MatrixGradientPath`: gradient methods, `per_task_gradients="matrix"`.
- `StagedGramianGradientPath`: Gramian methods, `per_task_gradients="gramian"`
  (stage by stage where the trunk has cuts, else `GramianGradientPath`).
- `RepresentationGradientPath`: strategies with `rep_grad=True`.
- `MultiBatchGradientPath`: strategies fed per-task gradients on several
  sub-batches of each batch (`batches_per_step > 1`: MoDo, SDMGrad).
- `LookaheadGradientPath`: the loss path after a look-ahead on a held-out
  half of the batch (`lookahead`: Auto-Lambda).
"""

import keras

from keras_mtl.models.gradient_paths.base import GradientPath, StepResult
from keras_mtl.models.gradient_paths.gramian_path import GramianGradientPath
from keras_mtl.models.gradient_paths.lookahead_path import LookaheadGradientPath
from keras_mtl.models.gradient_paths.loss_path import LossGradientPath
from keras_mtl.models.gradient_paths.matrix_path import MatrixGradientPath
from keras_mtl.models.gradient_paths.multi_batch_path import MultiBatchGradientPath
from keras_mtl.models.gradient_paths.representation_path import (
    RepresentationGradientPath,
)
from keras_mtl.models.gradient_paths.staged_gramian_path import (
    StagedGramianGradientPath,
)


def select_gradient_path(model, strategy, per_task_gradients):
    """The gradient path for `strategy` on `model`, validated (it raises
    when the model cannot give the strategy what it needs)."""
    if keras.backend.backend() == "jax":
        return _select_jax_path(model, strategy, per_task_gradients)
    if strategy.lookahead:
        return LookaheadGradientPath(model)
    if strategy.requires == "losses":
        return LossGradientPath(model)
    if getattr(strategy, "rep_grad", False):
        return RepresentationGradientPath(model)
    if strategy.batches_per_step > 1:
        return MultiBatchGradientPath(model)
    if per_task_gradients == "gramian":
        return StagedGramianGradientPath(model)
    return MatrixGradientPath(model)


def _select_jax_path(model, strategy, per_task_gradients):
    from keras_mtl.models.gradient_paths import jax_paths

    if strategy.lookahead:
        return jax_paths.JaxLookaheadGradientPath(model)
    if strategy.requires == "losses":
        return jax_paths.JaxLossGradientPath(model)
    if getattr(strategy, "rep_grad", False):
        return jax_paths.JaxRepresentationGradientPath(model)
    if strategy.batches_per_step > 1:
        return jax_paths.JaxMultiBatchGradientPath(model)
    if per_task_gradients == "gramian":
        return jax_paths.JaxGramianGradientPath(model)
    return jax_paths.JaxMatrixGradientPath(model)


__all__ = [
    "GradientPath",
    "GramianGradientPath",
    "LookaheadGradientPath",
    "LossGradientPath",
    "MatrixGradientPath",
    "MultiBatchGradientPath",
    "RepresentationGradientPath",
    "StagedGramianGradientPath",
    "StepResult",
    "select_gradient_path",
]
