"""Spatially blocked train/evaluation split of one section.

Spots are grouped into the cells of a square grid laid over the section. Whole cells are held out for
evaluation, and every remaining spot whose patch would come closer than ``gap`` full-resolution pixels to an
evaluated patch is set aside as a gap spot, used neither for training nor for evaluation. Patches are squares
of side ``patch_size`` centred on their spots, so two patches are at least ``gap`` apart exactly when their
centres differ by at least ``patch_size + gap`` along x or y.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN = "train"
EVAL = "eval"
GAP = "gap"
SPLIT_FILE = "split.csv"  # per spot: sample, barcode, x, y, block, split


@dataclass(frozen=True)
class BlockSplit:
    """Assignment of each spot of a section: its block index and one of ``train``, ``eval``, ``gap``."""

    block: np.ndarray  # int (n_spots,): grid cell, row-major over the grid
    split: np.ndarray  # str (n_spots,)
    eval_blocks: tuple[int, ...]

    def counts(self) -> dict[str, int]:
        return {name: int((self.split == name).sum()) for name in (TRAIN, EVAL, GAP)}


def block_split(xy: np.ndarray, *, grid: int, eval_fraction: float, patch_size: int, gap: int,
                seed: int = 0) -> BlockSplit:
    """Split spots at full-resolution positions ``xy`` (n_spots, 2) into training, evaluation and gap spots.

    Grid cells that contain spots are visited in a seeded random order and held out until at least
    ``eval_fraction`` of the spots are evaluation spots. At least one cell stays for training.

    Raises
    ------
    ValueError
        If the settings are out of range, or no training spot is left once the gap is removed.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if grid < 2:
        raise ValueError(f"block grid must be at least 2 (a {grid} x {grid} grid cannot hold a training and an "
                         "evaluation block).")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}.")
    if gap < 0:
        raise ValueError(f"block gap must be 0 or more full-resolution pixels, got {gap}.")
    if len(xy) < 2:
        raise ValueError(f"A blocked split needs at least 2 spots, got {len(xy)}.")
    low = xy.min(axis=0)
    extent = np.maximum(xy.max(axis=0) - low, 1e-9)
    cell = np.minimum((grid * (xy - low) / extent).astype(int), grid - 1)
    block = cell[:, 1] * grid + cell[:, 0]
    occupied = np.unique(block)
    if len(occupied) < 2:
        raise ValueError("All spots fall into one grid cell; raise the block grid.")
    order = np.random.default_rng(seed).permutation(occupied)
    held_out = []
    for candidate in order[:-1]:
        held_out.append(int(candidate))
        if np.isin(block, held_out).mean() >= eval_fraction:
            break
    is_eval = np.isin(block, held_out)
    split = np.where(is_eval, EVAL, TRAIN).astype(object)
    reach = patch_size + gap
    evaluated = xy[is_eval]
    for index in np.flatnonzero(~is_eval):
        chebyshev = np.abs(evaluated - xy[index]).max(axis=1)
        if (chebyshev < reach).any():
            split[index] = GAP
    if not (split == TRAIN).any():
        raise ValueError(
            f"No training spot is left: every spot outside the held-out blocks lies within the patch size plus the "
            f"gap ({patch_size} + {gap} full-resolution pixels) of an evaluation spot. Lower the gap, the "
            "evaluation fraction or the block grid (fewer, larger blocks lose fewer spots to the gap)."
        )
    return BlockSplit(block=block, split=split.astype(str), eval_blocks=tuple(sorted(held_out)))
