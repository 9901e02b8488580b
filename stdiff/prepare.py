"""``stdiff prepare``: read samples, filter spots, tile patches and build expression vectors into a run folder.

Run folder layout written here::

    RUN_DIR/prepare.json            settings, samples and per-sample spot counts
    RUN_DIR/genes.json              the gene list, chosen on the training samples only
    RUN_DIR/data/SAMPLE/patches.npy     uint8 (n_spots, resolution, resolution, 3)
    RUN_DIR/data/SAMPLE/expression.npy  float32 (n_spots, n_genes), log1p-normalised
    RUN_DIR/data/SAMPLE/spots.csv       barcode, x, y (full-resolution pixels), total_counts
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .checkpoint_io import write_json_atomically
from .expression import GeneSet, expression_matrix, select_top_genes, total_counts

logger = logging.getLogger(__name__)

PREPARE_NAME = "prepare.json"
DATA_DIR_NAME = "data"


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of ``stdiff prepare``; stored in ``prepare.json``."""

    data_dir: str  # folder holding the sample folders
    train_samples: tuple[str, ...]  # sample folder names used for training and for choosing genes
    eval_samples: tuple[str, ...] = ()  # held-out sample folder names, prepared the same way
    patch_size: int = 256  # side of the square crop around each spot, in full-resolution pixels
    resolution: int = 128  # side of the patch after resizing, in model pixels (a multiple of 8)
    n_genes: int = 50  # number of top expressed genes in the expression vector
    min_counts: int = 100  # spots with fewer UMIs are dropped before anything else
    target_sum: float = 1e4

    def __post_init__(self) -> None:
        if not self.train_samples:
            raise ValueError("train_samples is empty: name at least one sample to train on.")
        overlap = set(self.train_samples) & set(self.eval_samples)
        if overlap:
            raise ValueError(f"Samples {sorted(overlap)} are both training and evaluation samples.")
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be at least 8 full-resolution pixels, got {self.patch_size}.")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8 (the autoencoder's factor), got "
                             f"{self.resolution}.")
        if self.min_counts < 0:
            raise ValueError(f"min_counts must be 0 or more, got {self.min_counts}.")


@dataclass
class SpotData:
    """Prepared spots of one or more samples, concatenated in sample order."""

    patches: np.ndarray  # uint8 (n_spots, resolution, resolution, 3)
    expression: np.ndarray  # float32 (n_spots, n_genes)
    spots: pd.DataFrame  # sample, barcode, x, y, total_counts

    def __len__(self) -> int:
        return len(self.spots)


def sample_folder(run_dir: str | Path, sample: str) -> Path:
    return Path(run_dir) / DATA_DIR_NAME / sample


def read_prepare_config(run_dir: str | Path) -> tuple[PrepareConfig, dict]:
    """Return the run's :class:`PrepareConfig` and the per-sample summary written by :func:`prepare`."""
    path = Path(run_dir) / PREPARE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {PREPARE_NAME} in {run_dir}. Run `stdiff prepare --run-dir {run_dir}` first.")
    payload = json.loads(path.read_text())
    values = {key: tuple(v) if isinstance(v, list) else v for key, v in payload["config"].items()}
    return PrepareConfig(**values), payload.get("samples", {})


