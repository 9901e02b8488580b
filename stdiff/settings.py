"""Locations of data, pretrained weights and models, read from environment variables.

``STDIFF_DATA_DIR``
    Folder of samples, one Space Ranger ``outs``-like folder each. When unset, ``./data`` is used if it
    exists, else ``../shared/data`` next to the project folder.
``STDIFF_WEIGHTS_DIR``
    Folder with pretrained weights in subfolders ``taef2/``, ``lpips_alexnet/`` and
    ``efficientnet_lite0/``. When unset, ``../shared/weights`` next to the project folder is used if it
    exists. Weights that are not found locally are downloaded from their public source on first use.
``STDIFF_MODEL_DIR``
    Trained model folder the app loads. Defaults to ``models/demo`` in the project folder.
``STDIFF_OFFLINE``
    When set to ``1``, any download raises an error instead. Tests and CI set it.
``STDIFF_UPLOAD_MAX_BYTES``, ``STDIFF_UPLOAD_MAX_FILES``
    Caps on the unpacked size (bytes, default 20 GiB) and number of entries (default 10,000) of an archive
    uploaded in the app.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _first_existing(*candidates: Path) -> Path | None:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def data_dir() -> Path:
    """Return the folder the app lists samples from."""
    if os.environ.get("STDIFF_DATA_DIR"):
        return Path(os.environ["STDIFF_DATA_DIR"]).expanduser()
    found = _first_existing(Path.cwd() / "data", PROJECT_DIR / "data", PROJECT_DIR.parent / "shared" / "data")
    return found if found is not None else Path.cwd() / "data"


def weights_dir() -> Path | None:
    """Return the local pretrained-weights folder, or None when there is none."""
    if os.environ.get("STDIFF_WEIGHTS_DIR"):
        return Path(os.environ["STDIFF_WEIGHTS_DIR"]).expanduser()
    return _first_existing(PROJECT_DIR.parent / "shared" / "weights")


def model_dir() -> Path:
    """Return the trained model folder the app loads by default."""
    if os.environ.get("STDIFF_MODEL_DIR"):
        return Path(os.environ["STDIFF_MODEL_DIR"]).expanduser()
    return PROJECT_DIR / "models" / "demo"


def offline() -> bool:
    """Return True when downloads are forbidden (``STDIFF_OFFLINE=1``)."""
    return os.environ.get("STDIFF_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def cache_dir() -> Path:
    """Return the folder for downloaded weights and unpacked uploads (``STDIFF_CACHE_DIR``)."""
    if os.environ.get("STDIFF_CACHE_DIR"):
        return Path(os.environ["STDIFF_CACHE_DIR"]).expanduser()
    return Path.home() / ".cache" / "stdiff"


# Caps on browser uploads, checked while an archive is unpacked (see stdiff.io.archive).
UPLOAD_MAX_BYTES_DEFAULT = 20 * 1024**3
UPLOAD_MAX_FILES_DEFAULT = 10_000


def _positive_int_from_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError(f"{name}={value!r} is invalid; set it to a positive whole number or unset it ({default}).")
    return number


def upload_max_bytes() -> int:
    """Return the largest total unpacked size of an uploaded archive, in bytes (``STDIFF_UPLOAD_MAX_BYTES``).

    Defaults to 20 GiB.
    """
    return _positive_int_from_env("STDIFF_UPLOAD_MAX_BYTES", UPLOAD_MAX_BYTES_DEFAULT)


def upload_max_files() -> int:
    """Return the largest number of entries in an uploaded archive (``STDIFF_UPLOAD_MAX_FILES``, default 10,000)."""
    return _positive_int_from_env("STDIFF_UPLOAD_MAX_FILES", UPLOAD_MAX_FILES_DEFAULT)


# Subfolders of the cache folder; `stdiff cache` lists and clears each.
UPLOADS_FOLDER = "uploads"
TILES_FOLDER = "tiles"
RECONSTRUCTIONS_FOLDER = "reconstructions"
TAEF2_FOLDER = "taef2"


def uploads_dir() -> Path:
    """Return the folder that uploaded archives are unpacked into, one subfolder per content hash."""
    return cache_dir() / UPLOADS_FOLDER


def tiles_dir() -> Path:
    """Return the folder of the tissue viewer's JPEG tiles, one subfolder per image."""
    return cache_dir() / TILES_FOLDER


def reconstructions_dir() -> Path:
    """Return the folder of reconstructions made in the app for models that ship none for a sample."""
    return cache_dir() / RECONSTRUCTIONS_FOLDER


def runs_dir() -> Path:
    """Return the jobs root of the app's Train page (``STDIFF_RUNS_DIR``, default ``runs`` in the project folder).

    Run folders are created in it, and background jobs keep their logs in its ``jobs/`` subfolder.
    """
    if os.environ.get("STDIFF_RUNS_DIR"):
        return Path(os.environ["STDIFF_RUNS_DIR"]).expanduser()
    return PROJECT_DIR / "runs"
