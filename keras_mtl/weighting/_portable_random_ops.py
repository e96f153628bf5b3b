"""Uniform draws that are identical eagerly, in graphs and under XLA.

TensorFlow's stateless random ops (behind `keras.random.*`) pick a
different bit generator under XLA than in eager or graph mode, so a seeded
strategy would mask or order tasks differently in a compiled training step
than in `aggregate()`. The draws here are a counter-based hash of the seed
generator's state and the element index, written in 32-bit unsigned
integer arithmetic, which every mode evaluates bit for bit the same way.
The seed generator advances exactly as with `keras.random`.
"""

import tensorflow as tf

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mix32(x):
    """A bijective 32-bit integer hash with good avalanche (lowbias32)."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    return x


def _to_uint32(value):
    value = tf.math.floormod(tf.cast(value, tf.int64), tf.constant(2**32, tf.int64))
    return tf.cast(value, tf.uint32)


def next_seed(seed_generator, advance=True):
    """The seed `seed_generator.next()` returns, advancing the generator
    only when `advance` is True.

    With `advance=False` (a strategy called with `training=False`) the
    seed is the one the next advancing call will return, so an evaluation
    call draws what the next training step will draw and leaves the random
    state untouched (the strategy contract: state changes only in
    training).
    """
    if advance:
        return seed_generator.next()
    return seed_generator.state.value * 1


def uniform(shape, seed_generator, dtype="float32", advance=True):
    """Returns U[0, 1) draws of `shape`, advancing `seed_generator`.

    Args:
        shape: a tuple of Python ints, or a 1-D integer tensor (for shapes
            only known when the graph runs).
        seed_generator: a `keras.random.SeedGenerator`; its state is
            advanced once, as by one `keras.random.uniform` call.
        dtype: the float dtype of the result.
        advance: False to leave the generator's state unchanged (see
            `next_seed`).
    """
    if isinstance(shape, (tuple, list)) and all(isinstance(d, int) for d in shape):
        count = 1
        for d in shape:
            count *= d
    else:
        shape = tf.cast(shape, tf.int64)
        count = tf.reduce_prod(shape)
    seed = next_seed(seed_generator, advance)
    key_0 = _mix32(_to_uint32(seed[0]) + tf.constant(_GOLDEN, tf.uint32))
    key_1 = _mix32(tf.bitwise.bitwise_xor(_to_uint32(seed[1]), key_0))
    index = tf.cast(tf.range(count, dtype=tf.int64), tf.uint32)
    bits = _mix32(
        tf.bitwise.bitwise_xor(index * tf.constant(_GOLDEN, tf.uint32), key_1)
    )
    bits = _mix32(bits + key_0)
    # The top 24 bits give an exactly representable float32 in [0, 1).
    top = tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.int32)
    values = tf.cast(top, tf.float32) * (1.0 / (1 << 24))
    return tf.cast(tf.reshape(values, shape), dtype)