def prepare(run_dir: str | Path, config: PrepareConfig, *, overwrite: bool = False) -> dict:
    """Prepare every training and evaluation sample of ``config`` into ``run_dir``.

    Resumable: a sample whose files are complete is skipped. A run folder prepared with other settings is
    rejected unless ``overwrite`` is set.

    Returns
    -------
    dict
        Per-sample summary: spots read, spots kept, spots dropped by ``min_counts``, image source.
    """
    from .io import read_visium

    run_dir = Path(run_dir)
    path = run_dir / PREPARE_NAME
    if path.is_file() and not overwrite:
        previous, summary = read_prepare_config(run_dir)
        if previous != config:
            raise ValueError(
                f"{path} was written with other settings ({_diff(previous, config)}). Use a new --run-dir, "
                "or pass --overwrite to prepare again."
            )
    else:
        summary = {}
    run_dir.mkdir(parents=True, exist_ok=True)

    data_dir = Path(config.data_dir)
    gene_path = run_dir / "genes.json"
    adatas = {}
    if gene_path.is_file() and not overwrite:
        gene_set = GeneSet.load(run_dir)
    else:
        for name in config.train_samples:
            adatas[name] = _filtered(read_visium(data_dir / name), config, summary, name)
        gene_set = select_top_genes(list(adatas.values()), n_genes=config.n_genes, target_sum=config.target_sum)
        gene_set.save(run_dir)

    for name in (*config.train_samples, *config.eval_samples):
        folder = sample_folder(run_dir, name)
        if (folder / "spots.csv").is_file() and name in summary and not overwrite:
            logger.info("%s already prepared, skipping", name)
            continue
        adata = adatas.pop(name, None)
        if adata is None:
            adata = _filtered(read_visium(data_dir / name), config, summary, name)
        _write_sample(folder, adata, gene_set, config, summary[name])
        write_json_atomically(path, {"config": dataclasses.asdict(config), "samples": summary})
    write_json_atomically(path, {"config": dataclasses.asdict(config), "samples": summary})
    return summary


def _filtered(adata, config: PrepareConfig, summary: dict, name: str):
    counts = total_counts(adata)
    keep = counts >= config.min_counts
    summary[name] = {
        "spots_read": int(adata.n_obs),
        "spots_kept": int(keep.sum()),
        "spots_dropped_min_counts": int((~keep).sum()),
        "min_counts": config.min_counts,
    }
    if not keep.any():
        raise ValueError(
            f"Sample {name}: all {adata.n_obs} spots have fewer than min_counts={config.min_counts} UMIs "
            f"(max {counts.max():.0f}). Lower --min-counts."
        )
    if (~keep).any():
        logger.info("%s: dropped %d of %d spots with fewer than %d UMIs",
                    name, (~keep).sum(), adata.n_obs, config.min_counts)
    return adata[keep].copy()


def _write_sample(folder: Path, adata, gene_set: GeneSet, config: PrepareConfig, summary: dict) -> None:
    from .io import open_tissue_image
    from .patches import extract_patches

    image = open_tissue_image(adata)
    summary["image_source"] = image.source
    patches = extract_patches(adata, image=image, patch_size=config.patch_size, resolution=config.resolution)
    expression = expression_matrix(adata, gene_set)
    spots = pd.DataFrame({
        "barcode": adata.obs_names.to_numpy(),
        "x": adata.obsm["spatial"][:, 0],
        "y": adata.obsm["spatial"][:, 1],
        "total_counts": total_counts(adata),
    })
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "patches.npy", patches)
    np.save(folder / "expression.npy", expression)
    # spots.csv is written last: its presence marks the sample as complete.
    tmp = folder / "spots.csv.tmp"
    spots.to_csv(tmp, index=False)
    tmp.replace(folder / "spots.csv")


def load_samples(run_dir: str | Path, samples: Sequence[str]) -> SpotData:
    """Load prepared samples from ``run_dir`` and concatenate them."""
    patches, expression, frames = [], [], []
    for name in samples:
        folder = sample_folder(run_dir, name)
        if not (folder / "spots.csv").is_file():
            raise FileNotFoundError(
                f"Sample {name!r} is not prepared in {run_dir} (no {folder / 'spots.csv'}). "
                f"Run `stdiff prepare --run-dir {run_dir}` with it."
            )
        patches.append(np.load(folder / "patches.npy", mmap_mode="r"))
        expression.append(np.load(folder / "expression.npy"))
        frame = pd.read_csv(folder / "spots.csv", dtype={"barcode": str})
        frame.insert(0, "sample", name)
        frames.append(frame)
    return SpotData(
        patches=np.concatenate(patches),
        expression=np.concatenate(expression).astype(np.float32),
        spots=pd.concat(frames, ignore_index=True),
    )


def _diff(old: PrepareConfig, new: PrepareConfig) -> str:
    changed = [
        f"{field.name}: {getattr(old, field.name)!r} -> {getattr(new, field.name)!r}"
        for field in dataclasses.fields(PrepareConfig)
        if getattr(old, field.name) != getattr(new, field.name)
    ]
    return "; ".join(changed)
