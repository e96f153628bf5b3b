"""Tests of `keras_mtl.tuner.search_spaces`: coverage, validity, defaults."""

import inspect

import keras_tuner
import numpy as np
import pytest

import keras_mtl
from keras_mtl.tuner.hypermodel import _call_space
from keras_mtl.tuner.search_spaces import (
    ARCHITECTURE_SPACE,
    DEFAULT_STRATEGIES,
    SEARCH_SPACES,
)
from keras_mtl.weighting.registry import lookup

TASKS = ("a", "b", "c")


def _declare(name, hp):
    """Declares `name`'s space on `hp` the way the hypermodel does."""
    if "strategy" not in hp.values:
        hp.Choice("strategy", [name])
    with hp.conditional_scope("strategy", [name]), hp.name_scope(name):
        return _call_space(SEARCH_SPACES[name], hp, TASKS)


def _instantiate(name, kwargs):
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return lookup(name)(**kwargs)


def test_every_registered_strategy_has_an_entry():
    # A new strategy must get a space (or None) here: this fails otherwise.
    assert sorted(SEARCH_SPACES) == keras_mtl.weighting.available()
    assert set(DEFAULT_STRATEGIES) <= set(SEARCH_SPACES)
    assert len(set(DEFAULT_STRATEGIES)) == len(DEFAULT_STRATEGIES)


TUNED = sorted(name for name, space in SEARCH_SPACES.items() if space)


def test_default_values_are_the_strategy_defaults():
    # One test looping over the strategies (a test per strategy would spend
    # most of its time in the per-test Keras session reset).
    for name in TUNED:
        _check_defaults(name)


def _check_defaults(name):
    hp = keras_tuner.HyperParameters()
    kwargs = _declare(name, hp)
    cls = lookup(name)
    defaults = {
        p.name: p.default
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    for key, value in kwargs.items():
        assert key in inspect.signature(cls.__init__).parameters, (name, key)
        if value is None:  # an inactive nested choice: the default is used
            continue
        if name == "static":
            assert value == [1.0] * len(TASKS)
        elif (name, key) == ("krum", "n_byzantine"):  # the largest valid f
            assert value == min(defaults[key], len(TASKS) - 3)
        else:
            assert value == pytest.approx(defaults[key]), (name, key)
    strategy = _instantiate(name, kwargs)
    assert strategy.registry_name == name


def test_random_points_of_every_space_build_valid_strategies():
    # Sample 8 random points per space (as RandomSearch does) and
    # instantiate: every value of every range must pass the strategy's own
    # validation.
    rng = np.random.default_rng(0)
    for name in TUNED:
        _check_random_points(name, rng)


def _check_random_points(name, rng):
    space_hp = keras_tuner.HyperParameters()
    _declare(name, space_hp)
    for _ in range(8):
        hp = keras_tuner.HyperParameters()
        hp.Choice("strategy", [name])
        for parameter in space_hp.space:
            if parameter.name == "strategy":
                continue
            hp.values[parameter.name] = parameter.random_sample(int(rng.integers(1e9)))
        _instantiate(name, _declare(name, hp))


def test_names_are_scoped_per_strategy_and_only_the_chosen_one_is_active():
    hp = keras_tuner.HyperParameters()
    hp.Choice("strategy", ["dwa", "famo"])
    hp.values["strategy"] = "famo"
    for name in ("dwa", "famo"):
        with hp.conditional_scope("strategy", [name]), hp.name_scope(name):
            kwargs = _call_space(SEARCH_SPACES[name], hp, TASKS)
        if name == "dwa":
            assert set(kwargs.values()) == {None}
        else:
            assert kwargs == {"learning_rate": 0.025, "weight_decay": 1e-3}
    names = {p.name for p in hp.space}
    assert {"dwa/temperature", "dwa/mode", "dwa/ema_decay"} <= names
    assert {"famo/learning_rate", "famo/weight_decay"} <= names
    assert hp.is_active("famo/learning_rate")
    assert not hp.is_active("dwa/temperature")


def test_nested_choices_are_active_only_under_their_parent():
    hp = keras_tuner.HyperParameters()
    kwargs = _declare("adaptive", hp)
    assert kwargs["normalize"] == "ratio" and kwargs["temperature"] is None
    hp.values["adaptive/normalize"] = "softmax"
    hp.ensure_active_values()  # as the oracle does for a new trial
    assert 0.1 <= _declare("adaptive", hp)["temperature"] <= 10.0


def test_static_space_declares_one_weight_per_task():
    hp = keras_tuner.HyperParameters()
    kwargs = _declare("static", hp)
    assert [p.name for p in hp.space][1:] == [
        "static/weight_a",
        "static/weight_b",
        "static/weight_c",
    ]
    assert _instantiate("static", kwargs).get_config()["weights"] == [1.0] * 3


def test_architecture_space_names_its_hyperparameters_after_the_keyword():
    hp = keras_tuner.HyperParameters()
    values = {key: choice(hp) for key, choice in ARCHITECTURE_SPACE.items()}
    assert values == {
        "shared_layers": 2,
        "head_units": 32,
        "routing_sigma": 0.5,
        "aux_weight": 1.0,
    }
    assert sorted(p.name for p in hp.space) == sorted(ARCHITECTURE_SPACE)
