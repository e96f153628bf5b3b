"""Step time and peak memory from 2 to 100 tasks, as ratios to equal weighting.

Table 1 (tasks): an MLP trunk (256 -> 128 -> 64, P = 41,152 shared
parameters) with one 1-unit binary head per task, batch 128. For every number
of tasks T the script times equal weighting, the per-task gradients alone (a
strategy that only sums the rows of the (T, P) matrix: the cost of the
gradient engine), loss-based strategies (up to 100 tasks) and gradient
methods (up to `--max_gradient_tasks`), and prints milliseconds per step (the
fastest of `--repeats` timed epochs, after a warm-up epoch), the
ratio to equal weighting at the same T, the ratio to the per-task gradients
alone, the peak memory the timed steps allocate, the memory it
adds to equal weighting's peak and its ratio to it (printed only when equal
weighting's peak is at least 1 MiB) and the seconds of the warm-up epoch
(tracing the step, which grows with T for per-task gradient methods).

Memory is `tf.config.experimental.get_memory_info("CPU:0")["peak"]`, reset
after the warm-up epoch, less the memory in use at that point (the model's
variables and optimizer state, and whatever earlier models left behind): the
peak of what the timed steps allocate, printed as "step MB". On CPU these
statistics exist only with oneDNN's allocator (the default; with
TF_ENABLE_ONEDNN_OPTS=0 there are none), which tracks the peak of
allocations of 256 KiB and more: the small activations of equal weighting
are mostly invisible, the (T, P) per-task gradient matrix (4 T P bytes,
329 KB for T = 2) is seen.

Table 2 (parameters): at a fixed T (`--sweep_tasks`), the trunk is widened
(`--widths` multiplies both hidden sizes) so that P grows, and the peak
memory of the per-task gradients alone and of each gradient method is
printed with the memory it needs beyond the per-task gradients alone, in MB,
in float32 (P,) vectors and in (T, P) float32 matrices. A method that needs
only the Gramian (`requires == "gramian"`: its weights come from the (T, T)
matrix G G^T) should add no memory that grows with T * P: at most a few
(P,) vectors (the update itself is one).

Table 3 (the Gramian path): at T = `--sweep_tasks`, the trunk is deepened
(`--depths` hidden layers of the same width) so that P grows while the
largest shared variable stays the same. Each Gramian method runs with
`compile(per_task_gradients="matrix")` (the (T, P) matrix) and with
`per_task_gradients="gramian"` (the Gramian summed stage by stage down the
trunk's layers, one extra backward pass). The memory beyond equal weighting
is printed in MB, in (T, P) float32 matrices and in T x (largest shared
variable) blocks: the
matrix path grows with P, the Gramian path should stay at a few blocks
whatever P. With `--jit_compile`, the last column is XLA's own plan for the
step: the peak of its buffer assignment (arguments and temporaries, from the
`--xla_dump_to` dump) beyond equal weighting's. The allocator's peak under XLA
also counts buffers the runtime allocates outside that plan and varies more
from run to run.

    python benchmarks/many_tasks.py
    python benchmarks/many_tasks.py --tasks=2,10 --loss_methods=dwa \
        --gradient_methods=mgda --widths=1,4
"""

import gc
import glob
import os
import re
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import EpochTimer  # noqa: E402
from absl import app, flags  # noqa: E402
from keras import ops  # noqa: E402

import keras_mtl  # noqa: E402
from keras_mtl.weighting.gradient_aggregation import GradientAggregation  # noqa: E402

flags.DEFINE_list("tasks", ["2", "10", "40", "100"], "Numbers of tasks.")
flags.DEFINE_list("loss_methods", ["dwa", "uw", "slaw", "famo", "rlw"], "Loss-based.")
flags.DEFINE_list(
    "gradient_methods", ["mgda", "pcgrad", "nash_mtl", "upgrad"], "Gradient-based."
)
flags.DEFINE_integer("max_gradient_tasks", 40, "Largest T for gradient methods.")
flags.DEFINE_integer("steps", 50, "Timed steps per epoch.")
flags.DEFINE_integer("repeats", 5, "Timed epochs (the fastest is reported).")
flags.DEFINE_bool("jit_compile", False, "Compile the steps with XLA.")
flags.DEFINE_list(
    "widths", ["1", "4"], "Trunk width multipliers of table 2 (empty: no table 2)."
)
flags.DEFINE_integer("sweep_tasks", 10, "Number of tasks of tables 2 and 3.")
flags.DEFINE_list(
    "depths", ["2", "6", "12"], "Trunk depths of table 3 (empty: no table 3)."
)
flags.DEFINE_integer("depth_width", 4, "Width multiplier of table 3.")
flags.DEFINE_list(
    "per_task_modes",
    ["matrix", "gramian"],
    "compile(per_task_gradients=...) settings of table 3.",
)
FLAGS = flags.FLAGS


