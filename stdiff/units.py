"""Sizes in units people read, for messages and tables."""

from __future__ import annotations


def format_bytes(size: float) -> str:
    """Format ``size`` in bytes as bytes, KiB, MiB or GiB."""
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
