"""Checks shared by the strategy tests: missing tasks, XLA, state round trips.

A model compiled with `missing_labels` passes a strategy a `(T,)`
`task_mask` (see `Strategy`). A strategy that supports it must:

1. behave exactly as without a mask when every task is present
   (`assert_all_ones_mask_is_no_mask`);
2. give absent tasks weight 0 and compute everything else as the same
   strategy built for the K present tasks would, leaving the absent tasks'
   per-task state untouched (`assert_absent_task_is_dropped`);
3. have its absent tasks' state put back by `restore_absent_tasks`
   (`assert_restore_keeps_absent_state`, `assert_no_per_task_state`);
4. stay finite on degenerate inputs (`assert_masked_outputs_finite`);
5. give the same results eagerly and under XLA (`assert_xla_matches_eager`,
   also without a mask).

Every check runs a strategy through `call(strategy, *args, task_mask=None)`,
which returns a tuple of outputs (`default_call` calls the strategy itself;
a test passes its own to add `kpis=`, `shared_grads=`, a gradient tape or a
post-step update). A step is a tuple of positional arguments (any other
value, such as an array or a list of losses, is the only argument); the
entry `END_OF_EPOCH` in a list of steps calls
`on_epoch_end()` on every strategy of the check. The first argument's
leading axis is the task axis (T). Tolerances `rtol` / `atol` are one value
for every output or a sequence with one per output; an `atol` may be a
function of the expected value. With `rtol = atol = 0` values must be equal.
"""

import keras
import numpy as np
from backends import BACKEND, compiled

#: In a list of steps: call `on_epoch_end()` on every strategy of the check.
END_OF_EPOCH = "end of epoch"


# --- Inputs -----------------------------------------------------------------


def with_absent(*arrays, absent):
    """Float32 copies of `arrays` with the rows (axis 0) of the `absent`
    tasks zeroed, as a model hands them over, followed by the `(T,)` mask."""
    arrays = [np.array(a, "float32") for a in arrays]
    mask = np.ones(len(arrays[0]), "float32")
    mask[list(absent)] = 0.0
    for a in arrays:
        a[list(absent)] = 0.0
    return (*arrays, mask)


def with_epoch_ends(epochs):
    """The steps of `epochs` (lists of steps), each epoch followed by
    `END_OF_EPOCH`."""
    return [step for epoch in epochs for step in [*epoch, END_OF_EPOCH]]


def scaled_atol(factor):
    """An `atol` of `factor` times the largest magnitude of the expected
    value (for results whose scale spans many orders of magnitude)."""
    return lambda expected: factor * (np.abs(expected).max() + 1e-30)


def default_call(strategy, *args, task_mask=None, **kwargs):
    """`strategy(*args, **kwargs)`, with `task_mask=` when one is given."""
    if task_mask is not None:
        kwargs["task_mask"] = task_mask
    return strategy(*args, **kwargs)


def loss_call(strategy, losses, task_mask=None, *, wrt=(), training=True):
    """A `call` for loss-weighting strategies: the objective, the weights,
    the gradient of the objective with respect to the losses and then with
    respect to each of the strategy's variables named in `wrt`.

    The strategy's state moves as in a plain call (on JAX its variables'
    new values are assigned back after the differentiated call)."""
    losses = keras.ops.convert_to_tensor(losses, "float32")
    kwargs = {} if task_mask is None else {"task_mask": task_mask}
    if wrt and not strategy.built:
        strategy.build(tuple(losses.shape))
    variables = [getattr(strategy, name) for name in wrt]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(persistent=bool(wrt)) as tape:
            tape.watch(losses)
            total, weights = strategy(losses, training=training, **kwargs)
        return (total, weights, *tape.gradient(total, [losses, *variables]))
    if BACKEND != "jax":
        raise NotImplementedError(f"no loss_call for backend {BACKEND!r}")
    import jax

    if not strategy.built:
        strategy.build(tuple(losses.shape))
    state = list(strategy.variables)

    def objective(loss_values, wrt_values):
        values = {id(v): v.value for v in state}
        values.update({id(v): x for v, x in zip(variables, wrt_values)})
        mapping = [(v, values[id(v)]) for v in state]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            total, weights = strategy(loss_values, training=training, **kwargs)
        return total, (weights, [scope.get_current_value(v) for v in state])

    (total, (weights, new_values)), grads = jax.value_and_grad(
        objective, argnums=(0, 1), has_aux=True
    )(losses, [v.value for v in variables])
    for v, value in zip(state, new_values):
        v.assign(value)
    return (total, weights, grads[0], *grads[1])


