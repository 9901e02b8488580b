"""``stdiff prepare``: read samples, filter spots, tile patches and build expression vectors into a run folder.

Run folder layout written here::

    RUN_DIR/prepare.json            settings, samples and per-sample spot counts
    RUN_DIR/genes.json              the gene list, chosen on the training spots only
    RUN_DIR/variable_genes.json     the most variable genes of the training spots (evaluation only)
    RUN_DIR/split.csv               blocked samples: block and split (train, eval, gap) of every spot
    RUN_DIR/data/PART/patches.npy     uint8 (n_spots, resolution, resolution, 3)
    RUN_DIR/data/PART/expression.npy  float32 (n_spots, n_genes), log1p-normalised
    RUN_DIR/data/PART/variable_expression.npy  float32 (n_spots, n_variable_genes), log1p-normalised
    RUN_DIR/data/PART/spots.csv       barcode, x, y (full-resolution pixels), total_counts

A part is a whole sample, or for a sample split in blocks (``blocked_samples``) its training blocks
(``SAMPLE.train-blocks``) and its evaluation blocks (``SAMPLE.eval-blocks``); see :mod:`stdiff.split`.
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
from .constants import GENES_NAME, VARIABLE_GENES_NAME
from .expression import GeneSet, expression_matrix, select_top_genes, select_variable_genes, total_counts
from .split import EVAL, GAP as GAP_LABEL, SPLIT_FILE, TRAIN, block_split

logger = logging.getLogger(__name__)

PREPARE_NAME = "prepare.json"
DATA_DIR_NAME = "data"
TRAIN_PART_SUFFIX = ".train-blocks"
EVAL_PART_SUFFIX = ".eval-blocks"


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
    blocked_samples: tuple[str, ...] = ()  # samples split in spatial blocks, some for training, some held out
    block_grid: int = 4  # blocked samples are cut into a block_grid x block_grid grid of blocks
    eval_block_fraction: float = 0.3  # blocks are held out until this share of a section's spots is reached
    block_gap: int | None = None  # full-resolution pixels between evaluated and training patches; None: patch_size
    split_seed: int = 0
    n_variable_genes: int = 50  # most variable genes, kept for the expression round trip of the evaluation

    def __post_init__(self) -> None:
        if not self.train_samples and not self.blocked_samples:
            raise ValueError("train_samples is empty: name at least one sample to train on.")
        overlap = set(self.train_samples) & set(self.eval_samples)
        if overlap:
            raise ValueError(f"Samples {sorted(overlap)} are both training and evaluation samples.")
        overlap = set(self.blocked_samples) & (set(self.train_samples) | set(self.eval_samples))
        if overlap:
            raise ValueError(f"Samples {sorted(overlap)} are blocked samples and also whole training or evaluation "
                             "samples; name each sample once.")
        for option, names in (("--train", self.train_samples), ("--eval", self.eval_samples),
                              ("--blocked", self.blocked_samples)):
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"{option} names {', '.join(repeated)} more than once; name each sample once.")
        if self.block_grid < 2:
            raise ValueError(f"--block-grid must be at least 2 (a grid of 1 x 1 cannot hold a training and an "
                             f"evaluation block), got {self.block_grid}.")
        if not 0 < self.eval_block_fraction < 1:
            raise ValueError(f"--eval-block-fraction must be between 0 and 1 (exclusive), got "
                             f"{self.eval_block_fraction}.")
        if self.block_gap is not None and self.block_gap < 0:
            raise ValueError(f"--block-gap must be 0 or more full-resolution pixels, got {self.block_gap}.")
        if self.block_gap == self.patch_size:
            object.__setattr__(self, "block_gap", None)  # the default gap; stored the same way however it was given
        if self.patch_size < 8:
            raise ValueError(f"patch_size must be at least 8 full-resolution pixels, got {self.patch_size}.")
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8 (the autoencoder's factor), got "
                             f"{self.resolution}.")
        if self.min_counts < 0:
            raise ValueError(f"min_counts must be 0 or more, got {self.min_counts}.")
        if self.n_variable_genes < 1:
            raise ValueError(f"--n-variable-genes must be at least 1, got {self.n_variable_genes}.")

    @property
    def gap(self) -> int:
        """Distance in full-resolution pixels kept between evaluated and training patches of a blocked sample."""
        return self.patch_size if self.block_gap is None else self.block_gap

    @property
    def training_parts(self) -> tuple[str, ...]:
        """Folders under ``data/`` that models train on: whole training samples, then training blocks."""
        return (*self.train_samples, *(name + TRAIN_PART_SUFFIX for name in self.blocked_samples))

    @property
    def evaluation_parts(self) -> tuple[str, ...]:
        """Folders under ``data/`` that are evaluated: whole held-out samples, then held-out blocks."""
        return (*self.eval_samples, *(name + EVAL_PART_SUFFIX for name in self.blocked_samples))


@dataclass
class SpotData:
    """Prepared spots of one or more samples, concatenated in sample order."""

    patches: np.ndarray  # uint8 (n_spots, resolution, resolution, 3)
    expression: np.ndarray  # float32 (n_spots, n_genes)
    spots: pd.DataFrame  # sample, barcode, x, y, total_counts
    variable_expression: np.ndarray | None = None  # float32 (n_spots, n_variable_genes); None for older runs

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
    known = {field.name for field in dataclasses.fields(PrepareConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path} has settings this stdiff version does not know ({', '.join(unknown)}); "
                         "update stdiff or prepare a new run folder.")
    return PrepareConfig(**values), payload.get("samples", {})


def prepare(run_dir: str | Path, config: PrepareConfig, *, overwrite: bool = False) -> dict:
    """Prepare every training and evaluation part of ``config`` into ``run_dir``.

    Resumable: a part whose files are complete is skipped. A run folder prepared with other settings is
    rejected unless ``overwrite`` is set.

    Returns
    -------
    dict
        Per-part summary: spots read, spots kept, spots dropped by ``min_counts`` and the image source. The
        parts of a blocked sample also name the sample and count its training, evaluation and gap spots.
    """
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
    reader = _PartReader(config, summary)

    # Without prepare.json no part was completed, so gene lists and splits left by a failed run are made again.
    fresh = overwrite or not path.is_file() or not (run_dir / GENES_NAME).is_file()
    if fresh:
        gene_set = select_top_genes(reader.training(), n_genes=config.n_genes, target_sum=config.target_sum)
        gene_set.save(run_dir)
    else:
        gene_set = GeneSet.load(run_dir)
    if fresh or not (run_dir / VARIABLE_GENES_NAME).is_file():
        variable = select_variable_genes(reader.training(), n_genes=config.n_variable_genes,
                                         target_sum=config.target_sum, option="--n-variable-genes")
        variable.save(run_dir, VARIABLE_GENES_NAME)
    else:
        variable = GeneSet.load(run_dir, VARIABLE_GENES_NAME)
    if config.blocked_samples and (fresh or not (run_dir / SPLIT_FILE).is_file()):
        reader.write_split(run_dir / SPLIT_FILE)
    elif not config.blocked_samples:
        (run_dir / SPLIT_FILE).unlink(missing_ok=True)  # left by an earlier blocked run of this folder

    for name in (*config.training_parts, *config.evaluation_parts):
        folder = sample_folder(run_dir, name)
        complete = (folder / "spots.csv").is_file() and (folder / VARIABLE_EXPRESSION).is_file()
        if complete and name in summary and not overwrite:
            logger.info("%s already prepared, skipping", name)
            continue
        _write_sample(folder, reader.part(name), gene_set, variable, config, summary[name])
        reader.forget(name)
        write_json_atomically(path, {"config": dataclasses.asdict(config), "samples": summary})
    write_json_atomically(path, {"config": dataclasses.asdict(config), "samples": summary})
    return summary


VARIABLE_EXPRESSION = "variable_expression.npy"


class _PartReader:
    """Reads samples once, filters their spots and cuts blocked samples into their two parts."""

    def __init__(self, config: PrepareConfig, summary: dict) -> None:
        self.config = config
        self.summary = summary
        self.parts: dict = {}
        self.splits: dict[str, pd.DataFrame] = {}

    def training(self) -> list:
        return [self.part(name) for name in self.config.training_parts]

    def part(self, name: str):
        if name not in self.parts:
            for sample in self.config.blocked_samples:
                if name in (sample + TRAIN_PART_SUFFIX, sample + EVAL_PART_SUFFIX):
                    self._split(sample)
                    break
            else:
                self.parts[name] = self._read(name)
        return self.parts[name]

    def forget(self, name: str) -> None:
        self.parts.pop(name, None)

    def write_split(self, path: Path) -> None:
        for sample in self.config.blocked_samples:
            self._split(sample)
        table = pd.concat([self.splits[sample] for sample in self.config.blocked_samples], ignore_index=True)
        tmp = path.with_name(path.name + ".tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(path)

    def _read(self, name: str):
        from .io import read_visium

        return _filtered(read_visium(Path(self.config.data_dir) / name), self.config, self.summary, name)

    def _split(self, sample: str) -> None:
        if sample in self.splits:
            return
        adata = self._read(sample)
        section = self.summary.pop(sample)
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        try:
            result = block_split(xy, grid=self.config.block_grid, eval_fraction=self.config.eval_block_fraction,
                                 patch_size=self.config.patch_size, gap=self.config.gap, seed=self.config.split_seed)
        except ValueError as error:
            raise ValueError(f"Blocked sample {sample}: {error}") from None
        counts = result.counts()
        logger.info("%s: blocked split, %d training, %d evaluation and %d gap spots (held-out blocks %s)", sample,
                    counts[TRAIN], counts[EVAL], counts[GAP_LABEL], list(result.eval_blocks))
        self.splits[sample] = pd.DataFrame({"sample": sample, "barcode": adata.obs_names.to_numpy(), "x": xy[:, 0],
                                            "y": xy[:, 1], "block": result.block, "split": result.split})
        for suffix, label in ((TRAIN_PART_SUFFIX, TRAIN), (EVAL_PART_SUFFIX, EVAL)):
            keep = result.split == label
            self.parts[sample + suffix] = adata[keep].copy()
            self.summary[sample + suffix] = {
                **section, "spots_kept": int(keep.sum()), "blocked_sample": sample, "split": counts,
                "block_grid": self.config.block_grid, "gap_pixels": self.config.gap,
            }


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


def _write_sample(folder: Path, adata, gene_set: GeneSet, variable: GeneSet, config: PrepareConfig,
                  summary: dict) -> None:
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
    np.save(folder / VARIABLE_EXPRESSION, expression_matrix(adata, variable))
    # spots.csv is written last: its presence marks the sample as complete.
    tmp = folder / "spots.csv.tmp"
    spots.to_csv(tmp, index=False)
    tmp.replace(folder / "spots.csv")


def load_samples(run_dir: str | Path, samples: Sequence[str]) -> SpotData:
    """Load prepared samples from ``run_dir`` and concatenate them."""
    patches, expression, variable, frames = [], [], [], []
    for name in samples:
        folder = sample_folder(run_dir, name)
        if not (folder / "spots.csv").is_file():
            raise FileNotFoundError(
                f"Sample {name!r} is not prepared in {run_dir} (no {folder / 'spots.csv'}). "
                f"Run `stdiff prepare --run-dir {run_dir}` with it."
            )
        patches.append(np.load(folder / "patches.npy", mmap_mode="r"))
        expression.append(np.load(folder / "expression.npy"))
        if (folder / VARIABLE_EXPRESSION).is_file():
            variable.append(np.load(folder / VARIABLE_EXPRESSION))
        frame = pd.read_csv(folder / "spots.csv", dtype={"barcode": str})
        frame.insert(0, "sample", name)
        frames.append(frame)
    return SpotData(
        patches=np.concatenate(patches),
        expression=np.concatenate(expression).astype(np.float32),
        spots=pd.concat(frames, ignore_index=True),
        variable_expression=np.concatenate(variable).astype(np.float32) if len(variable) == len(frames) else None,
    )


def _diff(old: PrepareConfig, new: PrepareConfig) -> str:
    changed = [
        f"{field.name}: {getattr(old, field.name)!r} -> {getattr(new, field.name)!r}"
        for field in dataclasses.fields(PrepareConfig)
        if getattr(old, field.name) != getattr(new, field.name)
    ]
    return "; ".join(changed)
