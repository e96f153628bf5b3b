"""Validation of strategies' constructor arguments."""


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
