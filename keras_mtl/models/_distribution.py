"""Replica helpers of the training step under `tf.distribute` (TensorFlow).

Every helper is a no-op on one device, so that the step reads the same with
or without a distribution strategy. The gradient paths and the losses use
them to make values those of the global batch (sums over replicas) while
gradients stay each replica's share, which the optimizer sums.

On JAX every helper is a no-op: the compiled step sees global arrays
(`keras.distribution` shards them and XLA inserts the collectives), so
there is nothing to sum by hand.
"""

from __future__ import annotations

import keras

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf
else:
    tf = None


def num_replicas():
    """The number of replicas in sync (1 outside a replica context)."""
    if tf is None:
        return 1
    replica = tf.distribute.get_replica_context()
    return 1 if replica is None else replica.num_replicas_in_sync


def in_sync_replicas():
    """The replica context when several replicas run in sync, else None."""
    if tf is None:
        return None
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return None
    return replica


def sum_over_replicas(value):
    """The sum of `value` over the replicas in sync."""
    replica = in_sync_replicas()
    if replica is None:
        return value
    return replica.all_reduce(tf.distribute.ReduceOp.SUM, value)


def on_all_replicas(flag):
    """True where `flag` holds on every replica."""
    replica = in_sync_replicas()
    if replica is None:
        return flag
    bad = replica.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(flag), tf.float32)
    )
    return bad < 0.5


def global_batch_losses(scaled_losses):
    """Task losses of the global batch, differentiable through this replica.

    Keras losses divide by the number of replicas R so that summing the
    replicas' gradients gives the global-batch gradient. Non-linear
    strategies need the loss values themselves: the value returned is the
    global-batch loss (the mean over replicas, the same on every replica),
    and its gradient is this replica's share, (1/R) dL_local, so that any
    objective f(L) differentiated on every replica and summed by the
    optimizer gives f'(L) dL of the global batch.
    """
    replica = in_sync_replicas()
    if replica is None:
        return scaled_losses
    global_mean = replica.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.stop_gradient(scaled_losses)
    )
    return scaled_losses + tf.stop_gradient(global_mean - scaled_losses)


def needs_merge_call():
    """Whether an optimizer step must be taken in cross-replica context
    (MirroredStrategy's optimizer synchronises through `merge_call`)."""
    replica = in_sync_replicas()
    return (
        replica is not None
        and not tf.__internal__.distribute.strategy_supports_no_merge_call()
    )


def apply_in_cross_replica_context(optimizer, ok, grads, variables):
    """`optimizer.apply(grads, variables)` where `ok` (the same on every
    replica) holds, decided in cross-replica context as Keras'
    `LossScaleOptimizer` does."""

    def cross_replica(distribution, ok, grads, variables):
        ok = distribution.experimental_local_results(ok)[0]

        def apply_on_replicas():
            distribution.extended.call_for_each_replica(
                optimizer.apply, args=(grads, variables)
            )
            return tf.constant(True)

        tf.cond(ok, apply_on_replicas, lambda: tf.constant(False))

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(ok, grads, variables)
    )


def first_local_value(distribution, value):
    """The first local replica's component of a distributed value."""
    if isinstance(value, tf.distribute.DistributedValues):
        return distribution.experimental_local_results(value)[0]
    return value


def symbolic_build(model, iterator=None, data_batch=None):
    """Keras' symbolic build of `model` under its distribution strategy,
    from a batch of the first local replica (shapes and dtypes are all it
    needs), without collective ops: Keras 3 (keras-team/keras#20585) hands
    the whole nested batch to one `strategy.reduce`, which
    MultiWorkerMirroredStrategy rejects."""
    distribution = model.distribute_strategy
    if iterator is not None:
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: first_local_value(distribution, v), next(it)
            )
            break
    with distribution.scope():
        model._symbolic_build(data_batch=data_batch)


def rank_one_across_workers(logs):
    """The step's logs as (1,) tensors under a multi-worker strategy.

    Keras 3 reduces a step's logs across the workers of a
    MultiWorkerMirroredStrategy with `strategy.reduce("MEAN", v, axis=0)`,
    which fails on scalars (keras-team/keras#20585). The logs are the same
    on every replica (the metric variables are synchronised): as (1,)
    tensors they reduce to the same scalars. A no-op otherwise.
    """
    if tf is None:
        return logs
    distribution = tf.distribute.get_strategy()
    if not (
        isinstance(distribution, tf.distribute.MultiWorkerMirroredStrategy)
        and distribution.extended._in_multi_worker_mode()
    ):
        return logs
    return {key: tf.reshape(value, (1,)) for key, value in logs.items()}


def after_batch(data, step, *args):
    """`step(data, *args)`, every state change of which waits for the batch.

    At the end of a data set of unknown length Keras runs the step once
    more and the batch read fails; without the dependency, the optimizer's
    iteration count and strategy counters would already have moved.
    (JAX has no such step: the batch is read before the step is called.)
    """
    if tf is None:
        return step(data, *args)
    inputs = [t for t in tf.nest.flatten(data) if tf.is_tensor(t)]
    with tf.control_dependencies(inputs):
        return step(data, *args)


def check_jit_compile(jit_compile, distribution):
    """Raises for `jit_compile=True` where XLA cannot compile Keras' step.

    Keras compiles `strategy.run` over all local replicas as one XLA
    cluster: with several local devices it must reach variables on other
    devices, which XLA forbids; with one CPU device per worker the step
    holds collectives, which XLA compiles only for GPUs (NCCL). `"auto"`
    is already off under any distribution strategy (Keras' resolution).
    """
    if tf is None or distribution is None:
        return
    if jit_compile is not True or distribution.num_replicas_in_sync == 1:
        return
    if not isinstance(
        distribution,
        (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy),
    ):
        return
    devices = distribution.extended.worker_devices
    if len(devices) > 1:
        reason = (
            f"Keras compiles the whole step, all {len(devices)} local replicas "
            "included, as one XLA cluster on one device, and XLA cannot use "
            "variables placed on the other devices"
        )
    elif any(tf.DeviceSpec.from_string(d).device_type == "CPU" for d in devices):
        reason = "XLA does not compile collective ops on CPU devices"
    else:
        return  # one GPU per worker: NCCL collectives compile (untested)
    raise ValueError(
        f"jit_compile=True cannot work under {type(distribution).__name__} "
        f"with {distribution.num_replicas_in_sync} replicas: {reason}. Use "
        "jit_compile='auto' (Keras then turns XLA off under a distribution "
        "strategy) or False."
    )
