"""The project's one error style for bad arguments: a `ValueError` saying what was expected, then
`Received: name=value` (as keras does)."""


def expect(ok, expected, **received):
    """Raise `ValueError("Expected {expected}. Received: name=value, ...")` unless `ok`.

    >>> expect(3 > 0, "a positive count", count=3)
    """
    if not ok:
        shown = ", ".join(f"{name}={value!r}" for name, value in received.items())
        raise ValueError(f"Expected {expected}. Received: {shown}")


def check_choice(name, value, choices):
    """`expect` that `value` is one of `choices` (the message names the argument `name`)."""
    if value not in choices:
        raise ValueError(f"Invalid {name}. Expected one of {list(choices)}. Received: {name}={value!r}")
