"""User-facing errors of the application layer."""

from ._converters import converters


class UserError(converters.AdapterError):
    """Bad input from the user (a file, a setting): shown as one line, CLI exit code 2.

    A subclass of the format layer's AdapterError so every front end needs one ``except``.
    """


def yaml_problem(exc: Exception) -> str:
    """Where a YAML file is malformed (``"line 3, column 5 (ScannerError)"``), never its text.

    PyYAML's messages quote the file (a snippet, tag names, characters), and the file may be any
    file a path setting names, so only the position and the kind of error are shown.
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
    return f"{where} ({type(exc).__name__})"
