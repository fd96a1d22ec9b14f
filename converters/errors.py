"""The one exception type for bad user input in the format layer."""


class AdapterError(ValueError):
    """A problem with a user's file or request, explained in one line.

    Front ends (CLI, UI, API) show ``str(error)`` as is and exit with code 2; no traceback.
    """
