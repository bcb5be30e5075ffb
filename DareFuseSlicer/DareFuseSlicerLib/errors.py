"""The exceptions a user can meet. Anything else is a bug and keeps its traceback."""
from __future__ import annotations


class DareFuseError(Exception):
    """Base class: the message is complete and meant for the user."""


class InputError(DareFuseError):
    """An input (a file, a node, an option) is unusable; the message names it and says why."""


class Cancelled(DareFuseError):
    """The user cancelled the run; nothing was added or written."""

    def __init__(self, message: str = "Cancelled by the user; nothing was added or written."):
        super().__init__(message)


class OptionError(InputError):
    """A bad option (a parameter of a library call, a flag on the command line). The message is a template
    naming each option as {name}: a Python caller reads the parameter name (or the wording given for it), and
    the command line rephrases it with the flag (cli.user_message), so the library never names a flag itself.

        OptionError("{epochs} must be at least 1, got 0.", "epochs")
        OptionError("Allow overwriting ({overwrite}) to replace them.", overwrite="overwrite=True")
    """

    def __init__(self, template: str, *options: str, **wording: str):
        self.template = template
        self.wording = {**{option: option for option in options}, **wording}
        super().__init__(self.naming(self.wording.get))

    @property
    def options(self):
        return tuple(self.wording)

    def naming(self, name_of) -> str:
        """The message with each {option} written as name_of(option)."""
        text = self.template
        for option in self.wording:
            text = text.replace("{" + option + "}", name_of(option))
        return text


class WorkerError(DareFuseError):
    """The inference process ended before its run did (killed, out of memory, crashed, or it could not start);
    nothing was added. `details` holds the end of its log, for a bug report."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details
