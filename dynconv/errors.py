"""The one exception type the CLI turns into a one-line error message, and the one way an error's text
becomes that line.

Imports nothing: every layer may import it.
"""

from __future__ import annotations


class DynconvError(Exception):
    """A user-facing error: bad input, missing data, an unknown name. Printed as one line, no traceback."""


def one_line(error: BaseException | str, limit: int | None = 300) -> str:
    """`error`'s message on one line: whitespace (line breaks included) collapsed, cut to `limit`
    characters with an ellipsis (None: whole); an exception without a message gives its type name."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text
