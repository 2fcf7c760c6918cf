"""One exception type for user mistakes, so entry points can print one line instead of a traceback."""


class SweeplrError(ValueError):
    """A mistake in the user's input (config value, data file, run directory).

    The message is a single line naming the bad value and what is allowed.
    """