# --- Private helpers ----------------------------------------------------------


def _args(step):
    return tuple(step) if isinstance(step, tuple) else (step,)


def _numpy(outputs):
    if not isinstance(outputs, tuple | list):
        outputs = (outputs,)
    return tuple(np.asarray(keras.ops.convert_to_numpy(o)) for o in outputs)


def _per_output(value, index):
    if isinstance(value, list | tuple):
        return value[index]
    return value


def _assert_close(actual, expected, rtol, atol, err_msg=""):
    if callable(atol):
        atol = atol(np.asarray(expected))
    if rtol == 0 and atol == 0:
        np.testing.assert_array_equal(actual, expected, err_msg=err_msg)
    else:
        np.testing.assert_allclose(
            actual, expected, rtol=rtol, atol=atol, err_msg=err_msg
        )


def _assert_outputs_close(actual, expected, rtol, atol, what=""):
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        _assert_close(
            a,
            e,
            _per_output(rtol, i),
            _per_output(atol, i),
            err_msg=f"{what} output {i}",
        )


def _assert_variables_close(strategies, rtol=0.0, atol=0.0, what=""):
    first, second = strategies
    assert len(first.weights) == len(second.weights), what
    for a, b in zip(first.weights, second.weights):
        _assert_close(
            keras.ops.convert_to_numpy(b.value),
            keras.ops.convert_to_numpy(a.value),
            rtol,
            atol,
            err_msg=f"{what} variable {a.path}",
        )


def _state_tolerance(given, outputs_tolerance):
    """The tolerance for variables: `given`, else the loosest numeric one of
    the outputs."""
    if given is not None:
        return given
    values = outputs_tolerance
    if not isinstance(values, list | tuple):
        values = [values]
    return max([v for v in values if not callable(v)], default=0.0)


def _assert_variables_finite(strategy):
    for v in strategy.weights:
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(v.value))), v.path


def _task_axes(strategy):
    return {v.path: axis for v, axis in strategy.per_task_state()}


def _per_task_values(strategy):
    """`{path: value}` of the per-task state, the task axis moved first."""
    return {
        v.path: np.moveaxis(keras.ops.convert_to_numpy(v.value), axis, 0)
        for v, axis in strategy.per_task_state()
    }


def _to_mask(mask):
    return keras.ops.convert_to_tensor(np.asarray(mask, np.float32))


def _present_slice(arg, present, num_tasks):
    """`arg[present]` for a per-task argument (leading axis T), else `arg`."""
    if np.ndim(arg) >= 1 and np.shape(arg)[0] == num_tasks:
        return np.asarray(keras.ops.convert_to_numpy(arg))[present]
    return arg


def _end_epoch(*strategies):
    for strategy in strategies:
        strategy.on_epoch_end()


# --- Checks -------------------------------------------------------------------


def assert_all_ones_mask_is_no_mask(
    make,
    steps,
    *,
    call=default_call,
    rtol=0.0,
    atol=0.0,
    state_rtol=None,
    state_atol=None,
):
    """Asserts that a mask with every task present changes nothing.

    Two strategies from `make()` are fed the same `steps`, one without a mask
    and one with an all-ones `task_mask`. After every step their outputs, and
    all their variables, must agree (exactly with the default tolerances;
    `state_rtol` / `state_atol`, by default the loosest of the outputs', for
    the variables). The class must declare `supports_missing_tasks`.

    Returns:
        `(plain, masked, outputs)`: the two strategies and the outputs of the
        unmasked one at every step, for further checks.
    """
    plain, masked = make(), make()
    assert type(plain).supports_missing_tasks
    state_rtol = _state_tolerance(state_rtol, rtol)
    state_atol = _state_tolerance(state_atol, atol)
    outputs = []
    for step in steps:
        if step is END_OF_EPOCH:
            _end_epoch(plain, masked)
            continue
        args = _args(step)
        ones = _to_mask(np.ones(np.shape(args[0])[0]))
        expected = _numpy(call(plain, *args))
        got = _numpy(call(masked, *args, task_mask=ones))
        _assert_outputs_close(got, expected, rtol, atol, "all-ones mask")
        _assert_variables_close(
            (plain, masked), state_rtol, state_atol, "all-ones mask"
        )
        outputs.append(expected)
    return plain, masked, outputs


