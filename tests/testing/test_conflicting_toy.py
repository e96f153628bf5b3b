"""The CAGrad toy: plain averaging with Adam at lr 1e-3 (the paper's setting).

Reference runs with another library: averaging is still at x2 = 2.1 / 2.3
after 100k steps from (-8.5, 7.5) / (9, 9), with the two losses far apart,
and reaches the centre of the Pareto segment only from (-8.5, -5).
"""

import keras
import numpy as np
import pytest

from keras_mtl.testing import conflicting_toy_losses, run_conflicting_toy
from keras_mtl.testing.conflicting_toy import PARETO_CENTRE

pytestmark = pytest.mark.both_backends


def _mean(grads, losses):
    return keras.ops.mean(grads, axis=0)


def test_losses_at_known_points():
    # On the Pareto centre both losses equal ((7)^2 + 0.1 * 0.3552^2)/10 - 20
    # times c2 = tanh(8.3552 / 2), the average-loss optimum.
    losses = keras.ops.convert_to_numpy(conflicting_toy_losses(PARETO_CENTRE))
    expected = np.tanh(8.3552 / 2) * ((49 + 0.1 * 0.3552**2) / 10 - 20)
    np.testing.assert_allclose(losses, [expected, expected], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "start, stalls", [((-8.5, 7.5), True), ((9.0, 9.0), True), ((-8.5, -5.0), False)]
)
def test_averaging_stalls_from_two_starts_and_converges_from_the_third(start, stalls):
    theta, losses = run_conflicting_toy(_mean, start, steps=100_000)
    if stalls:
        assert 1.5 < theta[1] < 3.0, theta
        assert abs(losses[0] - losses[1]) > 3.0, losses
    else:
        np.testing.assert_allclose(theta, PARETO_CENTRE, atol=1e-3)


@pytest.mark.slow
def test_cagrad_reaches_the_centre_of_the_pareto_segment():
    """CAGrad (c = 0.5) crosses the flat valley from (-8.5, 7.5), where
    averaging stalls, and sits at the centre (reference: from 70k steps)."""
    from keras_mtl.weighting import CAGrad

    strategy = CAGrad(c=0.5)
    strategy.build((2, 2))
    theta, losses = run_conflicting_toy(
        lambda grads, losses: strategy(grads, losses, training=True),
        (-8.5, 7.5),
        steps=80_000,
    )
    np.testing.assert_allclose(theta, PARETO_CENTRE, atol=0.05)
    assert abs(losses[0] - losses[1]) < 0.1, losses
