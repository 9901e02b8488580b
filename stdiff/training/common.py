"""Pieces shared by both training loops: Accelerate set-up, augmentation, resumable training state."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

STATE_NAME = "training_state.pt"
N_DIHEDRAL = 8


def make_accelerator(*, mixed_precision: str = "no", cpu: bool | None = None):
    """Return an ``accelerate.Accelerator``: GPUs when present (one or many under ``accelerate launch`` or
    ``torchrun``), else the CPU."""
    from accelerate import Accelerator

    if cpu is None:
        cpu = not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dihedral(images: torch.Tensor, index: int) -> torch.Tensor:
    """Apply one of the 8 rotations/flips of the square to images (..., H, W). H&E has no preferred
    orientation, so all 8 are equally valid views of a patch."""
    if not 0 <= index < N_DIHEDRAL:
        raise ValueError(f"dihedral index must be in 0..7, got {index}.")
    out = torch.rot90(images, k=index % 4, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if index >= 4 else out


def patches_to_tensor(patches: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255.0)


def save_training_state(folder: Path, *, optimizer: torch.optim.Optimizer, step: int, extra: dict | None = None) -> None:
    """Save optimizer state, step and random states next to a checkpoint (tensors and builtins only, so it
    loads with ``weights_only=True``)."""
    state = {
        "optimizer": optimizer.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": [int(v) for v in np.random.get_state()[1]],
        "extra": extra or {},
    }
    tmp = folder / f".{STATE_NAME}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, folder / STATE_NAME)


def load_training_state(folder: Path) -> dict | None:
    path = folder / STATE_NAME
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
