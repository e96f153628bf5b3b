"""The name registry behind `keras_mtl.weighting.get`.

Every strategy module decorates its class with `register_strategy`, giving
the canonical registry name first and any aliases after it:

    @register_strategy("uw", "uncertainty")
    class UncertaintyWeighting(LossWeighting): ...

The decorator also registers the class with Keras' serialization, so saved
models find it again without `custom_objects`.
"""

from keras_mtl.utils.serialization import register_serializable

# canonical name -> class
_STRATEGIES = {}
# any accepted name (canonical, alias or class name, lower case) -> class
_LOOKUP = {}


def _normalize(name):
    return name.strip().lower().replace("-", "_")


def register_strategy(name, *aliases):
    """Class decorator: registers a strategy under `name` and `aliases`."""

    def decorator(cls):
        keys = [_normalize(name), *(_normalize(a) for a in aliases)]
        keys.append(_normalize(cls.__name__))
        for key in keys:
            owner = _LOOKUP.get(key)
            if owner is not None and owner.__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"Strategy name {key!r} is already taken by "
                    f"{owner.__name__}; cannot register {cls.__name__}."
                )
        cls.registry_name = _normalize(name)
        _STRATEGIES[_normalize(name)] = cls
        for key in keys:
            _LOOKUP[key] = cls
        return register_serializable(cls)

    return decorator


def lookup(name):
    """Returns the class registered under `name`, or None."""
    return _LOOKUP.get(_normalize(name))


def registered_strategies():
    """Returns a dict mapping canonical names to classes."""
    return dict(_STRATEGIES)
