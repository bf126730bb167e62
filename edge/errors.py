"""One root exception for the project.

`UserError` subclasses mean the caller gave something wrong (a file, an input, a
dataset path) and are printed as one line by the command-line tools; anything else
that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of every error this project raises on purpose."""


class UserError(EdgeError):
    """Something the user can fix: bad input, a missing or corrupt file."""


class ManifestError(UserError):
    """The manifest or one of the files it names is missing, corrupt or incompatible."""


class InputError(UserError):
    """An inference input has the wrong shape, dtype or values."""


class DatasetNotFoundError(UserError):
    """A dataset is not where it was looked for; the message says how to get it."""


class BackendError(EdgeError):
    """An inference backend failed to load or run an engine."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
