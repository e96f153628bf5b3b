"""Multi-task models and builders."""

from keras_mtl.models.add_auxiliary_module import add_auxiliary_module
from keras_mtl.models.multi_task_model import MultiTaskModel

__all__ = ["MultiTaskModel", "add_auxiliary_module"]
