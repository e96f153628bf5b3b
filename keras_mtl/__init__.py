"""keras_mtl: multi-task learning for Keras 3.

One network, several tasks: `MultiTaskModel` trains a shared trunk with task
heads under any loss-weighting or gradient-aggregation strategy of
`keras_mtl.weighting`.
"""

from keras_mtl import datasets, layers, models, weighting
from keras_mtl.models.multi_task_model import MultiTaskModel
from keras_mtl.version import __version__

__all__ = ["MultiTaskModel", "datasets", "layers", "models", "weighting", "__version__"]
