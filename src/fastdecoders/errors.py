"""The one exception type users see: a clear, single-line message about bad input."""


class FastDecodersError(ValueError):
    """Bad input: the message says what was expected and what came. The CLI prints it and exits with code 2."""
