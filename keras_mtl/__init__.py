"""keras_mtl: multi-task learning for Keras 3.

One network, several tasks: `MultiTaskModel` trains a shared trunk with task
heads under any loss-weighting or gradient-aggregation strategy of
`keras_mtl.weighting`.
"""

from keras_mtl import weighting
from keras_mtl.version import __version__

__all__ = ["weighting", "__version__"]