def assert_absent_task_is_dropped(
    full,
    small,
    mask,
    steps,
    *,
    call=default_call,
    per_task=(False, True),
    rtol=1e-6,
    atol=0.0,
    state_rtol=None,
    state_atol=None,
    skip_state=(),
):
    """Asserts that, under `mask`, a T-task strategy is the K-task one.

    `full` (built for T tasks, maybe warmed up) runs every step with `mask`;
    `small` (the same strategy for the K present tasks, holding the present
    slices of `full`'s state) runs it on the present slices (axis 0) of the
    per-task arguments. Each step's arguments are given for T tasks, with the
    absent tasks' entries as a model passes them (zeros). After every step:

    - outputs flagged False in `per_task` (an update, an objective) equal
      `small`'s; those flagged True (weights, gradients per task) equal
      `small`'s on the present tasks and are exactly 0 on the absent ones;
      every output is finite;
    - the present slices of `full`'s per-task state equal `small`'s state and
      its other variables (counters, random generator) equal `small`'s
      (tolerances `state_rtol` / `state_atol`, by default the loosest of
      the outputs'; variables named in `skip_state` are left out);
    - the absent slices of `full`'s per-task state are the values they had
      before the first step: the strategy itself leaves them alone.

    Returns:
        `[(full outputs, small outputs), ...]`, one pair per step.
    """
    mask = np.asarray(mask, np.float32)
    present = np.flatnonzero(mask > 0)
    absent = np.flatnonzero(mask == 0)
    state_rtol = _state_tolerance(state_rtol, rtol)
    state_atol = _state_tolerance(state_atol, atol)
    kept = None
    pairs = []
    for step in steps:
        if step is END_OF_EPOCH:
            _end_epoch(full, small)
            continue
        args = _args(step)
        if kept is None:
            if not full.built:
                full.build(tuple(np.shape(args[0])))
            kept = _per_task_values(full)
        got = _numpy(call(full, *args, task_mask=_to_mask(mask)))
        sliced = [_present_slice(a, present, len(mask)) for a in args]
        expected = _numpy(call(small, *sliced))
        assert len(got) == len(expected) == len(per_task)
        for i, (g, e, by_task) in enumerate(zip(got, expected, per_task)):
            assert np.all(np.isfinite(g)), f"output {i} is not finite"
            tol = (_per_output(rtol, i), _per_output(atol, i))
            if by_task:
                _assert_close(g[present], e, *tol, err_msg=f"output {i}")
                np.testing.assert_array_equal(g[absent], 0.0, err_msg=f"output {i}")
            else:
                _assert_close(g, e, *tol, err_msg=f"output {i}")
        _assert_state_follows(
            full, small, present, absent, kept, state_rtol, state_atol, skip_state
        )
        pairs.append((got, expected))
    return pairs


def _assert_state_follows(full, small, present, absent, kept, rtol, atol, skip):
    axes = _task_axes(full)
    assert len(full.weights) == len(small.weights)
    for v, w in zip(full.weights, small.weights):
        value = keras.ops.convert_to_numpy(v.value)
        if v.path in axes:
            value = np.moveaxis(value, axes[v.path], 0)
            np.testing.assert_array_equal(
                value[absent], kept[v.path][absent], err_msg=v.path
            )
            value = value[present]
            other = np.moveaxis(keras.ops.convert_to_numpy(w.value), axes[v.path], 0)
        else:
            other = keras.ops.convert_to_numpy(w.value)
        if v.name not in skip:
            _assert_close(value, other, rtol, atol, err_msg=v.path)


