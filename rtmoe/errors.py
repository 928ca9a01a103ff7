"""The project's own errors: :class:`UserError`, the root of every error the user can fix.

``rtmoe`` prints a :class:`UserError` as one line (exit code 2); any other exception is a
bug and shows its traceback, as every error does under ``rtmoe --debug``. Each module's
own error (``ConfigError``, ``InputError``, ``CheckpointError``, ...) subclasses it and
keeps its builtin base, so ``except ValueError`` callers still catch it.

Standard library only: every layer can import it, and ``rtmoe --help`` stays light.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message names the problem and the fix.

    ``rtmoe`` prints it as one line, exit code 2; any other exception shows its traceback.
    """


class BadValueError(UserError, ValueError):
    """A value the user gave (a flag, a setting, data that do not fit) is wrong.

    For modules without an error of their own; a ``ValueError`` too, so API callers that
    catch one still do.
    """


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named, or one the installation should hold, does not exist.

    A ``FileNotFoundError`` too, so API callers that catch one still do.
    """
