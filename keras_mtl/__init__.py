"""keras_mtl: multi-task learning for Keras 3.

One network, several tasks: `MultiTaskModel` trains a shared trunk with task
heads under any loss-weighting or gradient-aggregation strategy of
`keras_mtl.weighting`.

`import keras_mtl` needs only Keras and its backend: the subpackages that
may need more (`datasets`, `tuner`, `compare`, `testing`) are imported at
their first use, as `keras_mtl.datasets` or `import keras_mtl.tuner`, and say
what to install when a package they need is missing.
"""

import importlib

from keras_mtl import layers, models, weighting
from keras_mtl.models.multi_task_model import MultiTaskModel
from keras_mtl.version import __version__

_LAZY_SUBPACKAGES = ("compare", "datasets", "testing", "tuner")


def __getattr__(name):
    # PEP 562: `keras_mtl.datasets` imports the subpackage at first access.
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"keras_mtl.{name}")
    raise AttributeError(f"module 'keras_mtl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBPACKAGES))


__all__ = [
    "MultiTaskModel",
    "datasets",
    "layers",
    "models",
    "weighting",
    "__version__",
]
