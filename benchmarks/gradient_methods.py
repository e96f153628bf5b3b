"""Step time of every gradient-based strategy, as ratios measured in one run.

For T = 2, 4, 8 tasks on a small CNN, with XLA off and on, the script times
`MultiTaskModel.fit` steps for equal weighting (one backward pass), for the
per-task gradients alone (a strategy that only sums the rows of the (T, P)
matrix: the cost of the gradient engine), and for every registered strategy
that needs per-task gradients, plus the representation-gradient ("UB")
variants. It prints milliseconds per step, the ratio to equal weighting,
the ratio to the per-task gradients alone (the cost of the aggregation
itself), the quartiles of that ratio over the rounds (a noisy machine shows
as a wide range) and the allocator's peak memory.

The timed steps are interleaved: every model is built, compiled and warmed
up (one `fit` epoch) first, then each round times `--steps` calls of every
model's compiled train function (in a rotated order; no `fit` set-up or
callbacks in the time), so that a change in the machine's load hits all of
them alike. The ratios are the medians over rounds of the ratios within a
round, the times the medians over rounds. With `--gramian_path`, the
Gramian methods also run with `compile(per_task_gradients="gramian")` (no
(T, P) matrix, one extra backward pass).

With `--aggregation_only` it times instead the strategy's call alone on
random `(T, P)` gradient matrices (P = the small CNN's shared parameters,
a new matrix at every call, so that a solver compiled again for every new
input would show) inside a compiled function, and prints the milliseconds
it adds to a call that only sums the rows: the cost of the aggregation
itself, without the noise of whole training steps.

    python benchmarks/gradient_methods.py                 # everything
    python benchmarks/gradient_methods.py --tasks=2,4 --methods=mgda,pcgrad --xla=true
    python benchmarks/gradient_methods.py --aggregation_only --methods=cagrad,nash_mtl
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import step_runner  # noqa: E402
from absl import app, flags  # noqa: E402
from keras import ops  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.weighting.gradient_aggregation import GradientAggregation  # noqa: E402

flags.DEFINE_list("tasks", ["2", "4", "8"], "Numbers of tasks.")
flags.DEFINE_list("methods", [], "Strategy names (default: every gradient method).")
flags.DEFINE_list("xla", ["false", "true"], "XLA settings to run.")
flags.DEFINE_integer("steps", 20, "Timed steps per epoch.")
flags.DEFINE_integer("repeats", 3, "Timed rounds (medians are reported).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_bool(
    "gramian_path",
    False,
    "Also time Gramian methods with compile(per_task_gradients='gramian').",
)
flags.DEFINE_bool(
    "aggregation_only", False, "Time the strategies' calls alone (see the docstring)."
)
FLAGS = flags.FLAGS


class SumRows(GradientAggregation):
    """The per-task gradients and nothing else: update = sum of rows."""

    supports_rep_grad = True

    def call(self, grads, losses=None, training=True):
        return ops.sum(grads, axis=0), ops.ones((grads.shape[0],))


def small_cnn(num_tasks):
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    outputs = {f"task_{t}": keras.layers.Dense(10)(h) for t in range(num_tasks)}
    return keras_mtl.MultiTaskModel(inputs, outputs)


def dataset(num_tasks, batch_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size * 4, 32, 32, 3)).astype("float32")
    y = {
        f"task_{t}": rng.integers(0, 10, size=(batch_size * 4,)).astype("int32")
        for t in range(num_tasks)
    }
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat()


def gradient_methods():
    names = []
    for name in keras_mtl.weighting.available():
        cls = keras_mtl.weighting.registry.lookup(name)
        if cls.requires in ("gradients", "gramian"):
            names.append(name)
    return names


def task_kwargs(name, num_tasks):
    """Constructor arguments that are valid for `num_tasks` tasks (None when
    the method cannot run with so few): Krum needs n_byzantine + 3 tasks,
    the trimmed mean 2 * trim_number + 1."""
    if name == "krum":
        return None if num_tasks < 3 else {"n_byzantine": min(1, num_tasks - 3)}
    if name == "trimmed_mean":
        return {"trim_number": min(1, (num_tasks - 1) // 2)}
    return {}


def variants(names, num_tasks):
    """(label, strategy factory) pairs, with the rep_grad and Nash options
    (and, with `--gramian_path`, the Gramian path of Gramian methods: a
    label ending in "(gramian path)" compiles with
    `per_task_gradients="gramian"`)."""
    result = [("ew", lambda: "ew"), ("per-task grads", SumRows)]
    result.append(("per-task rep grads", lambda: SumRows(rep_grad=True)))
    for name in names:
        cls = keras_mtl.weighting.registry.lookup(name)
        kwargs = task_kwargs(name, num_tasks)
        if kwargs is None:
            print(f"{num_tasks:>2}        {name}: too few tasks, skipped", flush=True)
            continue
        result.append((name, lambda cls=cls, kw=kwargs: cls(**kw)))
        if cls.supports_rep_grad:
            result.append(
                (
                    f"{name} (rep_grad)",
                    lambda cls=cls, kw=kwargs: cls(rep_grad=True, **kw),
                )
            )
        if name == "nash_mtl":
            result.append(
                ("nash_mtl (every 50)", lambda cls=cls: cls(update_weights_every=50))
            )
        if FLAGS.gramian_path and cls.requires == "gramian":
            result.append(
                (f"{name} (gramian path)", lambda cls=cls, kw=kwargs: cls(**kw))
            )
    return result


def timed_steps(run):
    """Seconds per step of one call of a `step_runner` and the allocator's
    peak bytes during it."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except (ValueError, RuntimeError):
        pass
    start = time.perf_counter()
    run()
    seconds = (time.perf_counter() - start) / FLAGS.steps
    try:
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    except (ValueError, RuntimeError):
        peak = float("nan")
    return seconds, peak


