"""Multi-task models and builders."""

from keras_mtl.models.add_auxiliary_module import add_auxiliary_module
from keras_mtl.models.attach_heads import attach_heads
from keras_mtl.models.cross_stitch_network import cross_stitch_network
from keras_mtl.models.multi_task_model import MultiTaskModel
from keras_mtl.models.task_routed_model import task_routed_model

__all__ = [
    "MultiTaskModel",
    "add_auxiliary_module",
    "attach_heads",
    "cross_stitch_network",
    "task_routed_model",
]
