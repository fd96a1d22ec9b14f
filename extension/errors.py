"""User-facing errors of the application layer."""

from ._converters import converters


class UserError(converters.AdapterError):
    """Bad input from the user (a file, a setting): shown as one line, CLI exit code 2.

    A subclass of the format layer's AdapterError so every front end needs one ``except``.
    """
