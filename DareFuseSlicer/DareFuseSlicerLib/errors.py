"""The exceptions a user can meet. Anything else is a bug and keeps its traceback."""


class DareFuseError(Exception):
    """Base class: the message is complete and meant for the user."""


class InputError(DareFuseError):
    """An input (a file, a node, an option) is unusable; the message names it and says why."""


class Cancelled(DareFuseError):
    """The user cancelled the run; nothing was added or written."""

    def __init__(self, message: str = "Cancelled by the user; nothing was added or written."):
        super().__init__(message)
