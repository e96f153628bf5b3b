"""Registration of keras_mtl objects with Keras' serialization."""

import keras

PACKAGE = "keras_mtl"


def register_serializable(cls):
    """Registers `cls` with Keras under the `keras_mtl>` prefix.

    Every public layer, model and strategy of the library goes through this
    decorator, so that `keras.models.load_model` finds it without
    `custom_objects`.
    """
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
