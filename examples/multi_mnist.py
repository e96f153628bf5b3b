"""Two digits, two tasks: Multi-MNIST with any multi-task strategy.

Each image shows two real items on one canvas, one at the top left and one at
the bottom right, overlapping in the middle; one task classifies the left
item, the other the right one (Sener & Koltun, NeurIPS 2018; the benchmark of
Pareto MTL and many later multi-objective papers). Three variants
(`--dataset`):

- `multi_mnist`: two MNIST digits;
- `multi_fashion`: two Fashion-MNIST items;
- `multi_fashion_mnist`: a Fashion-MNIST item (left) and an MNIST digit
  (right).

The network is the shared LeNet of the reference code
(isl-org/MultiObjectiveOptimization, `multi_task/models/multi_lenet.py`) with
one small head per task, trained as a `keras_mtl.MultiTaskModel` with the
strategy named by `--strategy` (any name of
`keras_mtl.weighting.available()`). The script plots each task's weight and
accuracy per epoch and prints the per-task test metrics.

The images come from `keras_mtl.datasets.multi_mnist`; fetch the real files
once with `bash scripts/fetch_data.sh` (it says where they went), then:

    KERAS_MTL_DATA_DIR=data python examples/multi_mnist.py
    python examples/multi_mnist.py --dataset=multi_fashion --strategy=mgda
    python examples/multi_mnist.py --strategy=static \
        --strategy_config='{"weights": [1.0, 0.5]}'

The test curves are drawn for watching only: nothing (no early stopping, no
choice of epoch) uses them, so the final test numbers stay unbiased.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.datasets import multi_mnist  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum(
    "dataset",
    "multi_mnist",
    sorted(multi_mnist.DATASETS),
    "Which pair of sources: MNIST+MNIST, Fashion+Fashion or Fashion+MNIST.",
)
flags.DEFINE_string(
    "strategy", "ew", "A name from keras_mtl.weighting.available() (e.g. uw, mgda)."
)
flags.DEFINE_string(
    "strategy_config",
    "",
    "JSON dict of the strategy's arguments, e.g. '{\"weights\": [1, 0.5]}' for static.",
)
flags.DEFINE_integer("epochs", 20, "Training epochs.")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer(
    "num_train", 0, "Training pairs (0: one per left item of the training split)."
)
flags.DEFINE_integer("num_test", 0, "Test pairs (0: one per left item of the split).")
flags.DEFINE_integer("image_size", 28, "Side of the images (28, or 36 for the canvas).")
flags.DEFINE_integer("seed", 0, "Seed of the pairs, the shuffling and the weights.")
flags.DEFINE_string(
    "data_dir", None, "Folder of the fetched data (default: $KERAS_MTL_DATA_DIR)."
)
flags.DEFINE_string(
    "output_dir", "runs/examples/multi_mnist", "Where the figures are saved."
)
flags.DEFINE_integer(
    "verbose", 1, "Keras verbosity: 0 silent, 1 progress bar, 2 epochs."
)
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")

"""
## The data

`multi_mnist.load` gives batched `tf.data` pipelines of
`(image, {"left": label, "right": label})`, images of shape
(image_size, image_size, 1) in [0, 1].
"""


def load_data():
    common = dict(
        name=FLAGS.dataset,
        batch_size=FLAGS.batch_size,
        image_size=FLAGS.image_size,
        seed=FLAGS.seed,
        data_dir=FLAGS.data_dir,
    )
    train = multi_mnist.load(split="train", num_pairs=FLAGS.num_train or None, **common)
    test = multi_mnist.load(split="test", num_pairs=FLAGS.num_test or None, **common)
    return train, test


"""
## The model: a shared LeNet and two heads

