"""Checkpoint folders: ``config.json`` plus ``model.safetensors``, written atomically and loaded strictly."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..constants import CONFIG_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)


def write_folder_atomically(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)`` and move the result into ``folder``.

    An interrupted write leaves the previous ``folder`` untouched: the new content is renamed into place only
    once ``write`` has returned.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates the folder as 0700
    try:
        write(tmp)
        previous = None
        if folder.exists():
            previous = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, previous)
        os.replace(tmp, folder)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_checkpoint_files(
    folder: str | Path,
    *,
    config: Any,
    state_dict: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``config.json`` and ``model.safetensors`` into an existing ``folder`` (not atomic on its own).

    ``extra`` is stored in ``config.json`` under ``"extra"`` (for example the training step).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"config": dataclasses.asdict(config), "class": type(config).__name__}
    if extra:
        payload["extra"] = extra
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
    (folder / CONFIG_NAME).write_text(json.dumps(payload, indent=2, sort_keys=True))
    save_file(tensors, str(folder / WEIGHTS_NAME))


def save_checkpoint(
    folder: str | Path,
    *,
    config: Any,
    state_dict: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``config`` (a dataclass) and ``state_dict`` to ``folder`` atomically."""
    return write_folder_atomically(
        folder, lambda tmp: write_checkpoint_files(tmp, config=config, state_dict=state_dict, extra=extra)
    )


def read_config(folder: str | Path, config_class: type) -> tuple[Any, dict[str, Any]]:
    """Read ``config.json`` from ``folder`` into ``config_class``; returns (config, extra)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {CONFIG_NAME} in {Path(folder)}: not a stdiff checkpoint folder.")
    payload = json.loads(path.read_text())
    if payload.get("class") != config_class.__name__:
        raise ValueError(
            f"{path} contains a {payload.get('class')!r} checkpoint, expected {config_class.__name__!r}."
        )
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = set(payload["config"]) - known
    if unknown:
        raise ValueError(f"{path} has unknown config fields {sorted(unknown)}; it was written by a newer stdiff.")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in payload["config"].items()}
    return config_class(**values), payload.get("extra", {})


def read_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` from ``folder``."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {WEIGHTS_NAME} in {Path(folder)}: the checkpoint is incomplete.")
    return load_file(str(path))


def load_state_strict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], *, skip_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` into ``module``; every key must match except those under ``skip_prefixes``.

    Skipped keys belong to frozen pretrained parts that are loaded from their own weights file.
    """
    expected = {key for key in module.state_dict() if not key.startswith(skip_prefixes)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint does not match the model: missing {missing[:5]} ({len(missing)} in all), "
            f"unexpected {unexpected[:5]} ({len(unexpected)} in all)."
        )
    module.load_state_dict(state, strict=False)
