"""Multi-task layers and architecture builders."""

from keras_mtl.layers.auxiliary_module import AuxiliaryModule

__all__ = ["AuxiliaryModule"]
