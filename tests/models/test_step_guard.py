"""Tests of the step guard: a non-finite step changes nothing, whatever
mechanism skips it, and the host raises once per `steps_per_execution`
group at the first bad step."""

import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import (
    TWO_TASK_LOSSES,
    RunningMeanWeighting,
    two_task_data,
    two_task_mlp,
)


def _compile(model, **kwargs):
    kwargs.setdefault("loss", TWO_TASK_LOSSES)
    kwargs.setdefault("optimizer", "adam")
    model.compile(**kwargs)
    return model


def _state(model):
    """Every variable a step may write: weights (BatchNorm statistics and the
    strategy's state among them) and the optimizer's state."""
    return [v.numpy().copy() for v in (*model.weights, *model.optimizer.variables)]


def _assert_same_state(before, model):
    after = _state(model)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "mechanism, jit_compile",
    [("cond", False), ("select", False), ("select", True), (None, True)],
    ids=["cond-False", "select-False", "select-True", "default_cond-True"],
)
def test_a_skipped_step_changes_nothing(mechanism, jit_compile):
    """Both ways of skipping a step leave model, optimizer (Adam's moments
    and iteration count), BatchNorm statistics and strategy state
    bit-identical, under graph mode and XLA; training goes on with the
    good batches. (None is the default mechanism, `"cond"`. This test also
    makes the checks of test_multi_task_model's former
    `test_nonfinite_loss_skip_leaves_model_and_strategy_untouched`, which
    trained the same model with the default mechanism, in graph mode and
    under XLA: one XLA compilation instead of two.)"""
    model = _compile(
        two_task_mlp(batch_norm=True),
        loss_weighting=RunningMeanWeighting(),
        on_nonfinite="skip",
        jit_compile=jit_compile,
    )
    model._guard.mechanism = mechanism
    x, y = two_task_data(n=24)
    y["reg"][8:16] = np.nan  # the second batch of 8 has NaN targets
    model.fit(x[:8], {k: v[:8] for k, v in y.items()}, batch_size=8, verbose=0)
    before = _state(model)
    with pytest.warns(RuntimeWarning, match="1 training step"):
        history = model.fit(
            x[8:16], {k: v[8:16] for k, v in y.items()}, batch_size=8, verbose=0
        )
    _assert_same_state(before, model)
    assert int(model.optimizer.iterations.numpy()) == 1
    assert np.isfinite(history.history["loss"][0])
    # A good step is applied by the same mechanism.
    model.fit(x[:8], {k: v[:8] for k, v in y.items()}, batch_size=8, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    # Training goes on with good batches: two of these three are applied.
    with pytest.warns(RuntimeWarning, match="1 training step"):
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 4
    assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def _optimizer_slot_reads(model):
    """How many of the optimizer's slot variables the traced step reads
    outside a conditional (a read feeds a copy or an update)."""
    x, y = two_task_data(n=4)
    specs = tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), (x, y))
    concrete = tf.function(model.train_step).get_concrete_function(specs)
    slots = [v for v in model.optimizer.variables if len(v.shape) > 0]
    handles = {id(_handle(v)): v for v in slots}
    placeholders = {
        internal.name
        for external, internal in concrete.graph.captures
        if id(external) in handles
    }
    reads = set()
    for op in concrete.graph.get_operations():
        if op.type == "ReadVariableOp" and op.inputs[0].name in placeholders:
            reads.add(op.inputs[0].name)
    return len(reads), len(slots)


def _handle(variable):
    value = getattr(variable, "value", variable)
    return getattr(value, "handle", getattr(variable, "handle", None))


def test_the_conditional_step_holds_no_copy_of_the_optimizer_slots():
    """The default (None) skips by `tf.cond`: the graph-mode traced
    step reads no optimizer slot outside the conditional (no snapshot of
    them); the select mechanism reads every one of them to copy it."""
    reads = {}
    for mechanism in (None, "cond", "select"):
        model = _compile(two_task_mlp())
        model._guard.mechanism = mechanism
        reads[mechanism] = _optimizer_slot_reads(model)
    num_reads, num_slots = reads["select"]
    assert num_slots > 0 and num_reads == num_slots, reads
    assert reads["cond"][0] == reads[None][0] == 0, reads


def test_a_group_of_steps_raises_at_its_first_bad_step_and_applies_nothing_after():
    """With steps_per_execution=4 the host reads the guard once per group:
    the error names the first bad step (1), and neither it nor the group's
    later good steps (2, 3) were applied. (Weights are compared to a
    rounding: the step of a four-step group is not bit-identical to a
    one-step group's; a later step applied would move them by ~1e-3.)"""
    x, y = two_task_data(n=32)
    y["reg"][8:16] = np.nan  # step 1 of the first group
    model = _compile(two_task_mlp(), steps_per_execution=4)
    reference = _compile(two_task_mlp(), steps_per_execution=1)
    reference.set_weights(model.get_weights())
    reference.fit(x[:8], {k: v[:8] for k, v in y.items()}, batch_size=8, verbose=0)
    with pytest.raises(FloatingPointError, match="Task 'reg'.*step 1 "):
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1
    for a, b in zip(reference.weights, model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-9)
    for a, b in zip(reference.optimizer.variables, model.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-12)


def test_an_unknown_mechanism_is_refused():
    model = _compile(two_task_mlp())
    model._guard.mechanism = "rollback"
    x, y = two_task_data(n=8)
    with pytest.raises(ValueError, match="mechanism.*'cond', 'select'"):
        model.fit(x, y, verbose=0)
