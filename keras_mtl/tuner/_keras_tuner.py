"""Imports keras-tuner (and tensorboard, which its trials need) or explains.

`keras_mtl.tuner` is the only part of keras_mtl that needs keras-tuner, so
the import is checked here, once, with a message that says what to install.
On the TensorFlow backend TensorBoard is checked too: there every
keras-tuner trial imports `tensorboard.plugins.hparams`, and without it
every trial fails while `tuner.search()` returns without an error. On the
other backends keras-tuner needs neither TensorBoard nor TensorFlow.
"""

import keras

_INSTALL = (
    "pip install 'keras-mtl[tuner]' (or pip install 'keras-tuner>=1.4.7', "
    "and 'tensorboard>=2.16' on the TensorFlow backend)"
)

try:
    import keras_tuner
except ImportError as error:  # pragma: no cover - exercised by a test
    raise ImportError(
        "keras_mtl.tuner needs the keras-tuner package, which is not "
        f"installed: {_INSTALL}. The rest of keras_mtl works without it."
    ) from error

try:
    if keras.backend.backend() == "tensorflow":
        import tensorboard  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised by a test
    raise ImportError(
        "keras_mtl.tuner needs tensorboard next to keras-tuner: on the "
        "TensorFlow backend every keras-tuner trial imports "
        "tensorboard.plugins.hparams, and without it every trial fails while "
        f"tuner.search() returns quietly. Install it: {_INSTALL}."
    ) from error

__all__ = ["keras_tuner"]
