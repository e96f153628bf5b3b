"""Tests of the strategy registry and keras_mtl.weighting.get/serialize."""

import keras
import pytest

import keras_mtl
from keras_mtl.weighting import EqualWeighting, StaticWeighting
from keras_mtl.weighting.loss_weighting import LossWeighting
from keras_mtl.weighting.registry import register_strategy

pytestmark = pytest.mark.both_backends


def test_get_accepts_none_name_class_instance_and_config():
    assert isinstance(keras_mtl.weighting.get(None), EqualWeighting)
    assert isinstance(keras_mtl.weighting.get(" Equal-Weighting "), EqualWeighting)
    assert isinstance(keras_mtl.weighting.get(EqualWeighting), EqualWeighting)
    instance = StaticWeighting([1.0, 2.0])
    assert keras_mtl.weighting.get(instance) is instance
    config = keras_mtl.weighting.serialize(instance)
    rebuilt = keras_mtl.weighting.get(config)
    assert isinstance(rebuilt, StaticWeighting)
    assert rebuilt.get_config() == instance.get_config()


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown loss_weighting strategy 'nope'"):
        keras_mtl.weighting.get("nope")
    with pytest.raises(ValueError, match="Valid names: .*ew.*static"):
        keras_mtl.weighting.get("nope")
    with pytest.raises(ValueError, match="Could not interpret"):
        keras_mtl.weighting.get(3.5)
    with pytest.raises(ValueError, match="class_name"):
        keras_mtl.weighting.deserialize({"config": {}})


def test_every_registered_strategy_resolves_and_is_keras_serializable():
    names = keras_mtl.weighting.available()
    assert {"ew", "static"} <= set(names)
    for name in names:
        cls = keras_mtl.weighting.registry.lookup(name)
        assert cls.registry_name == name
        registered = keras.saving.get_registered_name(cls)
        assert registered == f"keras_mtl>{cls.__name__}"
        assert keras.saving.get_registered_object(registered) is cls


def test_a_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="already taken by EqualWeighting"):

        @register_strategy("ew")
        class Impostor(LossWeighting):
            pass
