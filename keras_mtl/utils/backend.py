"""Which Keras backends keras_mtl trains on, and the optional TensorFlow.

keras_mtl needs only Keras for its core (`weighting`, `layers`, `models`):
`import keras_mtl` works on every Keras backend and without TensorFlow
installed. Training (`MultiTaskModel.compile`) is supported on the backends
of `SUPPORTED_BACKENDS`; `check_supported_backend` says so where another is
set. The parts built on TensorFlow (the `tf.data` pipelines of
`keras_mtl.datasets`, `keras_mtl.compare`) get it
through `require_tensorflow`, which names the package to install when it is
missing.
"""

import importlib

import keras

SUPPORTED_BACKENDS = ("tensorflow", "jax")

TENSORFLOW_INSTALL = (
    "pip install 'keras-mtl[tensorflow]' (or pip install 'tensorflow>=2.16')"
)


def check_supported_backend(what="MultiTaskModel.compile"):
    """Raises unless the Keras backend is one keras_mtl trains on.

    Args:
        what: the operation refused, named in the message.

    Returns:
        The backend's name, one of `SUPPORTED_BACKENDS`.

    Raises:
        NotImplementedError: on any other backend (for example "torch" or
            "numpy"), with the supported ones and how to choose one.
    """
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        supported = " and ".join(repr(name) for name in SUPPORTED_BACKENDS)
        raise NotImplementedError(
            f"{what} does not support the Keras backend {backend!r}: keras_mtl "
            f"trains on the {supported} backends. Set the environment variable "
            "KERAS_BACKEND (for example KERAS_BACKEND=jax) before importing "
            "keras, or set 'backend' in ~/.keras/keras.json."
        )
    return backend


def require_tensorflow(what):
    """Imports and returns `tensorflow`, or explains what to install.

    Args:
        what: the keras_mtl module or function that needs TensorFlow, named
            in the message.

    Raises:
        ImportError: when TensorFlow is not installed. The message names
            `what`, the package and the pip command.
    """
    try:
        return importlib.import_module("tensorflow")
    except ImportError as error:
        raise ImportError(
            f"{what} needs TensorFlow, which is not installed: "
            f"{TENSORFLOW_INSTALL}. The rest of keras_mtl (MultiTaskModel, "
            "keras_mtl.weighting, keras_mtl.layers) works without it on the "
            "JAX backend."
        ) from error
