"""Low-level tasks supervised at lower layers (Søgaard & Goldberg, ACL 2016).

Token tagging on the Turkish treebank (`keras_mtl.datasets.turkish_treebank`,
gold CoNLL-U files of the PyPI package `turkish-treebanks`): every token gets
its universal part of speech ("upos", 14 tags), its language-specific part of
speech ("xpos") and its dependency relation to its head ("deprel"). Part of
speech is a low-level task; the dependency relation needs more syntax.

Søgaard & Goldberg found that a stack of bidirectional LSTMs learns the
higher-level task better when the low-level task is supervised at an inner
layer instead of the outermost one. The script trains the same 3-layer
BiLSTM tagger twice, from the same initial weights:

- "low": the UPOS head reads layer 1, the XPOS and deprel heads layer 3;
- "top": all three heads read layer 3.

The heads are attached with `keras_mtl.models.attach_heads` on the outputs of
a `keras_mtl.layers.StackedBiRNN`; the UPOS loss of "low" then trains only
the embeddings and the first BiLSTM layer. The script reports per-task token
accuracy on the test sentences (padding excluded) and plots the per-task
accuracy on the dev sentences per epoch.

    bash scripts/fetch_data.sh        # once; says where the data went
    KERAS_MTL_DATA_DIR=data python examples/treebank_low_level_supervision.py
    python examples/treebank_low_level_supervision.py --epochs=10 --cell=gru

Difference from the paper: it alternates tasks (one task's loss per update);
here every update trains all tasks together, combined by `--strategy` (equal
weights by default).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.datasets import turkish_treebank  # noqa: E402
from keras_mtl.layers.stacked_birnn import StackedBiRNN  # noqa: E402
from keras_mtl.models.attach_heads import attach_heads  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("low_tasks", ["upos"], "Low-level tasks, supervised at --low_layer.")
flags.DEFINE_list(
    "high_tasks", ["xpos", "deprel"], "Higher-level tasks, supervised at the top."
)
flags.DEFINE_integer("num_layers", 3, "BiRNN layers (3 in the paper).")
flags.DEFINE_integer("low_layer", 1, "Layer (1-based) of the low-level heads.")
flags.DEFINE_integer("units", 64, "Units of each direction of each BiRNN layer.")
flags.DEFINE_integer("embedding_dim", 64, "Word embedding size.")
flags.DEFINE_enum("cell", "lstm", ["lstm", "gru"], "Recurrent cell.")
flags.DEFINE_float("dropout", 0.2, "Dropout on the embeddings and RNN inputs.")
flags.DEFINE_integer("max_length", 64, "Tokens per sentence (longer are cut).")
flags.DEFINE_integer("epochs", 4, "Training epochs of each configuration.")
flags.DEFINE_integer("batch_size", 32, "Sentences per batch.")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.")
flags.DEFINE_string(
    "strategy", "ew", "A name from keras_mtl.weighting.available() (e.g. uw, dwa)."
)
flags.DEFINE_string("strategy_config", "", "JSON dict of the strategy's arguments.")
flags.DEFINE_integer("seed", 0, "Seed of the shuffling and the weights.")
flags.DEFINE_string(
    "data_dir", None, "Folder of the fetched data (default: $KERAS_MTL_DATA_DIR)."
)
flags.DEFINE_string(
    "output_dir",
    "runs/examples/treebank_low_level_supervision",
    "Where the figure is saved.",
)
flags.DEFINE_integer(
    "verbose", 1, "Keras verbosity: 0 silent, 1 progress bar, 2 epochs."
)
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")

"""
## The data

`turkish_treebank.load` gives batches of `(tokens, targets, sample_weights)`:
token ids (batch, max_length) with 0 on padding, one label id per token and
task, and per-token sample weights, 1 on real tokens and 0 on padding. The
vocabulary is built once from the training sentences and shared by all
splits.
"""


def load_data(tasks):
    vocabulary = turkish_treebank.build_vocabulary(data_dir=FLAGS.data_dir)
    common = dict(
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        tasks=tasks,
        max_length=FLAGS.max_length,
        vocabulary=vocabulary,
        data_dir=FLAGS.data_dir,
    )
    splits = {
        split: turkish_treebank.load(split, **common)
        for split in ("train", "dev", "test")
    }
    return vocabulary, splits


"""
## The tagger

