"""Multi-task layers and architecture builders."""

from keras_mtl.layers.auxiliary_module import AuxiliaryModule
from keras_mtl.layers.cross_stitch import CrossStitch, cross_stitch_network
from keras_mtl.layers.mmoe import MMoE
from keras_mtl.layers.mtan_attention import MTANAttention
from keras_mtl.layers.multi_backbone import MultiBackbone, load_backbone_weights
from keras_mtl.layers.ple import ProgressiveLayeredExtraction

__all__ = [
    "AuxiliaryModule",
    "CrossStitch",
    "MMoE",
    "MTANAttention",
    "MultiBackbone",
    "ProgressiveLayeredExtraction",
    "cross_stitch_network",
    "load_backbone_weights",
]
