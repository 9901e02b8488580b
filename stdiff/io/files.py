"""Finding Space Ranger files by name, also when a download added a prefix such as ``GSM5000001_``."""

from __future__ import annotations

from pathlib import Path

from stdiff.io.errors import VisiumReadError
from stdiff.io.images import broken_link_note

# GEO and renamed copies put the sample name in front of the Space Ranger name, joined by one of these.
PREFIX_SEPARATORS = ("_", "-", ".")


def space_ranger_prefix(file_name: str, name: str) -> str | None:
    """Return the prefix before ``name`` and a separator in ``file_name`` ("" when they are equal), or None."""
    if file_name == name:
        return ""
    for separator in PREFIX_SEPARATORS:
        if file_name.endswith(separator + name):
            return file_name[: -len(name) - 1]
    return None


def has_space_ranger_name(path: Path, name: str) -> bool:
    """Return True when the file name of ``path`` is ``name``, or ``name`` after a prefix and a separator."""
    return space_ranger_prefix(path.name, name) is not None


def find_named(folder: Path, name: str, *, directory: bool = False) -> Path | None:
    """Return the file (or folder) ``name`` in ``folder``, or the single prefixed variant of it, or None.

    The exact name wins. Otherwise one entry named ``<prefix>_<name>`` (or with "-" or "." as separator) is
    accepted, as GEO downloads name them.

    Raises
    ------
    VisiumReadError
        When several prefixed entries match, because the reader cannot tell which belongs to the sample, or
        when the entry is a symbolic link to a missing file.
    """
    exact = folder / name
    if exact.is_symlink() and not exact.exists():
        raise VisiumReadError(
            f"{exact} is a symbolic link to the missing {exact.readlink()}. Copy the file itself into the sample "
            "folder, or fix the link.",
            path=exact,
        )
    if exact.is_dir() if directory else exact.is_file():
        return exact
    if not folder.is_dir():
        return None

    matches = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not has_space_ranger_name(child, name):
            continue
        if child.is_symlink() and not child.exists():
            raise VisiumReadError(
                f"{child}{broken_link_note(child)}. Copy the file itself into the sample folder, or fix the link.",
                path=child,
            )
        if child.is_dir() if directory else child.is_file():
            matches.append(child)
    if len(matches) > 1:
        raise VisiumReadError(
            f"{folder} contains several files named like {name}: {[match.name for match in matches]}. Keep the "
            f"one that belongs to this sample (or rename it to {name}) and move the others out.",
            path=folder,
        )
    return matches[0] if matches else None
