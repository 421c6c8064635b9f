"""Errors caused by the user's input. The CLI prints them as one line (exit code 2, no traceback); anything
else is a bug and keeps its traceback."""

from __future__ import annotations

__all__ = ["DataError", "ModelLoadError", "RunConfigError", "RunFolderError", "UserInputError"]


class UserInputError(ValueError):
    """Base class: a problem with the user's settings, files or run folder, explained in the message."""


class RunConfigError(UserInputError):
    """A run setting is invalid (a value out of range, an unknown name, settings that do not fit together)."""


class RunFolderError(RunConfigError):
    """The run folder cannot be used: another process holds it, or it holds a different or unknown run."""


class DataError(UserInputError):
    """A task data file is missing or malformed; the message names the file (and line)."""


class ModelLoadError(UserInputError):
    """``--model`` does not name a loadable model and tokenizer."""
