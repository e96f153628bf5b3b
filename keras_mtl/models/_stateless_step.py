"""The model's steps on JAX: the same orchestration over state values.

Keras' JAX trainer calls `train_step(state, data)` and `test_step(state,
data)` with the model's state as values (trainable, non-trainable,
optimizer and metric variables) and expects the new values back; it
cannot let a step mutate a variable. `run` maps every variable of those
groups to its value in a `keras.StatelessScope`, runs the backend-neutral
step inside it (reads see the values, assignments are recorded), and
returns the recorded values as the new state. The JAX gradient paths
(`gradient_paths/jax_paths.py`) differentiate inside that scope.
"""

from __future__ import annotations

import keras


def train(model, state, data):
    """`model._train_step(data)` on the values of Keras' JAX train state;
    returns `(logs, new state)`."""
    return run(train_groups(model), state, lambda: model._train_step(data))


def test(model, state, data):
    """`model._test_step(data)` on the values of Keras' JAX test state;
    returns `(logs, new state)`."""
    return run(test_groups(model), state, lambda: model._test_step(data))


def train_groups(model):
    """The variable groups of Keras' JAX train state, in its order."""
    return (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )


def test_groups(model):
    """The variable groups of Keras' JAX test state, in its order."""
    return (
        model.trainable_variables,
        model.non_trainable_variables,
        model.metrics_variables,
    )


def run(groups, state, step):
    """`step()` with the variables of `groups` holding the values of
    `state`; returns `(step's result, the new state)`."""
    mapping = [
        pair
        for variables, values in zip(groups, state)
        for pair in zip(variables, values)
    ]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        result = step()
    new_state = tuple(
        [scope.get_current_value(v) for v in variables] for variables in groups
    )
    return result, new_state
