"""The one exception type that reaches a user as a message instead of a traceback."""


class UserError(Exception):
    """Bad input or an impossible request: the message names the file, line or setting and the fix.

    The CLI prints it and exits with status 2; the Python API lets it propagate so notebooks
    see the same message.
    """
