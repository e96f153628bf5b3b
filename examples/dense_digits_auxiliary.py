"""Dense prediction with and without an auxiliary module (Liu et al., 2019).

Three pixel-wise tasks on images of two overlapping real handwritten digits
(`keras_mtl.datasets.dense_digits`, built offline from scikit-learn's digits):

- "segmentation": the class of the visible digit at each pixel (11 classes,
  0 for background), scored by mean IoU and pixel accuracy;
- "edges": the outline of every visible digit (binary), scored by precision,
  recall and F1 of the edge pixels;
- "depth": the layer seen at each pixel (1 front digit, 2 back digit, 3
  background), scored by mean absolute and mean relative error.

A small convolutional encoder-decoder (U-Net-like, with skip connections) is
shared by the three tasks, each with a small convolutional head. It is
trained twice from the same initial weights: once as a plain hard-sharing
network, once with an auxiliary module attached
(`keras_mtl.models.add_auxiliary_module`): task-specific branches over the
shared feature maps, cross-connected between tasks and supervised by the
task losses, whose gradients regularise the shared layers. After training
the module is dropped (`inference_model()`), so both networks predict with
exactly the same layers and cost; the script exports that network as a
`.keras` file and checks that the reloaded file predicts the same.

    python examples/dense_digits_auxiliary.py
    python examples/dense_digits_auxiliary.py --epochs=40 --aux_weight=0.5

The numbers compare the two trainings with each other; the data set is our
own construction, so they are not comparable with published results.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.datasets import dense_digits  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 10, "Training epochs of each model.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.")
flags.DEFINE_integer(
    "num_train",
    3000,
    "Training images, made of the 1,438 training digits (0: one per digit).",
)
flags.DEFINE_integer("num_test", 0, "Test images (0: one per test digit, 359).")
flags.DEFINE_integer("image_size", 32, "Side of the canvas.")
flags.DEFINE_integer("digit_size", 20, "Side of each digit on the canvas.")
flags.DEFINE_enum(
    "source", "digits", list(dense_digits.SOURCES), "scikit-learn digits or MNIST."
)
flags.DEFINE_integer("width", 16, "Filters of the first encoder level.")
flags.DEFINE_integer("aux_units", 16, "Filters of each auxiliary branch.")
flags.DEFINE_float("aux_weight", 1.0, "lambda_aux, the weight of the auxiliary losses.")
flags.DEFINE_string(
    "strategy", "ew", "A name from keras_mtl.weighting.available() (e.g. uw, dwa)."
)
flags.DEFINE_string("strategy_config", "", "JSON dict of the strategy's arguments.")
flags.DEFINE_integer("seed", 0, "Seed of the data, the shuffling and the weights.")
flags.DEFINE_string(
    "data_dir", None, "Data folder for --source=mnist (default: $KERAS_MTL_DATA_DIR)."
)
flags.DEFINE_string(
    "output_dir",
    "runs/examples/dense_digits_auxiliary",
    "Where figures and the exported model are saved.",
)
flags.DEFINE_integer(
    "verbose", 1, "Keras verbosity: 0 silent, 1 progress bar, 2 epochs."
)
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")

TASKS = dense_digits.TASKS
NUM_SEG_CLASSES = dense_digits.NUM_CLASSES["segmentation"]
# Shared layers the auxiliary module reads, from the lowest to the highest.
TAPS = ("enc2", "enc3", "dec3", "dec2")

"""
## The data

`dense_digits.load_arrays` gives images (N, S, S, 1) in [0, 1] and the
targets `{"segmentation": (N, S, S) int, "edges": (N, S, S, 1) in {0, 1},
"depth": (N, S, S, 1) in {1, 2, 3}}`.
"""


def load_data():
    common = dict(
        image_size=FLAGS.image_size,
        digit_size=FLAGS.digit_size,
        source=FLAGS.source,
        seed=FLAGS.seed,
        data_dir=FLAGS.data_dir,
    )
    train = dense_digits.load_arrays(
        "train", num_samples=FLAGS.num_train or None, **common
    )
    test = dense_digits.load_arrays(
        "test", num_samples=FLAGS.num_test or None, **common
    )
    return train, test


"""
## The hard-sharing network

