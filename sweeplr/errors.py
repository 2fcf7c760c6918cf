"""One exception type for user mistakes, so entry points can print one line instead of a traceback."""


class SweeplrError(ValueError):
    """A mistake in the user's input (config value, data file, run directory).

    The message is a single line naming the bad value and what is allowed.
    """


def first_line(exc: BaseException) -> str:
    """An exception's message in one line (its type's name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