class SumRows(GradientAggregation):
    """The per-task gradients and nothing else: update = sum of rows.

    (As in gradient_methods.py, which cannot be imported here: both scripts
    define the same absl flags.)"""

    def call(self, grads, losses=None, training=True, task_mask=None):
        return ops.sum(grads, axis=0), ops.ones((grads.shape[0],))


HIDDEN = (128, 64)
INPUT_DIM = 256
BATCH = 128


def mlp(num_tasks, width=1, depth=2):
    """`depth` hidden layers: the first of HIDDEN[0] * width units, the
    others of HIDDEN[1] * width."""
    inputs = keras.Input((INPUT_DIM,))
    h = keras.layers.Dense(HIDDEN[0] * width, activation="relu")(inputs)
    for _ in range(depth - 1):
        h = keras.layers.Dense(HIDDEN[1] * width, activation="relu")(h)
    outputs = {f"t{t}": keras.layers.Dense(1)(h) for t in range(num_tasks)}
    return keras_mtl.MultiTaskModel(inputs, outputs)


def dataset(num_tasks):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * 2, INPUT_DIM)).astype("float32")
    y = {
        f"t{t}": rng.integers(0, 2, size=(BATCH * 2, 1)).astype("float32")
        for t in range(num_tasks)
    }
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()


def measure(num_tasks, identifier, data, width=1, depth=2, per_task="matrix"):
    """(seconds per step, peak bytes, warm-up seconds, P) of one strategy on
    a fresh model."""
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(0)
    model = mlp(num_tasks, width, depth)
    strategy = identifier() if callable(identifier) else identifier
    model.compile(
        optimizer="sgd",
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        loss_weighting=strategy,
        per_task_gradients=per_task,
        jit_compile=FLAGS.jit_compile,
    )
    num_shared = sum(int(np.prod(v.shape)) for v in model.shared_variables)
    seconds, peak, warm_up = time_steps(model, data)
    return seconds, peak, warm_up, num_shared


_XLA_DUMP = None


def dump_xla_buffer_plans():
    """Makes XLA write its buffer assignments to a temporary directory (must
    run before the first XLA compilation of the process)."""
    global _XLA_DUMP
    _XLA_DUMP = tempfile.mkdtemp(prefix="many_tasks_xla_")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_dump_to={_XLA_DUMP} --xla_dump_hlo_pass_re=NONE"
        + " --xla_dump_hlo_module_re=.*one_step_on_data.*"
    ).strip()


def last_xla_plan_peak():
    """Peak bytes of the newest training step's XLA buffer assignment, or
    NaN when there is none."""
    if _XLA_DUMP is None:
        return float("nan")
    files = glob.glob(os.path.join(_XLA_DUMP, "*buffer-assignment.txt"))
    if not files:
        return float("nan")
    with open(max(files, key=os.path.getmtime)) as handle:
        found = re.search(r"peak usage: ([\d ]+) bytes", handle.read())
    return float(found.group(1).replace(" ", "")) if found else float("nan")


def time_steps(model, data):
    """Seconds per step of the fastest timed epoch, the peak bytes the timed
    steps allocate and the seconds of the warm-up epoch (tracing included).

    One warm-up epoch (tracing) first, then `--repeats` epochs of `--steps`
    steps. The minimum, not the median: on a shared machine other processes
    only ever slow an epoch down.
    """
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
    warm_up = time.perf_counter() - start
    gc.collect()
    tf.config.experimental.reset_memory_stats("CPU:0")
    # Memory already in use (the model, its optimizer, buffers a previous
    # model left to the allocator) is not the step's.
    in_use = tf.config.experimental.get_memory_info("CPU:0")["current"]
    timer = EpochTimer()
    model.fit(
        data,
        steps_per_epoch=FLAGS.steps,
        epochs=FLAGS.repeats,
        verbose=0,
        callbacks=[timer],
    )
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] - in_use
    return min(timer.times) / FLAGS.steps, peak, warm_up