Encoder: four levels of 3x3 convolution, batch normalization and ReLU, with
max-pooling in between (S, S/2, S/4, S/8); decoder: three upsampling steps,
each concatenated with the encoder features of the same size and followed by
a convolution block (a small U-Net). Each task's head is a 3x3 and a 1x1
convolution: 11 logits per pixel (segmentation), one logit (edges), one
value (depth). The normalization layers carry the block names ("enc2", ...),
so that they are the layers the auxiliary module can tap.
"""


def conv_block(filters, name):
    """3x3 convolution, batch normalization (named `name`), ReLU."""

    def apply(x):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        x = keras.layers.BatchNormalization(name=name)(x)
        return keras.layers.ReLU()(x)

    return apply


def build_model(image_size, width):
    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 1), name="image")
    e1 = conv_block(width, "enc1")(inputs)
    e2 = conv_block(2 * width, "enc2")(layers.MaxPooling2D(2)(e1))
    e3 = conv_block(4 * width, "enc3")(layers.MaxPooling2D(2)(e2))
    e4 = conv_block(4 * width, "enc4")(layers.MaxPooling2D(2)(e3))
    d3 = layers.Concatenate()([layers.UpSampling2D(2)(e4), e3])
    d3 = conv_block(4 * width, "dec3")(d3)
    d2 = layers.Concatenate()([layers.UpSampling2D(2)(d3), e2])
    d2 = conv_block(2 * width, "dec2")(d2)
    d1 = layers.Concatenate()([layers.UpSampling2D(2)(d2), e1])
    d1 = conv_block(width, "dec1")(d1)
    sizes = {"segmentation": NUM_SEG_CLASSES, "edges": 1, "depth": 1}
    outputs = {}
    for task in TASKS:
        h = layers.Conv2D(
            width, 3, padding="same", activation="relu", name=f"{task}_head"
        )(d1)
        outputs[task] = layers.Conv2D(sizes[task], 1, name=task)(h)
    return keras_mtl.MultiTaskModel(inputs, outputs, name="dense_digits_net")


"""
## The auxiliary module

`add_auxiliary_module` adds, for every task, one branch level per tap (a 3x3
convolution of the tap's feature map, resized to the size of the last tap,
concatenated with the branches of the level below of this and the other
tasks), and an auxiliary head per task mapping the top branch to the task's
output: here a bilinear upsampling (x2) to the image size and a 1x1
convolution.
The training objective becomes the strategy's combination of the task losses
plus `aux_weight` times the sum of the auxiliary heads' losses.
"""


def auxiliary_heads():
    sizes = {"segmentation": NUM_SEG_CLASSES, "edges": 1, "depth": 1}
    heads = {}
    for task in TASKS:
        heads[task] = keras.Sequential(
            [
                # The module's features have the size of the last tap, dec2
                # (S / 2): back to the image size, then one output per pixel.
                keras.layers.UpSampling2D(2, interpolation="bilinear"),
                keras.layers.Conv2D(sizes[task], 1),
            ],
            name=f"{task}_aux_head",
        )
    return heads


"""
## Losses and metrics

Cross-entropy on logits for segmentation and edges, L1 for depth. Edge pixels
are rare (about a tenth of the pixels), so they are scored by precision and
recall (a logit above 0 is an edge) rather than by accuracy.
"""


def abs_rel(y_true, y_pred):
    """Relative depth error |d - d*| / d* per pixel (d* >= 1 here)."""
    y_true = keras.ops.cast(y_true, y_pred.dtype)
    return keras.ops.abs(y_pred - y_true) / y_true


def compile_args():
    return dict(
        loss={
            "segmentation": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            "edges": keras.losses.BinaryCrossentropy(from_logits=True),
            "depth": keras.losses.MeanAbsoluteError(),
        },
        metrics={
            "segmentation": [
                keras.metrics.MeanIoU(
                    num_classes=NUM_SEG_CLASSES, sparse_y_pred=False, name="miou"
                ),
                keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
            ],
            "edges": [
                keras.metrics.Precision(thresholds=0.0, name="precision"),
                keras.metrics.Recall(thresholds=0.0, name="recall"),
            ],
            "depth": [
                keras.metrics.MeanAbsoluteError(name="abs_err"),
                keras.metrics.MeanMetricWrapper(abs_rel, name="rel_err"),
            ],
        },
    )


def make_strategy(name, config_json):
    """A strategy from its registered name and an optional JSON config."""
    config = json.loads(config_json) if config_json else {}
    if not isinstance(config, dict):
        raise ValueError(f"--strategy_config must be a JSON dict, got {config_json!r}.")
    return keras_mtl.weighting.get({"class_name": name, "config": config})


def test_metrics(result):
    """The reported numbers of one `evaluate` result, F1 of edges added."""
    p, r = result["edges_precision"], result["edges_recall"]
    return {
        ("segmentation", "mIoU"): result["segmentation_miou"],
        ("segmentation", "pixel acc."): result["segmentation_pixel_accuracy"],
        ("edges", "precision"): p,
        ("edges", "recall"): r,
        ("edges", "F1"): 2 * p * r / (p + r) if p + r > 0 else 0.0,
        ("depth", "abs. err."): result["depth_abs_err"],
        ("depth", "rel. err."): result["depth_rel_err"],
    }


"""
## Figures (matplotlib imported only when saving them, with the Agg back end)
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