As the reference MultiLeNet: conv(10, 5x5), max-pool, ReLU, conv(20, 5x5),
channel dropout, max-pool, ReLU, dense(50), ReLU are shared; each task has
dense(50), ReLU, dropout, dense(10), all dropout rates 0.5. (The reference
shares one channel mask by the whole batch and does not rescale by
1/(1 - rate); Keras' `SpatialDropout2D` and `Dropout` draw masks per image and
rescale.)
"""


def build_model(image_size, tasks=multi_mnist.TASKS):
    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Conv2D(10, 5, name="conv1")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(20, 5, name="conv2")(x)
    x = layers.SpatialDropout2D(0.5)(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    shared = layers.Dense(50, activation="relu", name="shared_fc")(x)
    outputs = {}
    for task in tasks:
        h = layers.Dense(50, activation="relu", name=f"{task}_fc1")(shared)
        h = layers.Dropout(0.5)(h)
        outputs[task] = layers.Dense(10, name=task)(h)  # logits
    return keras_mtl.MultiTaskModel(inputs, outputs, name="multi_lenet")


def make_strategy(name, config_json):
    """A strategy from its registered name and an optional JSON config."""
    config = json.loads(config_json) if config_json else {}
    if not isinstance(config, dict):
        raise ValueError(f"--strategy_config must be a JSON dict, got {config_json!r}.")
    return keras_mtl.weighting.get({"class_name": name, "config": config})


"""
## Figures

Matplotlib is imported only here (with the file-only Agg back end), so the
script runs without it and says so.
"""


def pyplot():
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib).")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history, tasks, output_dir, title):
    plt = pyplot()
    if plt is None:
        return []
    os.makedirs(output_dir, exist_ok=True)
    epochs = range(1, len(history["loss"]) + 1)
    saved = []

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for task in tasks:
        ax.plot(epochs, history[f"{task}_weight"], marker="o", label=task)
    ax.set(xlabel="epoch", ylabel="weight (epoch mean)", title=f"Task weights: {title}")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    saved.append(os.path.join(output_dir, "task_weights.png"))
    fig.savefig(saved[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, task in enumerate(tasks):
        color = f"C{i}"
        ax.plot(epochs, history[f"{task}_accuracy"], color=color, label=f"{task} train")
        ax.plot(
            epochs,
            history[f"val_{task}_accuracy"],
            color=color,
            linestyle="--",
            label=f"{task} test",
        )
    ax.set(xlabel="epoch", ylabel="accuracy", title=f"Accuracy: {title}")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    saved.append(os.path.join(output_dir, "accuracy.png"))
    fig.savefig(saved[-1], dpi=120)
    plt.close(fig)
    return saved


"""
## Training and evaluation
"""


def main(argv):
    del argv
    start = time.time()
    keras.utils.set_random_seed(FLAGS.seed)
    train, test = load_data()
    model = build_model(FLAGS.image_size)
    strategy = make_strategy(FLAGS.strategy, FLAGS.strategy_config)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss={task: loss for task in model.task_names},
        loss_weighting=strategy,
        metrics={task: ["accuracy"] for task in model.task_names},
        jit_compile=FLAGS.jit_compile,
    )
    num_train = sum(int(x.shape[0]) for x, _ in train)
    num_test = sum(int(x.shape[0]) for x, _ in test)
    print(
        f"{FLAGS.dataset}: {num_train} training and {num_test} test images of "
        f"{FLAGS.image_size}x{FLAGS.image_size}; strategy "
        f"{type(strategy).__name__} ({FLAGS.strategy!r}); "
        f"{model.count_params()} parameters."
    )
    history = model.fit(
        train,
        validation_data=test,
        epochs=FLAGS.epochs,
        verbose=FLAGS.verbose,
        shuffle=False,  # the pipeline reshuffles itself every epoch
    ).history
    result = model.evaluate(test, verbose=0, return_dict=True)

    title = f"{FLAGS.dataset}, {FLAGS.strategy}"
    for path in plot_history(history, model.task_names, FLAGS.output_dir, title):
        print(f"Saved {path}")
    print(f"\nTest metrics per task ({title})")
    print(f"{'task':<8} {'loss':>8} {'accuracy':>9} {'last weight':>12}")
    for task in model.task_names:
        print(
            f"{task:<8} {result[f'{task}_loss']:>8.4f} "
            f"{result[f'{task}_accuracy']:>9.4f} {history[f'{task}_weight'][-1]:>12.4f}"
        )
    mean = sum(result[f"{t}_accuracy"] for t in model.task_names) / model.num_tasks
    print(f"{'mean':<8} {'':>8} {mean:>9.4f}")
    print(f"Wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
