"""Small models, data and test-only strategies shared by several tests."""

import keras
import numpy as np
from keras import ops
from sklearn.datasets import load_digits

import keras_mtl
from keras_mtl.weighting.gradient_aggregation import GradientAggregation
from keras_mtl.weighting.loss_weighting import LossWeighting


def two_task_mlp(input_dim=8, hidden=16, seed=0, batch_norm=False, depth=1):
    """A trunk of `depth` Dense layers with a classification and a
    regression head."""
    initializer = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((input_dim,), name="x")
    hidden_layer = keras.layers.Dense(
        hidden, activation="tanh", kernel_initializer=initializer, name="trunk"
    )
    shared = hidden_layer(inputs)
    for i in range(2, depth + 1):
        shared = keras.layers.Dense(
            hidden, activation="tanh", kernel_initializer=initializer, name=f"trunk_{i}"
        )(shared)
    if batch_norm:
        shared = keras.layers.BatchNormalization(name="bn")(shared)
    outputs = {
        "cls": keras.layers.Dense(3, kernel_initializer=initializer, name="cls_head")(
            shared
        ),
        "reg": keras.layers.Dense(1, kernel_initializer=initializer, name="reg_head")(
            shared
        ),
    }
    return keras_mtl.MultiTaskModel(inputs, outputs, name="two_task_mlp")


TWO_TASK_LOSSES = {
    "cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    "reg": "mse",
}


def two_task_data(n=64, input_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, input_dim)).astype("float32")
    y = {
        "cls": rng.integers(0, 3, size=(n,)).astype("int32"),
        "reg": rng.normal(size=(n, 1)).astype("float32"),
    }
    return x, y


def digits_data():
    """sklearn's 1,797 real 8x8 digits: (digit class, parity) tasks."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    targets = {"digit": y.astype("int32"), "parity": (y % 2).astype("float32")}
    return x, targets


class SumOfGradients(GradientAggregation):
    """Test-only aggregator: the plain sum of the task gradients."""

    def call(self, grads, losses=None, training=True):
        return ops.sum(grads, axis=0), ops.ones((grads.shape[0],))


class RunningMeanWeighting(LossWeighting):
    """Test-only stateful strategy: weights 1 / (running mean of the loss).

    Gives the model tests a strategy whose state changes every step, so that
    save/load, checkpoint and skip-on-NaN behaviour can be checked before the
    real stateful strategies exist.
    """

    stateful = True

    def build(self, input_shape):
        super().build(input_shape)
        self.count = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="count"
        )
        self.mean = self.add_weight(
            shape=(self.num_tasks,), initializer="ones", trainable=False, name="mean"
        )

    def compute_weights(self, losses, training=True):
        if training:
            count = self.count + 1.0
            self.mean.assign(self.mean + (losses - self.mean) / count)
            self.count.assign(count)
        return 1.0 / ops.maximum(self.mean, 1e-6)

    def reset_state(self):
        self.count.assign(0.0)
        self.mean.assign(ops.ones_like(self.mean))


CUSTOM_OBJECTS = {
    "SumOfGradients": SumOfGradients,
    "RunningMeanWeighting": RunningMeanWeighting,
}
keras.saving.get_custom_objects().update(CUSTOM_OBJECTS)
