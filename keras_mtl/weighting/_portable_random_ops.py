"""Uniform draws that are identical eagerly, in graphs, under XLA and on
every Keras backend.

TensorFlow's stateless random ops (behind `keras.random.*`) pick a
different bit generator under XLA than in eager or graph mode, and each
Keras backend has its own generator, so a seeded strategy would mask or
order tasks differently in a compiled training step than in `aggregate()`,
and differently on JAX than on TensorFlow. The draws here are a
counter-based hash of the seed generator's state and the element index,
written in 32-bit unsigned integer arithmetic (`keras.ops` on uint32, which
wraps modulo 2^32 on every backend), which every mode evaluates bit for bit
the same way. The seed generator advances exactly as with `keras.random`.

The seed generator's state is int64 on TensorFlow and uint32 on JAX; both
are reduced modulo 2^32 first, so a state gives the same draws on both.
"""

from keras import ops

_GOLDEN = 0x9E3779B9


def uint32(value):
    """A Python int (reduced modulo 2^32) as a uint32 scalar tensor."""
    return ops.convert_to_tensor(int(value) % (1 << 32), dtype="uint32")


def _mix32(x):
    """A bijective 32-bit integer hash with good avalanche (lowbias32)."""
    x = ops.bitwise_xor(x, ops.right_shift(x, uint32(16)))
    x = ops.multiply(x, uint32(0x7FEB352D))
    x = ops.bitwise_xor(x, ops.right_shift(x, uint32(15)))
    x = ops.multiply(x, uint32(0x846CA68B))
    x = ops.bitwise_xor(x, ops.right_shift(x, uint32(16)))
    return x


def mix32(x):
    """`lowbias32` of a uint32 tensor: a bijective hash of each element."""
    return _mix32(x)


def _to_uint32(value):
    """An integer tensor reduced modulo 2^32, as uint32.

    The seed state is uint32 on JAX (kept as is) and int64 on TensorFlow
    (reduced with a floored modulo, exact for negative values too)."""
    value = ops.convert_to_tensor(value)
    if ops.dtype(value) == "uint32":
        return value
    value = ops.mod(ops.cast(value, "int64"), ops.convert_to_tensor(1 << 32, "int64"))
    return ops.cast(value, "uint32")


def to_uint32(value):
    """An integer tensor (a seed) reduced modulo 2^32, as uint32."""
    return _to_uint32(value)


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
            only known when a TensorFlow graph runs).
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
        # int32 then uint32: TensorFlow's XLA has no uint32 range.
        index = ops.cast(ops.arange(count, dtype="int32"), "uint32")
    else:
        shape = ops.cast(shape, "int32")
        index = ops.cast(ops.arange(ops.prod(shape), dtype="int32"), "uint32")
    seed = _to_uint32(next_seed(seed_generator, advance))
    key_0 = _mix32(ops.add(seed[0], uint32(_GOLDEN)))
    key_1 = _mix32(ops.bitwise_xor(seed[1], key_0))
    bits = _mix32(ops.bitwise_xor(ops.multiply(index, uint32(_GOLDEN)), key_1))
    bits = _mix32(ops.add(bits, key_0))
    # The top 24 bits give an exactly representable float32 in [0, 1).
    top = ops.cast(ops.right_shift(bits, uint32(8)), "int32")
    values = ops.cast(top, "float32") * (1.0 / (1 << 24))
    return ops.cast(ops.reshape(values, shape), dtype)
