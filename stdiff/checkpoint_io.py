"""Small atomic file writers shared by the run steps."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomically(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as JSON to ``path`` through a temporary file, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_to_builtin))
    os.replace(tmp, path)
    return path


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Cannot write {type(value).__name__} to JSON.")
