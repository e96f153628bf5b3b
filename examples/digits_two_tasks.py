"""Train one network on two tasks of real handwritten digits.

The data are scikit-learn's 1,797 real 8x8 digits (UCI optical digits,
bundled with the package, no download). Two tasks share one trunk: the digit
class (10-way) and its parity (binary). The script trains a
`keras_mtl.MultiTaskModel` with the chosen strategy and prints per-task
test metrics.

    python examples/digits_two_tasks.py --strategy=ew --epochs=30
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import keras_mtl  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("strategy", "ew", "A name from keras_mtl.weighting.available().")
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed for the split and the weights.")
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")


def load_data(seed):
    """The digits, split 75/25 with a fixed seed, as (x, {task: y}) pairs."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    targets = {"digit": y.astype("int32"), "parity": (y % 2).astype("float32")}
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.75 * len(x))
    train, test = order[:cut], order[cut:]

    def subset(idx):
        return x[idx], {task: values[idx] for task, values in targets.items()}

    return subset(train), subset(test)


def build_model():
    """A two-layer shared trunk with one head per task."""
    inputs = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(128, activation="relu", name="shared_1")(inputs)
    h = keras.layers.Dense(64, activation="relu", name="shared_2")(h)
    outputs = {
        "digit": keras.layers.Dense(10, activation="softmax", name="digit")(h),
        "parity": keras.layers.Dense(1, activation="sigmoid", name="parity")(h),
    }
    return keras_mtl.MultiTaskModel(inputs, outputs, name="digits_two_tasks")


def main(argv):
    del argv
    keras.utils.set_random_seed(FLAGS.seed)
    (x_train, y_train), (x_test, y_test) = load_data(FLAGS.seed)
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={
            "digit": "sparse_categorical_crossentropy",
            "parity": "binary_crossentropy",
        },
        loss_weighting=FLAGS.strategy,
        metrics={"digit": ["accuracy"], "parity": ["accuracy"]},
        jit_compile=FLAGS.jit_compile,
    )
    print(
        f"Training on {len(x_train)} real digits, testing on {len(x_test)}; "
        f"strategy {FLAGS.strategy!r}."
    )
    model.fit(
        x_train,
        y_train,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        verbose=2,
    )
    result = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print("\nTest metrics per task")
    print(f"{'task':<8} {'loss':>8} {'accuracy':>9}")
    for task in model.task_names:
        print(
            f"{task:<8} {result[f'{task}_loss']:>8.4f} "
            f"{result[f'{task}_accuracy']:>9.4f}"
        )


if __name__ == "__main__":
    app.run(main)
