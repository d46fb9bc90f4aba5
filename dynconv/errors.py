"""The one exception type the CLI turns into a one-line error message.

Imports nothing: every layer may import it.
"""


class DynconvError(Exception):
    """A user-facing error: bad input, missing data, an unknown name. Printed as one line, no traceback."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), at most 300 characters."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
