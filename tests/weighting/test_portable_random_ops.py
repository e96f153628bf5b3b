"""Tests of the counter-based uniform draws (`_portable_random_ops`): the
same bits eagerly, compiled and on every backend."""

import keras
import numpy as np
import pytest
from backends import compiled

from keras_mtl.weighting._portable_random_ops import uniform

pytestmark = pytest.mark.both_backends

# The draws of `uniform((3, 4), SeedGenerator(7))` (three calls), times
# 2^24: pinned from the TensorFlow implementation the library shipped
# before the backend port, so saved seeds keep drawing what they drew.
SEED_7 = [
    [[5913958, 13285337, 12021824, 2936624], [14165832, 7375223, 15206540, 9911199],
     [7120058, 15329885, 14097254, 4991029]],
    [[2530578, 2018641, 11995403, 10821909], [4659423, 2039257, 8059739, 16555564],
     [3916228, 7753302, 7079059, 5131955]],
    [[6911933, 14655270, 8080757, 11608092], [6099562, 8596821, 5935973, 16090062],
     [11259356, 802955, 3265122, 5165463]],
]  # fmt: skip
# A state beyond 32 bits (int64 on TensorFlow) is taken modulo 2^32.
WRAPPED = [4452856, 9323311, 14892179, 4899178, 13971702]


class _Holder(keras.layers.Layer):
    def __init__(self, seed):
        super().__init__()
        self.seed_generator = keras.random.SeedGenerator(seed)


def _ints(values):
    values = keras.ops.convert_to_numpy(values)
    scaled = values.astype(np.float64) * (1 << 24)
    np.testing.assert_array_equal(scaled, np.round(scaled))  # 24-bit values
    return scaled.astype(np.int64).tolist()


def test_pinned_bits_eagerly():
    generator = keras.random.SeedGenerator(7)
    draws = [_ints(uniform((3, 4), generator)) for _ in range(3)]
    assert draws == SEED_7
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(generator.state.value), [7, 3]
    )


def test_pinned_bits_compiled_and_state_threaded():
    holder = _Holder(7)
    step = compiled(lambda: uniform((3, 4), holder.seed_generator), layers=[holder])
    assert [_ints(step()) for _ in range(3)] == SEED_7
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(holder.seed_generator.state.value), [7, 3]
    )


def test_state_reduced_modulo_2_32():
    generator = keras.random.SeedGenerator(0)
    state = np.array([2**32 - 1, 3], dtype=generator.state.dtype)
    generator.state.assign(state)
    assert _ints(uniform((5,), generator)) == WRAPPED
    if keras.backend.backend() == "tensorflow":  # int64 state: wraps too
        generator.state.assign(np.array([-1, 2**32 + 3], dtype="int64"))
        assert _ints(uniform((5,), generator)) == WRAPPED


def test_no_advance_draws_the_next_draw():
    generator = keras.random.SeedGenerator(7)
    peek = _ints(uniform((3, 4), generator, advance=False))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(generator.state.value), [7, 0]
    )
    assert peek == SEED_7[0] == _ints(uniform((3, 4), generator))


def test_dtype_and_range():
    generator = keras.random.SeedGenerator(3)
    values = uniform((1000,), generator, dtype="float16")
    assert keras.backend.standardize_dtype(values.dtype) == "float16"
    values = keras.ops.convert_to_numpy(uniform((4000,), generator))
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.02  # ~1/sqrt(12 * 4000) = 0.0046
