"""Problems and helpers for checking multi-task strategies."""

from keras_mtl.testing.conflicting_toy import (
    conflicting_toy_losses,
    run_conflicting_toy,
)

__all__ = ["conflicting_toy_losses", "run_conflicting_toy"]
