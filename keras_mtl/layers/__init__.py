"""Multi-task layers and architecture builders."""

from keras_mtl.layers.auxiliary_module import AuxiliaryModule
from keras_mtl.layers.cgc import CustomizedGateControl
from keras_mtl.layers.cross_stitch import CrossStitch
from keras_mtl.layers.dselect_k import DSelectK
from keras_mtl.layers.fold_tasks import FoldTasks
from keras_mtl.layers.mmoe import MMoE
from keras_mtl.layers.mtan_attention import MTANAttention
from keras_mtl.layers.multi_backbone import MultiBackbone, load_backbone_weights
from keras_mtl.layers.ple import ProgressiveLayeredExtraction
from keras_mtl.layers.stacked_birnn import StackedBiRNN
from keras_mtl.layers.task_routing_layer import TaskRoutingLayer
from keras_mtl.layers.unfold_tasks import UnfoldTasks

__all__ = [
    "AuxiliaryModule",
    "CrossStitch",
    "CustomizedGateControl",
    "DSelectK",
    "FoldTasks",
    "MMoE",
    "MTANAttention",
    "MultiBackbone",
    "ProgressiveLayeredExtraction",
    "StackedBiRNN",
    "TaskRoutingLayer",
    "UnfoldTasks",
    "load_backbone_weights",
]