def assert_restore_keeps_absent_state(
    strategy, mask, step, *, moved="all", skip_moved=(), leaves_absent_alone=True
):
    """Asserts that `restore_absent_tasks` keeps the absent tasks' state.

    Takes `task_state_snapshot()`, runs `step()` (one masked step: a call,
    maybe a post-step update or an optimizer step), then
    `restore_absent_tasks(mask, snapshot)`. Afterwards every per-task
    variable's absent slices (along its task axis) must hold their values
    from before the step, and the present slices must have moved:

    - `moved="all"`: every present entry of every variable changed;
    - `moved="each"`: every variable has some present entry that changed;
    - `moved="any"`: some present entry of some variable changed;

    (variables named in `skip_moved` are left out of that count). With
    `leaves_absent_alone`, the absent slices must already be unchanged before
    the restore (the strategy left them alone; a trainable variable moved
    by an optimizer's momentum is not).

    Returns:
        `(before, unrestored)`: `{path: value}` of the per-task state before
        the step and right after it (task axis first), for further checks.
    """
    assert moved in ("all", "each", "any"), moved
    mask = np.asarray(mask, np.float32)
    present = np.flatnonzero(mask > 0)
    absent = np.flatnonzero(mask == 0)
    assert strategy.per_task_state(), "no per-task state to restore"
    before = _per_task_values(strategy)
    snapshot = strategy.task_state_snapshot()
    step()
    unrestored = _per_task_values(strategy)
    strategy.restore_absent_tasks(_to_mask(mask), snapshot)
    after = _per_task_values(strategy)
    changed = []
    for v, _ in strategy.per_task_state():
        old, new = before[v.path], after[v.path]
        if leaves_absent_alone:
            np.testing.assert_array_equal(
                unrestored[v.path][absent], old[absent], err_msg=v.path
            )
        np.testing.assert_array_equal(new[absent], old[absent], err_msg=v.path)
        np.testing.assert_array_equal(
            new[present], unrestored[v.path][present], err_msg=v.path
        )
        if v.name in skip_moved:
            continue
        differs = new[present] != old[present]
        if moved == "all":
            assert np.all(differs), f"{v.path}: a present entry did not move"
        elif moved == "each":
            assert np.any(differs), f"{v.path}: no present entry moved"
        changed.append(np.any(differs))
    if moved == "any":
        assert any(changed), "no present entry moved"
    return before, unrestored


def assert_restore_undoes_optimizer_steps(strategy, name, steps):
    """Asserts that `restore_absent_tasks` puts back trainable per-task state.

    The `(T,)` variable `name` of a loss-weighting `strategy` takes one Adam
    step (learning rate 0.1) per `(losses, mask)` of `steps` on the gradient
    of the objective. In the last step some task is absent: Adam's momentum
    moves its entry despite its zero gradient, the model's restore must put
    it back and keep the present tasks' update (see
    `assert_restore_keeps_absent_state`).
    """
    variable = getattr(strategy, name)
    optimizer = keras.optimizers.Adam(learning_rate=0.1)

    def step(losses, mask):
        grad = loss_call(strategy, losses, _to_mask(mask), wrt=(name,))[3]
        optimizer.apply([grad], [variable])

    for losses, mask in steps[:-1]:
        step(losses, mask)
    losses, mask = steps[-1]
    before, moved = assert_restore_keeps_absent_state(
        strategy, mask, lambda: step(losses, mask), leaves_absent_alone=False
    )
    absent = np.asarray(mask) == 0
    assert np.all(moved[variable.path][absent] != before[variable.path][absent])


def assert_all_state_is_per_task(strategy, count, axis=0):
    """Asserts that the class supports missing tasks and that each of the
    `count` variables of the built `strategy` is per-task state along `axis`
    (so the model puts back all of it for absent tasks)."""
    assert type(strategy).supports_missing_tasks
    axes = _task_axes(strategy)
    assert len(axes) == len(strategy.weights) == count
    assert set(axes.values()) == {axis}


def assert_no_per_task_state(strategy, mask):
    """Asserts that a built strategy declares no per-task state, so that the
    model's snapshot is empty and its restore does nothing."""
    assert strategy.per_task_state() == []
    assert strategy.task_state_snapshot() == []
    strategy.restore_absent_tasks(_to_mask(mask), [])


