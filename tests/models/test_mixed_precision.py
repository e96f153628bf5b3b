"""MultiTaskModel under mixed precision (float16 and bfloat16 compute)."""

import keras
import numpy as np
import pytest
from model_fixtures import TWO_TASK_LOSSES, two_task_data, two_task_mlp


@pytest.fixture
def policy():
    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


def _train(strategy, optimizer="sgd", steps=4):
    keras.utils.set_random_seed(4)
    model = two_task_mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05) if optimizer == "sgd" else optimizer,
        loss=TWO_TASK_LOSSES,
        loss_weighting=strategy,
    )
    x, y = two_task_data(n=8 * steps)
    history = model.fit(x, y, batch_size=8, shuffle=False, epochs=1, verbose=0)
    return model, history


_FLOAT32_RUNS = {}


def _float32_reference(strategy):
    """The float32 run of `strategy`, trained once for both policies (the
    model is only read afterwards)."""
    if strategy not in _FLOAT32_RUNS:
        assert keras.mixed_precision.global_policy().name == "float32"
        _FLOAT32_RUNS[strategy] = _train(strategy)[0]
    return _FLOAT32_RUNS[strategy]


@pytest.mark.parametrize("policy_name", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize(
    "strategy", ["ew", "uw", "mgda", "pcgrad", "nash_mtl", "auto_lambda"]
)
def test_mixed_precision_matches_float32(policy, policy_name, strategy):
    reference = _float32_reference(strategy)
    policy(policy_name)
    model, history = _train(strategy)
    if policy_name == "mixed_float16":
        # Keras wraps the optimizer to scale the loss; per-task gradients are
        # unscaled before the strategy combines them.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.loss_weighting.compute_dtype == "float32"
    assert np.all(np.isfinite(history.history["loss"]))
    tolerance = 2e-2 if policy_name == "mixed_float16" else 8e-2
    for a, b in zip(reference.trainable_variables, model.trainable_variables):
        change_ref = a.numpy()
        np.testing.assert_allclose(
            b.numpy(), change_ref, atol=tolerance, rtol=tolerance, err_msg=a.path
        )


def test_an_overflowing_step_changes_nothing_but_the_loss_scale(policy):
    """Under mixed_float16 a step whose scaled gradients overflow is skipped
    by the loss-scale optimizer, which halves its scale; the strategy's
    state (MoDo's weights) stays as it was too. MoDo's sub-batches of two
    or three samples overflow at the default initial scale, 2^15."""
    policy("mixed_float16")
    keras.utils.set_random_seed(4)
    model = two_task_mlp()
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=TWO_TASK_LOSSES,
        loss_weighting="modo",
    )
    before = [v.numpy() for v in model.weights]
    x, y = two_task_data(n=8)
    model.fit(x, y, batch_size=8, shuffle=False, epochs=1, verbose=0)
    optimizer = model.optimizer
    assert int(optimizer.iterations.numpy()) == 0  # the step was skipped
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**14
    np.testing.assert_array_equal(model.loss_weighting.task_weights.numpy(), [0.5, 0.5])
    for variable, value in zip(model.weights, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
