"""Listing and clearing the cache folder (``STDIFF_CACHE_DIR``).

The cache contains copies that stdiff can make again: unpacked browser uploads, JPEG tiles of tissue images,
expression reconstructed in the app and downloaded TAEF2 weights. Each part is a subfolder of the cache
folder, and each entry of a part (one upload, one image's tiles, one reconstruction file) is removed whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .units import format_bytes

logger = logging.getLogger(__name__)

# Part folder names and their contents. Weights are cleared only when named, because they must be downloaded again.
CACHE_PARTS = {
    settings.UPLOADS_FOLDER: "archives uploaded in the app, unpacked",
    settings.TILES_FOLDER: "JPEG tiles of tissue images for the zoomable viewer",
    settings.RECONSTRUCTIONS_FOLDER: "expression reconstructed in the app",
    settings.TAEF2_FOLDER: "downloaded TAEF2 autoencoder weights",
}
DEFAULT_CLEAR = (settings.UPLOADS_FOLDER, settings.TILES_FOLDER, settings.RECONSTRUCTIONS_FOLDER)
# Entries whose name starts with "." are work in progress, such as an upload being unpacked or a reconstruction
# being written. A running app may still be writing those younger than this.
IN_PROGRESS_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class CacheEntry:
    """One removable item of a cache part."""

    part: str
    path: Path
    size_bytes: int
    modified: float
    """Newest modification time (seconds since the epoch) of the entry or anything inside it."""

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.modified) / 86400


def _size_and_newest(path: Path) -> tuple[int, float]:
    """Return the total size of the files in ``path`` and their newest modification time.

    Unreadable subfolders are left out of both.
    """
    info = path.lstat()
    if path.is_symlink() or not path.is_dir():
        return info.st_size, info.st_mtime
    size, newest = 0, info.st_mtime
    for parent, folders, files in os.walk(path):
        for name, is_file in [(name, False) for name in folders] + [(name, True) for name in files]:
            try:
                child = os.lstat(os.path.join(parent, name))
            except OSError:
                continue  # Removed while listing.
            if is_file:
                size += child.st_size
            newest = max(newest, child.st_mtime)
    return size, newest


def resolve_parts(names) -> tuple[str, ...]:
    """Return the cache parts named in ``names``, in order and once each; ``all`` means every part."""
    names = tuple(dict.fromkeys(names))
    unknown = [name for name in names if name != "all" and name not in CACHE_PARTS]
    if unknown:
        raise ValueError(f"Invalid cache part {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(CACHE_PARTS)} or all.")
    return tuple(CACHE_PARTS) if "all" in names else names


def _cache_root(root: str | Path | None) -> Path:
    root = Path(root).expanduser() if root is not None else settings.cache_dir()
    if root.exists() and not root.is_dir():
        raise ValueError(f"The cache folder {root} is a file; set STDIFF_CACHE_DIR to a folder.")
    return root


def cache_entries(parts=tuple(CACHE_PARTS), root: str | Path | None = None) -> list[CacheEntry]:
    """Return the entries of ``parts`` in the cache folder ``root`` (default :func:`stdiff.settings.cache_dir`).

    A part folder that is a symbolic link is skipped with a warning, so that clearing never deletes files
    outside the cache folder. So is a part folder that cannot be read.
    """
    parts = resolve_parts(parts)
    root = _cache_root(root)
    entries = []
    for part in parts:
        folder = root / part
        if folder.is_symlink():
            logger.warning("Skipping %s: it is a symbolic link to %s. Clear that folder by hand.", folder,
                           os.readlink(folder))
            continue
        try:
            if not folder.is_dir():
                continue
            children = sorted(folder.iterdir())
        except OSError as error:
            logger.warning("Skipping %s: %s. Check the folder's permissions.", folder, error)
            continue
        for child in children:
            try:
                size, newest = _size_and_newest(child)
            except OSError:
                continue
            entries.append(CacheEntry(part, child, size, newest))
    return entries


def clear_cache(parts=DEFAULT_CLEAR, *, older_than_days: float | None = None, root: str | Path | None = None,
                keep=(), dry_run: bool = False) -> tuple[list[CacheEntry], dict[Path, str]]:
    """Remove the entries of ``parts``; with ``older_than_days``, only those not written to for that long.

    Entries that contain a path of ``keep`` (a sample folder in use, for example) are kept, and so are entries
    in progress (names starting with ".") younger than an hour, since a running app may still be writing them.
    Returns the entries removed (or, with ``dry_run``, those that would be) and, by path, the error of each
    entry that could not be removed.
    """
    if older_than_days is not None and not older_than_days >= 0:  # also rejects NaN
        raise ValueError(f"The age limit (--older-than) must be 0 or more days, got {older_than_days}.")
    kept = [Path(path).expanduser().absolute() for path in keep]
    now = time.time()
    removed, failed = [], {}
    for entry in cache_entries(parts, root):
        if older_than_days is not None and entry.age_days(now) < older_than_days:
            continue
        if any(path.is_relative_to(entry.path.absolute()) for path in kept):
            continue
        if entry.path.name.startswith(".") and now - entry.modified < IN_PROGRESS_GRACE_SECONDS:
            continue
        if not dry_run:
            try:
                if entry.path.is_dir() and not entry.path.is_symlink():
                    shutil.rmtree(entry.path)
                else:
                    entry.path.unlink()
            except FileNotFoundError:
                pass  # Another process removed it first.
            except OSError as error:
                logger.warning("Failed to remove %s: %s", entry.path, error)
                failed[entry.path] = str(error)
                continue
        removed.append(entry)
    return removed, failed


def summary_rows(entries: list[CacheEntry]) -> list[dict]:
    """Return one row per cache part: its entries, their total size and the age of the oldest."""
    now = time.time()
    rows = []
    for part, contents in CACHE_PARTS.items():
        mine = [entry for entry in entries if entry.part == part]
        rows.append({
            "part": part,
            "entries": len(mine),
            "size_bytes": sum(entry.size_bytes for entry in mine),
            "oldest_days": max((entry.age_days(now) for entry in mine), default=None),
            "contents": contents,
        })
    return rows


def summary_lines(entries: list[CacheEntry], root: str | Path | None = None) -> list[str]:
    """Return the lines of a table with each cache part's entries, size and oldest entry."""
    root = _cache_root(root)
    lines = [f"Cache folder: {root} (set STDIFF_CACHE_DIR to move it)",
             f"{'part':<16} {'entries':>7} {'size':>12} {'oldest':>10}  contents"]
    for row in summary_rows(entries):
        oldest = "-" if row["oldest_days"] is None else f"{row['oldest_days']:.0f} days"
        lines.append(f"{row['part']:<16} {row['entries']:>7} {format_bytes(row['size_bytes']):>12} {oldest:>10}  "
                     f"{row['contents']}")
    lines.append(f"{'total':<16} {len(entries):>7} {format_bytes(sum(e.size_bytes for e in entries)):>12}")
    return lines
