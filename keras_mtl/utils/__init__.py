"""Small utilities shared across keras_mtl."""