def task_table():
    print(
        f"{'T':>4}  {'method':<16} {'ms/step':>8} {'x EW':>6} {'x grads':>8} "
        f"{'step MB':>8} {'+MB vs EW':>9} {'mem x EW':>8} {'warm-up s':>9}"
    )
    for num_tasks in [int(t) for t in FLAGS.tasks]:
        data = dataset(num_tasks)
        methods = [("ew", "ew")]
        if num_tasks <= FLAGS.max_gradient_tasks:
            # Measured before the others so that every row has both ratios.
            methods.append(("per-task grads", SumRows))
        methods += [(m, m) for m in FLAGS.loss_methods]
        if num_tasks <= FLAGS.max_gradient_tasks:
            methods += [(m, m) for m in FLAGS.gradient_methods]
        reference = {}
        for label, identifier in methods:
            seconds, peak, warm_up, _ = measure(num_tasks, identifier, data)
            reference.setdefault(label, (seconds, peak))
            ew_time, ew_peak = reference["ew"]
            grads_time = reference.get("per-task grads", (float("nan"),))[0]
            # The allocator sees only allocations of 256 KiB or more (see
            # the module docstring): a ratio to a near-zero peak means little.
            ratio = f"{peak / ew_peak:.2f}" if ew_peak >= 2**20 else "-"
            print(
                f"{num_tasks:>4}  {label:<16} {1e3 * seconds:>8.2f} "
                f"{seconds / ew_time:>6.2f} {seconds / grads_time:>8.2f} "
                f"{peak / 2**20:>8.1f} {(peak - ew_peak) / 2**20:>9.1f} {ratio:>8} "
                f"{warm_up:>9.1f}",
                flush=True,
            )


def parameter_table():
    widths = [int(w) for w in FLAGS.widths]
    if not widths:
        return
    num_tasks = FLAGS.sweep_tasks
    print()
    print(
        f"{'T':>4} {'P':>9}  {'method':<16} {'requires':<9} {'ms/step':>8} "
        f"{'step MB':>8} {'extra MB':>9} {'P-vectors':>9} {'TP-mats':>8}"
    )
    data = dataset(num_tasks)
    methods = [("ew", "ew", "losses"), ("per-task grads", SumRows, "gradients")]
    for name in FLAGS.gradient_methods:
        cls = keras_mtl.weighting.registry.lookup(name)
        methods.append((name, name, cls.requires))
    for width in widths:
        grads_peak = None
        for label, identifier, requires in methods:
            seconds, peak, _, num_shared = measure(num_tasks, identifier, data, width)
            if label == "per-task grads":
                grads_peak = peak
            matrix_bytes = 4 * num_tasks * num_shared
            if grads_peak is None or label == "per-task grads":
                extra = float("nan")
            else:
                extra = peak - grads_peak
            print(
                f"{num_tasks:>4} {num_shared:>9}  {label:<16} {requires:<9} "
                f"{1e3 * seconds:>8.2f} {peak / 2**20:>8.1f} "
                f"{extra / 2**20:>9.2f} {extra / (4 * num_shared):>9.2f} "
                f"{extra / matrix_bytes:>8.2f}",
                flush=True,
            )


def gramian_table():
    depths = [int(d) for d in FLAGS.depths]
    if not depths:
        return
    num_tasks, width = FLAGS.sweep_tasks, FLAGS.depth_width
    print()
    print(
        f"{'T':>4} {'depth':>5} {'P':>9}  {'method':<10} {'per-task':<18} "
        f"{'ms/step':>8} {'step MB':>8} {'+MB vs EW':>9} {'TP-mats':>8} "
        f"{'T-blocks':>8} {'XLA plan +MB':>12}"
    )
    data = dataset(num_tasks)
    methods = [("ew", "matrix")]
    for name in FLAGS.gradient_methods:
        if keras_mtl.weighting.registry.lookup(name).requires == "gramian":
            methods += [(name, mode) for mode in FLAGS.per_task_modes]
    for depth in depths:
        ew_peak = ew_plan = None
        for name, per_task in methods:
            seconds, peak, _, num_shared = measure(
                num_tasks, name, data, width, depth, per_task
            )
            plan = last_xla_plan_peak()
            if ew_peak is None:
                ew_peak, ew_plan = peak, plan
            model = mlp(1, width, depth)
            largest = max(int(np.prod(v.shape)) for v in model.trainable_variables)
            extra = peak - ew_peak
            print(
                f"{num_tasks:>4} {depth:>5} {num_shared:>9}  {name:<10} "
                f"{per_task if name != 'ew' else '-':<18} {1e3 * seconds:>8.2f} "
                f"{peak / 2**20:>8.1f} {extra / 2**20:>9.1f} "
                f"{extra / (4 * num_tasks * num_shared):>8.2f} "
                f"{extra / (4 * num_tasks * largest):>8.2f} "
                f"{(plan - ew_plan) / 2**20:>12.1f}",
                flush=True,
            )


def main(argv):
    del argv
    print(
        f"# jit_compile={FLAGS.jit_compile} steps={FLAGS.steps} "
        f"repeats={FLAGS.repeats} batch={BATCH} cpus={os.cpu_count()} "
        f"tf={tf.__version__} keras={keras.__version__}"
    )
    if FLAGS.jit_compile and FLAGS.depths:
        dump_xla_buffer_plans()
    # A throw-away run: the first `fit` of a process pays one-time costs
    # (thread pools, tf.data start-up) that would inflate the first row.
    measure(2, "ew", dataset(2))
    if FLAGS.tasks:
        task_table()
    parameter_table()
    gramian_table()


if __name__ == "__main__":
    app.run(main)
