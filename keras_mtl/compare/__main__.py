"""Command line of the comparison: `python -m keras_mtl.compare [flags]`.

Trains the chosen strategies and the single-task baselines on a real data
set over several seeds, writes `results.md`, `results.csv`, `runs.json` and
three PNG figures into `--output_dir`, and prints the table.

    python -m keras_mtl.compare                      # Multi-Fashion, defaults
    python -m keras_mtl.compare --dataset=yeast --strategies=ew,uw,pcgrad
    python -m keras_mtl.compare --quick --dataset=dense_digits   # smoke run
    python -m keras_mtl.compare --task_train_sizes=left:500,right:20000
    python -m keras_mtl.compare --sweep=left:250,1000,4000,20000 --seeds=3

The data files come from `bash scripts/fetch_data.sh` (into `./data`, or set
`KERAS_MTL_DATA_DIR`, or pass `--data_dir`); `dense_digits` needs none.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_mtl.compare import comparison, label_budget, problems, sweep  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_enum(
    "dataset", "multi_fashion", sorted(problems.PROBLEMS), "The data set to compare on."
)
flags.DEFINE_list(
    "strategies",
    list(comparison.DEFAULT_STRATEGIES),
    "Comma-separated names from keras_mtl.weighting.available().",
)
flags.DEFINE_integer(
    "seeds", comparison.DEFAULT_SEEDS, "Number of seeds (0..seeds-1).", lower_bound=1
)
flags.DEFINE_integer("epochs", None, "Training epochs (default: the data set's).")
flags.DEFINE_integer("train_size", None, "Training examples (default: the data set's).")
flags.DEFINE_integer("test_size", None, "Test examples (default: the whole split).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the data set's).")
flags.DEFINE_float(
    "learning_rate", None, "Adam learning rate (default: the data set's)."
)
flags.DEFINE_string(
    "output_dir", None, "Where results go (default: runs/compare-<dataset>)."
)
flags.DEFINE_string(
    "data_dir",
    None,
    "Folder of the fetched data (default: $KERAS_MTL_DATA_DIR, then ./data).",
)
flags.DEFINE_bool("stl", True, "Also train the single-task baselines (for Δm%).")
flags.DEFINE_bool("jit_compile", False, "Compile the training steps with XLA.")
flags.DEFINE_bool("plots", True, "Save the PNG figures (needs matplotlib).")
flags.DEFINE_bool(
    "quick",
    False,
    "Tiny smoke configuration: 1 epoch on a few examples, 1 seed, ew and "
    "pcgrad (flags given explicitly still win).",
)
flags.DEFINE_integer("verbose", 0, "Verbosity of Keras' fit.")
flags.DEFINE_string(
    "sweep",
    None,
    "A grid of labelled sizes of one task, e.g. left:250,1000,4000,20000: the "
    "comparison runs at each size (strategies x sizes x seeds, resumable) and "
    "writes sweep.md, sweep.csv and sweep.png.",
)
flags.DEFINE_list(
    "task_train_sizes",
    [],
    "Labelled training examples per task, e.g. left:500,right:20000 (the "
    "other labels of a task are marked missing; its single-task baseline "
    "trains on its labelled examples).",
)


def config_from_flags():
    """The `ComparisonConfig` the flags describe."""
    strategies = tuple(FLAGS.strategies)
    seeds = FLAGS.seeds
    if FLAGS.quick:
        if not FLAGS["strategies"].present:
            strategies = comparison.QUICK_STRATEGIES
        if not FLAGS["seeds"].present:
            seeds = 1
    sizes = label_budget.parse_task_sizes(FLAGS.task_train_sizes) or None
    return comparison.ComparisonConfig(
        task_train_sizes=sizes,
        dataset=FLAGS.dataset,
        strategies=strategies,
        seeds=seeds,
        epochs=FLAGS.epochs,
        train_size=FLAGS.train_size,
        test_size=FLAGS.test_size,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        stl=FLAGS.stl,
        jit_compile=FLAGS.jit_compile,
        output_dir=FLAGS.output_dir,
        data_dir=FLAGS.data_dir,
        plots=FLAGS.plots,
        quick=FLAGS.quick,
        verbose=FLAGS.verbose,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tensorflow as tf

    # Every run builds a new model: TensorFlow's retracing warnings are noise.
    tf.get_logger().setLevel("ERROR")
    try:
        config = config_from_flags()
        config.resolved()
        grid = sweep.parse_sweep(FLAGS.sweep) if FLAGS.sweep else None
        if grid:
            sweep.check_task(config, grid[0])
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    try:
        if grid:
            result = sweep.run_sweep(config, *grid)
            print(f"\nTotal wall time: {result['wall_seconds'] / 60:.1f} min")
            print("Written: " + ", ".join(result["files"]))
            return
        result = comparison.run_comparison(config)
    except FileNotFoundError as error:
        # The data files are missing: the message says how to fetch them.
        sys.exit(f"keras_mtl.compare: {error}")
    print()
    print(result["table"])
    print()
    print(f"Total wall time: {result['wall_seconds'] / 60:.1f} min")
    print("Written: " + ", ".join(result["files"]))


if __name__ == "__main__":
    app.run(main)
