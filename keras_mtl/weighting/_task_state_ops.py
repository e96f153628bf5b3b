"""Per-task state shared by several strategies.

Functions that create the `(T,)` per-task state of a built strategy (see
`Strategy.add_weight(..., task_axis=...)`), read the tasks present in a step,
and two mixins: `TaskStepCounts` (a per-task step counter and the number of
steps so far) and `LearnedTaskScales` (one trainable scalar per task).
"""

from keras import ops


def add_task_vector(strategy, name, initializer="zeros", dtype=None):
    """A non-trainable `(T,)` per-task variable of the built `strategy`."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    return strategy.add_weight(
        shape=(strategy.num_tasks,),
        initializer=initializer,
        trainable=False,
        name=name,
        task_axis=0,
        **kwargs,
    )


def assign_zeros(*variables):
    """Sets every variable to zeros."""
    assign_full(0, *variables)


def assign_ones(*variables):
    """Sets every variable to ones."""
    assign_full(1, *variables)


def assign_full(value, *variables):
    """Sets every variable to `value` (from its shape and dtype: a
    variable is not an array on every backend, `zeros_like` of one fails
    on JAX)."""
    for variable in variables:
        variable.assign(ops.full(variable.shape, value, dtype=variable.dtype))


def present_or_all(task_mask, num_tasks):
    """`(T,)` booleans, True for the tasks present in the step (all of them
    without a mask)."""
    if task_mask is None:
        return ops.ones((num_tasks,), dtype="bool")
    return ops.convert_to_tensor(task_mask) > 0


def gradient_width(strategy, input_shape):
    """P, from the `(T, P)` input shape of a gradient strategy that keeps
    per-parameter state; a ValueError for any other shape."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 2 or input_shape[1] is None:
        raise ValueError(
            f"{type(strategy).__name__} expects a (T, P) shape of per-task "
            f"gradients with a known P, got {input_shape}."
        )
    return int(input_shape[1])


class TaskStepCounts:
    """Mixin of strategies that count, per task, the steps it took part in.

    `_add_task_steps()` (in `build`) creates the int32 per-task variable
    `steps`; an absent task's count does not advance.
    """

    def _add_task_steps(self):
        return add_task_vector(self, "steps", dtype="int32")

    @property
    def step(self):
        """The number of training steps so far: the largest entry of
        `steps` (every entry when no task was ever absent)."""
        return ops.max(self.steps)


class LearnedTaskScales:
    """Mixin of loss weightings that learn one scalar per task.

    The subclass validates `init` (a float, or a list of one float per task)
    in `__init__`, creates its trainable `(T,)` variable with
    `_add_task_scales(name)` in `build`, and puts it back to `init` with
    `_reset_task_scales(variable)`.
    """

    def _add_task_scales(self, name):
        if isinstance(self.init, list) and len(self.init) != self.num_tasks:
            raise ValueError(
                f"{type(self).__name__} has {len(self.init)} `init` values "
                f"but is used with {self.num_tasks} tasks."
            )
        return self.add_weight(
            shape=(self.num_tasks,),
            initializer=self._initial_value,
            trainable=True,
            name=name,
            task_axis=0,
        )

    def _initial_value(self, shape, dtype=None):
        if isinstance(self.init, list):
            return ops.convert_to_tensor(self.init, dtype=dtype)
        return ops.full(shape, self.init, dtype=dtype)

    def _reset_task_scales(self, variable):
        if self.built:
            variable.assign(self._initial_value((self.num_tasks,), variable.dtype))

    @staticmethod
    def _present_objective(terms, scale, present):
        """The sum of the present tasks' `terms` and their `scale` held
        constant (the weights), both 0 for absent tasks (`present`, `(T,)`
        booleans, from `present_or_all`)."""
        terms = ops.where(present, terms, 0.0)
        scale = ops.where(present, scale, 0.0)
        return ops.sum(terms), ops.stop_gradient(scale)
