"""Which construction of the (T, P) per-task gradient matrix is fastest?

The benchmark behind the choice in `MultiTaskModel`'s gradient path: on a
small CNN, for T = 2, 4, 8 and XLA off and on, it times one forward pass
plus the per-task gradients of the shared variables built in four ways,
as ratios to one combined backward pass (what equal weighting costs):

- `persistent`: one persistent tape, a static loop of T `tape.gradient`
  calls (what the model uses);
- `separate`: T tapes, T forward passes;
- `jacobian`: `tape.jacobian` of the stacked loss vector (pfor);
- `jacobian_loop`: `tape.jacobian(..., experimental_use_pfor=False)`
  (a while loop over tasks);
- `representation`: the gradient with respect to the shared
  representation only, plus one backward through the trunk (rep_grad).

    python benchmarks/per_task_gradient_constructions.py --tasks=2,4,8
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list("tasks", ["2", "4", "8"], "Numbers of tasks.")
flags.DEFINE_list("xla", ["false", "true"], "XLA settings.")
flags.DEFINE_integer("iterations", 20, "Timed calls per construction.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
FLAGS = flags.FLAGS


def trunk_and_heads(num_tasks):
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    trunk = keras.Model(inputs, h)
    heads = [keras.layers.Dense(10) for _ in range(num_tasks)]
    for head in heads:
        head.build((None, 64))
    return trunk, heads


def constructions(trunk, heads):
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    shared = trunk.trainable_variables

    def losses_of(x, y, z=None):
        z = trunk(x) if z is None else z
        return tf.stack([loss_fn(y[:, t], head(z)) for t, head in enumerate(heads)])

    def combined(x, y):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(losses_of(x, y))
        return tape.gradient(total, shared)

    def flat(grads):
        return tf.concat([tf.reshape(g, [-1]) for g in grads], 0)

    def persistent(x, y):
        with tf.GradientTape(persistent=True) as tape:
            losses = losses_of(x, y)
            parts = [losses[t] for t in range(len(heads))]
        return tf.stack([flat(tape.gradient(p, shared)) for p in parts])

    def separate(x, y):
        rows = []
        for t in range(len(heads)):
            with tf.GradientTape() as tape:
                loss = losses_of(x, y)[t]
            rows.append(flat(tape.gradient(loss, shared)))
        return tf.stack(rows)

    def jacobian(x, y, pfor=True):
        with tf.GradientTape() as tape:
            losses = losses_of(x, y)
        jac = tape.jacobian(losses, shared, experimental_use_pfor=pfor)
        return tf.concat([tf.reshape(j, [len(heads), -1]) for j in jac], 1)

    def representation(x, y):
        with tf.GradientTape(persistent=True) as tape:
            z = trunk(x)
            tape.watch(z)
            losses = losses_of(x, y, z)
            parts = [losses[t] for t in range(len(heads))]
        rows = tf.stack([tape.gradient(p, z) for p in parts])
        return tape.gradient(z, shared, output_gradients=tf.reduce_sum(rows, 0))

    return {
        "combined (EW)": combined,
        "persistent": persistent,
        "separate": separate,
        "jacobian": jacobian,
        "jacobian_loop": lambda x, y: jacobian(x, y, pfor=False),
        "representation": representation,
    }


def main(argv):
    del argv
    print(f"{'T':>2} {'xla':>5}  {'construction':<16} {'ms':>8} {'x EW':>6}")
    for num_tasks in [int(t) for t in FLAGS.tasks]:
        trunk, heads = trunk_and_heads(num_tasks)
        x = tf.random.normal((FLAGS.batch_size, 32, 32, 3))
        y = tf.random.uniform((FLAGS.batch_size, num_tasks), 0, 10, dtype=tf.int32)
        for xla in [v.lower() == "true" for v in FLAGS.xla]:
            reference = None
            for label, fn in constructions(trunk, heads).items():
                compiled = tf.function(fn, jit_compile=xla)
                tf.nest.map_structure(lambda t: t.numpy(), compiled(x, y))
                start = time.perf_counter()
                for _ in range(FLAGS.iterations):
                    result = compiled(x, y)
                tf.nest.map_structure(lambda t: t.numpy(), result)
                ms = 1e3 * (time.perf_counter() - start) / FLAGS.iterations
                reference = reference or ms
                print(
                    f"{num_tasks:>2} {str(xla):>5}  {label:<16} {ms:>8.2f} "
                    f"{ms / reference:>6.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    app.run(main)
