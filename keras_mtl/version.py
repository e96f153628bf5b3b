"""The version of keras_mtl."""

__version__ = "0.1.0.dev0"