Word embeddings (id 0 is padding and is masked) feed a `StackedBiRNN`, which
returns the per-token output of every layer. `attach_heads` puts each task's
softmax tagger (a dense layer applied to every token) on the layer chosen for
it, and tells the model which variables each task trains: with the UPOS head
on layer 1, the BiLSTM layers 2 and 3 belong to the higher-level tasks only.
"""


def build_tagger(vocabulary, layer_of_task, name):
    tokens = keras.Input((FLAGS.max_length,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(
        vocabulary.num_tokens, FLAGS.embedding_dim, mask_zero=True, name="embedding"
    )(tokens)
    x = keras.layers.Dropout(FLAGS.dropout)(x)
    depths = StackedBiRNN(
        FLAGS.num_layers,
        FLAGS.units,
        cell=FLAGS.cell,
        dropout=FLAGS.dropout,
        name="birnn",
    )(x)
    trunk = keras.Model(tokens, depths, name=f"{name}_trunk")
    heads = {
        task: (
            ("birnn", layer - 1),
            keras.layers.Dense(vocabulary.num_classes(task), name=task),
        )
        for task, layer in layer_of_task.items()
    }
    return attach_heads(trunk, heads, name=name)


def parameters_per_task(model, layer_of_task):
    """Number of trainable parameters each task's loss reaches: the embedding,
    the BiRNN layers up to its head's layer, and its head."""

    def size(variables):
        return sum(int(keras.ops.size(v)) for v in variables)

    embedding = size(model.get_layer("embedding").trainable_variables)
    birnn = model.get_layer("birnn")
    return {
        task: embedding
        + size(birnn.output_variables(layer - 1))
        + size(model.get_layer(task).trainable_variables)
        for task, layer in layer_of_task.items()
    }


def make_strategy(name, config_json):
    """A strategy from its registered name and an optional JSON config."""
    config = json.loads(config_json) if config_json else {}
    if not isinstance(config, dict):
        raise ValueError(f"--strategy_config must be a JSON dict, got {config_json!r}.")
    return keras_mtl.weighting.get({"class_name": name, "config": config})


"""
## Figure (matplotlib imported only here, with the Agg back end)
"""


def plot_dev_accuracy(histories, tasks, output_dir):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib).")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2))
    axes = [axes] if len(tasks) == 1 else axes
    for ax, task in zip(axes, tasks):
        for label, history in histories.items():
            values = history[f"val_{task}_accuracy"]
            ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set(title=f"{task}: dev token accuracy", xlabel="epoch")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(output_dir, "dev_accuracy.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


"""
## Training and evaluation

Each task's loss is the cross-entropy averaged over the real tokens of the
batch (`reduction="mean_with_sample_weight"`); accuracies are compiled as
`weighted_metrics`, so that padding (sample weight 0) does not count (plain
`metrics` ignore sample weights).
"""


def train_and_evaluate(model, layer_of_task, splits):
    tasks = model.task_names
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss={task: loss for task in tasks},
        loss_weighting=make_strategy(FLAGS.strategy, FLAGS.strategy_config),
        weighted_metrics={task: ["accuracy"] for task in tasks},
        jit_compile=FLAGS.jit_compile,
    )
    print(f"\n{model.name}: {model.count_params()} parameters; each task's loss trains")
    for task, count in parameters_per_task(model, layer_of_task).items():
        print(f"  {task}: {count} (its head on BiRNN layer {layer_of_task[task]})")
    history = model.fit(
        splits["train"],
        validation_data=splits["dev"],
        epochs=FLAGS.epochs,
        verbose=FLAGS.verbose,
        shuffle=False,  # the pipeline reshuffles itself every epoch
    ).history
    result = model.evaluate(splits["test"], verbose=0, return_dict=True)
    return history, result


def main(argv):
    del argv
    start = time.time()
    low, high = list(FLAGS.low_tasks), list(FLAGS.high_tasks)
    tasks = low + high
    if not 1 <= FLAGS.low_layer <= FLAGS.num_layers:
        raise ValueError(f"--low_layer must be in [1, {FLAGS.num_layers}].")
    vocabulary, splits = load_data(tasks)
    top = FLAGS.num_layers
    configurations = {
        "low": {t: FLAGS.low_layer if t in low else top for t in tasks},
        "top": {t: top for t in tasks},
    }
    print(
        f"Turkish treebank: {vocabulary.num_tokens} word forms, tasks "
        + ", ".join(f"{t} ({vocabulary.num_classes(t)} labels)" for t in tasks)
        + f"; {FLAGS.num_layers} Bi{FLAGS.cell.upper()} layers; strategy "
        f"{FLAGS.strategy!r}."
    )
    runs = {}
    for label, layer_of_task in configurations.items():
        keras.backend.clear_session()
        keras.utils.set_random_seed(FLAGS.seed)  # same initial weights
        model = build_tagger(vocabulary, layer_of_task, name=f"tagger_{label}")
        runs[label] = train_and_evaluate(model, layer_of_task, splits)

    for path in plot_dev_accuracy(
        {f"{label}": history for label, (history, _) in runs.items()},
        tasks,
        FLAGS.output_dir,
    ):
        print(f"Saved {path}")
    print("\nTest token accuracy per task (padding excluded)")
    print(f"{'task':<8} {'layer (low)':>11} {'low':>8} {'layer (top)':>12} {'top':>8}")
    for task in tasks:
        print(
            f"{task:<8} {configurations['low'][task]:>11} "
            f"{runs['low'][1][f'{task}_accuracy']:>8.4f} "
            f"{configurations['top'][task]:>12} "
            f"{runs['top'][1][f'{task}_accuracy']:>8.4f}"
        )
    print(f"Wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
