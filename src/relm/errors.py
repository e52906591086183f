"""One error hierarchy for relm.

`RelmError` and its subclasses are *user* errors: bad input, a missing file, an
incompatible artifact. The CLI prints their message on one line and exits
non-zero without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RelmError(Exception):
    """A user-facing error whose message says what is wrong and how to fix it."""


class InputError(RelmError):
    """A corpus file or line that cannot be read.

    Carries the location so that `--on-error skip` can count it by reason.
    """

    def __init__(self, path: str, line: int | None, reason: str, message: str):
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


class DatastoreError(RelmError):
    """A datastore directory that is missing, incomplete or of an unknown format."""


class ConfigError(RelmError):
    """An argument or setting that is invalid on its own or for this artifact."""
