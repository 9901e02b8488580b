"""Error raised for missing or malformed Space Ranger files."""

from __future__ import annotations

from pathlib import Path


class VisiumReadError(ValueError):
    """A Space Ranger file or folder is missing, malformed or inconsistent with the others.

    The message names the file, what was found, what was expected and what to do.

    Attributes
    ----------
    path
        The file or folder the problem was found in.
    """

    def __init__(self, message: str, *, path: str | Path) -> None:
        super().__init__(message)
        self.path = Path(path)
