"""The one exception type the CLI turns into a one-line error message."""


class DynconvError(Exception):
    """A user-facing error: bad input, missing data, an unknown name. Printed as one line, no traceback."""
