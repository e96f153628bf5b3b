"""Validation of strategies' constructor arguments."""

import math


def as_float(value, name, owner, allow_bool=True):
    """`float(value)`, or a ValueError naming the argument and the value.

    Args:
        value: the argument as given.
        name: the argument's name.
        owner: the name of the class the argument was given to.
        allow_bool: False to refuse `True` / `False` (which `float` accepts).
    """
    message = f"{owner} `{name}` must be a number, got {value!r}."
    if not allow_bool and isinstance(value, bool):
        raise ValueError(message)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None


def float_vector(values, name, owner, non_negative=False):
    """None, or `values` as a list of finite floats (non-negative ones, not
    all zero, with `non_negative`); a ValueError naming the argument
    otherwise."""
    if values is None:
        return None
    message = f"{owner} `{name}` must be None or a list of finite floats"
    if non_negative:
        message += " >= 0, not all zero"
    message += f", one per task; got {name}={values!r}."
    try:
        result = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not result or any(isinstance(v, bool) for v in values):
        raise ValueError(message)
    if not all(math.isfinite(v) for v in result):
        raise ValueError(message)
    if non_negative and (min(result) < 0 or max(result) == 0):
        raise ValueError(message)
    return result
