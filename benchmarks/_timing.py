"""Timing helpers shared by the benchmarks (not part of the library)."""

import time

import keras
import tensorflow as tf


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of every epoch."""

    def __init__(self):
        super().__init__()
        self.times = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def time_fit_steps(model, dataset, steps, repeats=3):
    """Median seconds per step of `model.fit`, compilation excluded.

    Runs one warm-up epoch (tracing and XLA compilation) and then `repeats`
    epochs of `steps` steps; returns (median seconds per step, peak bytes
    of the CPU allocator during the timed epochs).
    """
    timer = EpochTimer()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except (ValueError, RuntimeError):
        pass
    model.fit(
        dataset, steps_per_epoch=steps, epochs=repeats, verbose=0, callbacks=[timer]
    )
    try:
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    except (ValueError, RuntimeError):
        peak = float("nan")
    times = sorted(timer.times)
    return times[len(times) // 2] / steps, peak


def time_interleaved(candidates, dataset, steps, rounds=5, cached_batches=8):
    """Median seconds per training step of several models, timed in turns.

    `candidates` maps a name to a compiled model, or to a callable taking no
    argument that runs `steps` steps itself. Each model first trains one
    epoch of `steps` steps with `fit` (tracing, compilation, building), then
    its compiled train function is called directly, `steps` times per timed
    round, on `cached_batches` batches of `dataset` held in memory: neither
    `fit`'s per-call set-up (iterators, shuffle buffers, callbacks) nor the
    input pipeline is in the time, only the training step. The candidates
    run one round each in turn, `rounds` times, so that a slow drift of the
    machine's load affects all of them alike; ratios of the medians are far
    steadier than ratios of separate runs. Returns `{name: median seconds
    per step}`.
    """
    batches = dataset.take(cached_batches).cache().repeat()
    runners = {}
    for name, candidate in candidates.items():
        if isinstance(candidate, keras.Model):
            candidate.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
            run = step_runner(candidate, iter(batches), steps)
        else:
            run = candidate
        run()  # warm-up
        runners[name] = run
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] / steps for name, t in times.items()}


def step_runner(model, iterator, steps):
    """Runs `steps` calls of the model's compiled train function and waits
    for the last one's logs."""
    model.make_train_function()

    def run():
        for _ in range(steps):
            outputs = model.train_function(iterator)
        logs = outputs.get_value() if hasattr(outputs, "get_value") else outputs
        for value in tf.nest.flatten(logs):
            value.numpy()

    return run