def run(num_tasks, xla, entries):
    """Builds, warms up and times every (label, factory) in `entries`."""
    data = dataset(num_tasks, FLAGS.batch_size)
    models = []
    for label, factory in entries:
        keras.utils.set_random_seed(0)
        model = small_cnn(num_tasks)
        model.compile(
            optimizer="sgd",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            loss_weighting=factory(),
            per_task_gradients="gramian" if "gramian path" in label else "matrix",
            jit_compile=xla,
        )
        # Warm-up: tracing, XLA compilation, the strategy's first solves.
        model.fit(data, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
        models.append((label, step_runner(model, iter(data), FLAGS.steps)))
    times = {label: [] for label, _ in models}
    peaks = {label: 0.0 for label, _ in models}
    for round_index in range(FLAGS.repeats):
        shift = round_index % len(models)
        for label, run in models[shift:] + models[:shift]:
            seconds, peak = timed_steps(run)
            times[label].append(seconds)
            peaks[label] = max(peaks[label], peak)
    for label, _ in models:
        grads_label = "per-task rep grads" if "rep_grad" in label else "per-task grads"
        to_ew = np.median(np.divide(times[label], times["ew"]))
        to_grads = np.divide(times[label], times[grads_label])
        low, mid, high = np.percentile(to_grads, [25, 50, 75])
        print(
            f"{num_tasks:>2} {str(xla):>5}  {label:<24} "
            f"{1e3 * np.median(times[label]):>8.2f} {to_ew:>6.2f} {mid:>8.2f} "
            f"{f'{low:.2f}-{high:.2f}':>10} {peaks[label] / 2**20:>8.1f}",
            flush=True,
        )


def run_aggregation_only(num_tasks, xla, entries):
    """Times the strategies' calls on `(T, P)` matrices, interleaved."""
    model = small_cnn(num_tasks)
    size = sum(int(np.prod(v.shape)) for v in model.shared_variables)
    rng = np.random.default_rng(0)
    calls = FLAGS.steps
    inputs = [
        tf.constant(
            rng.normal(size=(num_tasks, size)) + rng.normal(size=(1, size)),
            tf.float32,
        )
        for _ in range(calls * (FLAGS.repeats + 1))
    ]
    losses = tf.ones([num_tasks])
    functions = []
    for label, factory in entries:
        strategy = factory()
        if isinstance(strategy, str) or getattr(strategy, "rep_grad", False):
            continue
        strategy.build((num_tasks, size))
        function = tf.function(
            lambda g, s=strategy: s(g, losses, training=True)[0], jit_compile=xla
        )
        for grads in inputs[:calls]:  # Warm-up: tracing and compilation.
            function(grads).numpy()
        functions.append((label, function))
    times = {label: [] for label, _ in functions}
    for round_index in range(FLAGS.repeats):
        batch = inputs[(round_index + 1) * calls : (round_index + 2) * calls]
        for label, function in functions:
            start = time.perf_counter()
            for grads in batch:
                function(grads).numpy()
            times[label].append((time.perf_counter() - start) / calls)
    base = np.array(times["per-task grads"])
    for label, _ in functions:
        extra = np.median(np.array(times[label]) - base)
        print(
            f"{num_tasks:>2} {str(xla):>5}  {label:<24} "
            f"{1e3 * np.median(times[label]):>8.3f} {1e3 * extra:>+10.3f}",
            flush=True,
        )


def main(argv):
    del argv
    names = FLAGS.methods or gradient_methods()
    if FLAGS.aggregation_only:
        print(f"{'T':>2} {'xla':>5}  {'method':<24} {'ms/call':>8} {'ms vs sum':>10}")
        for num_tasks in [int(t) for t in FLAGS.tasks]:
            for xla in [v.lower() == "true" for v in FLAGS.xla]:
                run_aggregation_only(num_tasks, xla, variants(names, num_tasks))
        return
    print(
        f"{'T':>2} {'xla':>5}  {'method':<24} {'ms/step':>8} {'x EW':>6} "
        f"{'x grads':>8} {'quartiles':>10} {'peak MB':>8}"
    )
    for num_tasks in [int(t) for t in FLAGS.tasks]:
        for xla in [v.lower() == "true" for v in FLAGS.xla]:
            run(num_tasks, xla, variants(names, num_tasks))


if __name__ == "__main__":
    app.run(main)
