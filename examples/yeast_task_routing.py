"""Fourteen tasks on Yeast, with and without Task Routing (Strezoski et al.).

Yeast (`keras_mtl.datasets.yeast`): 2,417 genes described by 103
gene-expression and phylogenetic features, each annotated with some of 14
functional categories. Every category is a binary task ("label_0" ..
"label_13"), from 1.4% to 75% positives, on MULAN's standard split (1,500
training and 917 test genes).

Two networks of the same size are trained on all 14 tasks at once:

- hard sharing: a multi-layer perceptron shared by every task, one logistic
  unit per task on top;
- Task Routing (`keras_mtl.models.task_routed_model`): the same perceptron
  and heads, with a Task Routing Layer after every hidden layer. Each layer
  holds a fixed random binary mask per task that switches off a fraction
  `sigma` of its units for that task, so every task trains and uses its own
  sub-network of the shared one (sigma = 0: no routing; the reference
  default is 0.5).

The script prints per-task test accuracy and F1 (of the positive class) of
both, their means over the tasks (macro) and the micro-averaged F1, and plots
the per-task F1.

    bash scripts/fetch_data.sh        # once; says where the data went
    KERAS_MTL_DATA_DIR=data python examples/yeast_task_routing.py
    python examples/yeast_task_routing.py --sigma=0.8 --hidden=512
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.datasets import yeast  # noqa: E402
from keras_mtl.models.task_routed_model import task_routed_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float(
    "sigma", 0.5, "Fraction of each routed layer's units switched off per task."
)
flags.DEFINE_integer("hidden", 256, "Units of each hidden layer.")
flags.DEFINE_integer("num_layers", 2, "Hidden layers (each routed in the routed net).")
flags.DEFINE_float("dropout", 0.5, "Dropout before every hidden layer but the first.")
flags.DEFINE_integer("epochs", 20, "Training epochs of each network.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_string(
    "strategy", "ew", "A name from keras_mtl.weighting.available() (e.g. uw, dwa)."
)
flags.DEFINE_string("strategy_config", "", "JSON dict of the strategy's arguments.")
flags.DEFINE_integer("seed", 0, "Seed of the masks, the shuffling and the weights.")
flags.DEFINE_string(
    "data_dir", None, "Folder of the fetched data (default: $KERAS_MTL_DATA_DIR)."
)
flags.DEFINE_string(
    "output_dir", "runs/examples/yeast_task_routing", "Where the figure is saved."
)
flags.DEFINE_integer(
    "verbose", 1, "Keras verbosity: 0 silent, 1 progress bar, 2 epochs."
)
flags.DEFINE_bool("jit_compile", False, "Compile the training step with XLA.")

TASKS = yeast.TASKS

"""
## The two networks

Both have the same layers and parameters: `num_layers` dense layers of
`hidden` units with ReLU (dropout before all but the first) and a one-logit
head per task. In the routed network, each dense layer is followed by a Task
Routing Layer before its ReLU, as in the reference routed VGG, and all tasks
run in one step on a task-folded batch (see `task_routed_model`). Only the
fixed masks differ between the two: no parameter is added.
"""


def hidden_blocks():
    """The hidden layers, as `task_routed_model` blocks."""
    blocks = []
    for i in range(FLAGS.num_layers):
        block = [keras.layers.Dense(FLAGS.hidden, name=f"dense_{i + 1}")]
        if i > 0 and FLAGS.dropout > 0:
            block.insert(0, keras.layers.Dropout(FLAGS.dropout))
        blocks.append(block)
    return blocks


def heads():
    return {task: keras.layers.Dense(1, name=task) for task in TASKS}


def build_hard_sharing():
    inputs = keras.Input((yeast.NUM_FEATURES,), name="features")
    x = inputs
    for block in hidden_blocks():
        for layer in block:
            x = layer(x)
        x = keras.layers.ReLU()(x)
    outputs = {task: head(x) for task, head in heads().items()}
    return keras_mtl.MultiTaskModel(inputs, outputs, name="hard_sharing")


def build_task_routed(sigma):
    return task_routed_model(
        keras.Input((yeast.NUM_FEATURES,), name="features"),
        blocks=hidden_blocks(),
        heads=heads(),
        sigma=sigma,
        seed=FLAGS.seed,
        name="task_routed",
    )


def make_strategy(name, config_json):
    """A strategy from its registered name and an optional JSON config."""
    config = json.loads(config_json) if config_json else {}
    if not isinstance(config, dict):
        raise ValueError(f"--strategy_config must be a JSON dict, got {config_json!r}.")
    return keras_mtl.weighting.get({"class_name": name, "config": config})


"""
## Scores

