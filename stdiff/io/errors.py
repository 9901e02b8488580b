"""Error raised for missing or malformed Space Ranger files."""

from __future__ import annotations

import warnings
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


class VisiumReadWarning(UserWarning):
    """A Space Ranger sample was read, but something in it may make patches or expression less reliable.

    Examples: only a lowres image (coarse patches), spots outside the image, a full-resolution image whose
    size disagrees with the scalefactors. The message names the file and what to check.
    """


def warn(message: str, *, notes: list[str] | None, stacklevel: int = 3) -> None:
    """Issue ``message`` as a :class:`VisiumReadWarning` and append it to ``notes`` when given.

    ``read_visium`` keeps the notes in ``uns["spatial"][library_id]["metadata"]["warnings"]``, so an app that
    caches the AnnData can still show them.
    """
    warnings.warn(message, VisiumReadWarning, stacklevel=stacklevel)
    if notes is not None:
        notes.append(message)
