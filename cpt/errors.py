"""The one exception type for problems the user can fix (bad input, bad options)."""


class CptError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it (exit code 2)."""