Accuracy and F1 of the positive class per task (a logit above 0 predicts the
category), their means over the 14 tasks, and the micro-averaged F1 (all
task decisions pooled), the usual multi-label summary.
"""


def scores(y_true, logits):
    per_task = {}
    tp_all = fp_all = fn_all = 0
    for task in TASKS:
        truth = y_true[task].astype(bool)
        pred = np.asarray(logits[task]).reshape(-1) > 0
        tp = int(np.sum(pred & truth))
        fp = int(np.sum(pred & ~truth))
        fn = int(np.sum(~pred & truth))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        per_task[task] = {"accuracy": float(np.mean(pred == truth)), "f1": f1}
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    summary = {
        "mean accuracy": np.mean([s["accuracy"] for s in per_task.values()]),
        "mean F1 (macro)": np.mean([s["f1"] for s in per_task.values()]),
        "micro F1": 2 * tp_all / (2 * tp_all + fp_all + fn_all),
    }
    return per_task, summary


"""
## Figure (matplotlib imported only here, with the Agg back end)
"""


def plot_f1(results, output_dir):
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no figures (pip install matplotlib).")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    index = np.arange(len(TASKS))
    width = 0.8 / len(results)
    for i, (label, (per_task, _)) in enumerate(results.items()):
        values = [per_task[t]["f1"] for t in TASKS]
        ax.bar(index + i * width, values, width, label=label)
    ax.set_xticks(index + 0.4 - width / 2, [t.split("_")[1] for t in TASKS])
    ax.set(xlabel="task (label_i)", ylabel="test F1", title="Yeast: F1 per task")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(output_dir, "f1_per_task.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


"""
## Training and evaluation
"""


def train_and_score(model, train, test):
    (x_train, y_train), (x_test, y_test) = train, test
    model.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        loss_weighting=make_strategy(FLAGS.strategy, FLAGS.strategy_config),
        jit_compile=FLAGS.jit_compile,
    )
    trainable = sum(int(keras.ops.size(v)) for v in model.trainable_variables)
    fixed = model.count_params() - trainable
    print(
        f"\n{model.name}: {trainable} trainable parameters"
        + (f" and {fixed} fixed mask entries." if fixed else ".")
    )
    model.fit(
        x_train,
        y_train,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        verbose=FLAGS.verbose,
    )
    return scores(y_test, model.predict(x_test, verbose=0))


def main(argv):
    del argv
    start = time.time()
    train = yeast.load_arrays("train", data_dir=FLAGS.data_dir)
    test = yeast.load_arrays("test", data_dir=FLAGS.data_dir)
    print(
        f"Yeast: {len(train[0])} training and {len(test[0])} test genes, "
        f"{len(TASKS)} tasks; strategy {FLAGS.strategy!r}."
    )
    routed = f"routed (sigma={FLAGS.sigma:g})"
    results = {}
    for label, build in (
        ("hard sharing", build_hard_sharing),
        (routed, lambda: build_task_routed(FLAGS.sigma)),
    ):
        keras.utils.set_random_seed(FLAGS.seed)
        results[label] = train_and_score(build(), train, test)

    for path in plot_f1(results, FLAGS.output_dir):
        print(f"Saved {path}")
    positives = {t: float(np.mean(train[1][t])) for t in TASKS}
    hard, route = results["hard sharing"][0], results[routed][0]
    print("\nTest metrics per task")
    print(
        f"{'task':<9} {'pos.':>5} {'acc hard':>9} {'acc routed':>11} "
        f"{'F1 hard':>8} {'F1 routed':>10}"
    )
    for task in TASKS:
        print(
            f"{task:<9} {positives[task]:>5.2f} {hard[task]['accuracy']:>9.4f} "
            f"{route[task]['accuracy']:>11.4f} {hard[task]['f1']:>8.4f} "
            f"{route[task]['f1']:>10.4f}"
        )
    print(f"\n{'summary':<16} {'hard sharing':>13} {routed:>20}")
    for key in results["hard sharing"][1]:
        print(
            f"{key:<16} {results['hard sharing'][1][key]:>13.4f} "
            f"{results[routed][1][key]:>20.4f}"
        )
    print(f"Wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