def assert_masked_outputs_finite(
    strategy, cases, *, call=default_call, per_task=(False, True), zero_absent=True
):
    """Asserts finite results on degenerate masked steps.

    Runs `strategy` on every `(step, mask)` (or `END_OF_EPOCH`) of `cases`
    in turn; with `zero_absent`, the absent tasks' entries of the per-task
    arguments are zeroed first, as a model passes them. After every step,
    every output and every variable of the strategy must be finite, and the
    outputs flagged True in `per_task` must be exactly 0 for the absent
    tasks.

    Returns:
        The outputs of every step.
    """
    results = []
    for case in cases:
        if case is END_OF_EPOCH:
            strategy.on_epoch_end()
            _assert_variables_finite(strategy)
            continue
        step, mask = case
        mask = np.asarray(mask, np.float32)
        args = _args(step)
        if zero_absent:
            keep = mask > 0
            args = tuple(
                np.where(
                    keep.reshape((-1,) + (1,) * (np.ndim(a) - 1)),
                    np.asarray(a, np.float32),
                    np.float32(0.0),
                )
                if np.ndim(a) >= 1 and np.shape(a)[0] == len(mask)
                else a
                for a in args
            )
        outputs = _numpy(call(strategy, *args, task_mask=_to_mask(mask)))
        assert len(outputs) == len(per_task)
        for i, value in enumerate(outputs):
            assert np.all(np.isfinite(value)), f"output {i} is not finite"
            if per_task[i]:
                np.testing.assert_array_equal(value[mask == 0], 0.0)
        _assert_variables_finite(strategy)
        results.append(outputs)
    return results


def assert_xla_matches_eager(
    make,
    cases,
    *,
    call=default_call,
    rtol=1e-6,
    atol=0.0,
    state_rtol=None,
    state_atol=None,
):
    """Asserts that a compiled step with XLA gives the eager results.

    Two strategies from `make()` are built for the first step's shape; one
    runs `call` eagerly, the other inside `backends.compiled` (XLA: a
    `tf.function(jit_compile=True)` on TensorFlow, `jax.jit` on JAX).
    `cases` is a list of `(step, mask)` (mask None for an unmasked call) or
    `END_OF_EPOCH`. After every step the outputs must agree and be finite,
    and so must all the variables of the two strategies (tolerances
    `state_rtol` / `state_atol`, by default the loosest of the outputs',
    for them).

    Returns:
        `(eager, compiled)`, the two strategies.
    """
    eager, jitted = make(), make()
    state_rtol = _state_tolerance(state_rtol, rtol)
    state_atol = _state_tolerance(state_atol, atol)

    # Functions, not lambdas: AutoGraph caches a converted lambda with the
    # `call` of the first one it met.
    def plain_step(*args):
        return call(jitted, *args)

    def masked_step(*args):
        return call(jitted, *args[:-1], task_mask=args[-1])

    plain_step = compiled(plain_step, layers=[jitted])
    masked_step = compiled(masked_step, layers=[jitted])

    for case in cases:
        if case is END_OF_EPOCH:
            _end_epoch(eager, jitted)
            continue
        step, mask = case
        args = _args(step)
        for strategy in (eager, jitted):
            if not strategy.built:
                strategy.build(tuple(np.shape(args[0])))
        if mask is None:
            expected = _numpy(call(eager, *args))
            got = _numpy(plain_step(*args))
        else:
            expected = _numpy(call(eager, *args, task_mask=_to_mask(mask)))
            got = _numpy(masked_step(*args, _to_mask(mask)))
        for i, value in enumerate(got):
            assert np.all(np.isfinite(value)), f"XLA output {i} is not finite"
        _assert_outputs_close(got, expected, rtol, atol, "XLA")
        _assert_variables_close((eager, jitted), state_rtol, state_atol, "XLA")
    return eager, jitted


def assert_state_round_trip(strategy, steps, *, call=default_call, shape=None):
    """Asserts that a strategy rebuilt from its config and weights continues
    exactly where `strategy` is.

    `clone = from_config(get_config())`, built for `shape` (default: the
    first step's first argument), gets `strategy`'s weights; then both run
    `steps` and must give identical outputs at every one.

    Returns:
        The clone.
    """
    clone = type(strategy).from_config(strategy.get_config())
    first = next(s for s in steps if s is not END_OF_EPOCH)
    clone.build(tuple(np.shape(_args(first)[0])) if shape is None else shape)
    clone.set_weights(strategy.get_weights())
    for step in steps:
        if step is END_OF_EPOCH:
            _end_epoch(strategy, clone)
            continue
        expected = _numpy(call(strategy, *_args(step)))
        _assert_outputs_close(_numpy(call(clone, *_args(step))), expected, 0.0, 0.0)
    return clone