def plot_losses(histories, output_dir):
    plt = pyplot()
    if plt is None:
        return []
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4 * len(TASKS), 3.2))
    for ax, task in zip(axes, TASKS):
        for i, (label, history) in enumerate(histories.items()):
            epochs = range(1, len(history["loss"]) + 1)
            ax.plot(epochs, history[f"{task}_loss"], color=f"C{i}", label=label)
            if f"{task}_aux_loss" in history:
                ax.plot(
                    epochs,
                    history[f"{task}_aux_loss"],
                    color=f"C{i}",
                    linestyle=":",
                    label=f"{label}: auxiliary head",
                )
        ax.set(title=f"{task}: training loss", xlabel="epoch", yscale="log")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(output_dir, "losses.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_predictions(images, targets, predictions, output_dir, count=4):
    plt = pyplot()
    if plt is None:
        return []
    count = min(count, len(images))
    columns = [("image", images, "gray", None)]
    columns.append(("segmentation", targets["segmentation"], "tab20", (0, 19)))
    for label, pred in predictions.items():
        seg = np.argmax(pred["segmentation"], axis=-1)
        columns.append((f"seg. {label}", seg, "tab20", (0, 19)))
    columns.append(("edges", targets["edges"][..., 0], "gray", (0, 1)))
    for label, pred in predictions.items():
        edges = (pred["edges"][..., 0] > 0).astype("float32")
        columns.append((f"edges {label}", edges, "gray", (0, 1)))
    columns.append(("depth", targets["depth"][..., 0], "viridis", (1, 3)))
    for label, pred in predictions.items():
        columns.append((f"depth {label}", pred["depth"][..., 0], "viridis", (1, 3)))
    fig, axes = plt.subplots(
        count, len(columns), figsize=(1.3 * len(columns), 1.4 * count), squeeze=False
    )
    for row in range(count):
        for col, (title, values, cmap, limits) in enumerate(columns):
            ax = axes[row, col]
            value = values[row]
            if value.ndim == 3:
                value = value[..., 0]
            vmin, vmax = limits if limits else (None, None)
            ax.imshow(value, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=6)
    fig.tight_layout()
    path = os.path.join(output_dir, "predictions.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


"""
## Training both networks
"""


def train_one(with_aux, train, test):
    """Trains one network; returns (trained model, history, test result)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(FLAGS.seed)  # same initial trunk and heads
    model = build_model(FLAGS.image_size, FLAGS.width)
    base_params = model.count_params()
    if with_aux:
        model = keras_mtl.models.add_auxiliary_module(
            model,
            taps=list(TAPS),
            heads=auxiliary_heads(),
            units=FLAGS.aux_units,
            aux_weight=FLAGS.aux_weight,
        )
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss_weighting=make_strategy(FLAGS.strategy, FLAGS.strategy_config),
        jit_compile=FLAGS.jit_compile,
        **compile_args(),
    )
    label = "+ auxiliary module" if with_aux else "hard sharing"
    print(
        f"\n{label}: {model.count_params()} parameters in training, "
        f"{base_params} at inference."
    )
    (x_train, y_train), (x_test, y_test) = train, test
    history = model.fit(
        x_train,
        y_train,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        verbose=FLAGS.verbose,
    ).history
    # The network used at test time: the module and its heads removed.
    inference = model.inference_model(name="dense_digits_inference")
    inference.compile(**compile_args())  # for evaluate: losses and metrics
    result = inference.evaluate(x_test, y_test, verbose=0, return_dict=True)
    return model, history, result


def export(trained, images, output_dir):
    """Saves the inference network (not compiled) and checks the reloaded copy."""
    model = trained.inference_model(name="dense_digits_inference")
    path = os.path.join(output_dir, "dense_digits_inference.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    before = model.predict(images, verbose=0)
    after = reloaded.predict(images, verbose=0)
    diff = max(float(np.max(np.abs(before[t] - after[t]))) for t in TASKS)
    print(
        f"Exported {path} ({reloaded.count_params()} parameters); reloaded "
        f"predictions differ by at most {diff:.2e}."
    )
    return path


def main(argv):
    del argv
    start = time.time()
    train, test = load_data()
    print(
        f"dense_digits ({FLAGS.source}): {len(train[0])} training and "
        f"{len(test[0])} test images of {FLAGS.image_size}x{FLAGS.image_size}; "
        f"strategy {FLAGS.strategy!r}."
    )
    runs = {}
    for with_aux in (False, True):
        label = "+aux" if with_aux else "hard"
        runs[label] = train_one(with_aux, train, test)

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    export(runs["+aux"][0], test[0][:8], FLAGS.output_dir)
    saved = plot_losses({k: r[1] for k, r in runs.items()}, FLAGS.output_dir)
    predictions = {
        k: r[0].inference_model().predict(test[0][:4], verbose=0)
        for k, r in runs.items()
    }
    saved += plot_predictions(
        test[0][:4],
        {t: v[:4] for t, v in test[1].items()},
        predictions,
        FLAGS.output_dir,
    )
    for path in saved:
        print(f"Saved {path}")

    metrics = {k: test_metrics(r[2]) for k, r in runs.items()}
    print("\nTest metrics per task (same inference network, trained without/with")
    print(f"the auxiliary module, aux_weight={FLAGS.aux_weight})")
    print(f"{'task':<13} {'metric':<11} {'hard sharing':>13} {'+ aux module':>13}")
    for task, metric in metrics["hard"]:
        hard, aux = metrics["hard"][task, metric], metrics["+aux"][task, metric]
        print(f"{task:<13} {metric:<11} {hard:>13.4f} {aux:>13.4f}")
    print("(higher is better except for the depth errors)")
    print(f"Wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
