"""Flat GEO downloads: every sample's Space Ranger files in one folder, named ``<sample>_<Space Ranger name>``.

A GEO series archive (``GSE..._RAW.tar``) unpacks to one folder containing, for example,
``GSM1_A1_tissue_positions_list.csv.gz``, ``GSM1_A1_scalefactors_json.json.gz``,
``GSM1_A1_filtered_feature_bc_matrix.h5`` and the same files for other samples. :func:`arrange_flat_folder`
groups the files by sample and writes one Space Ranger folder per sample, so that the reader and the app
find them.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from stdiff.constants import (
    FILTERED_H5,
    FILTERED_MTX_DIR,
    HIRES_IMAGE,
    LOWRES_IMAGE,
    MTX_BARCODES,
    MTX_FEATURES,
    MTX_GENES,
    MTX_MATRIX,
    POSITIONS_PARQUET,
    POSITIONS_V1,
    POSITIONS_V2,
    RAW_H5,
    RAW_MTX_DIR,
    SCALEFACTORS_JSON,
    SPATIAL_DIR,
    SPATIAL_QC_IMAGES,
)
from stdiff.io.files import PREFIX_SEPARATORS

logger = logging.getLogger(__name__)

# Space Ranger file name -> its place in a sample folder. Matrix files and CSV tables stay gzipped, because the
# reader reads them gzipped. Every other gzipped file is unpacked.
PLACES = {
    FILTERED_H5: FILTERED_H5,
    RAW_H5: RAW_H5,
    MTX_MATRIX: f"{FILTERED_MTX_DIR}/{MTX_MATRIX}",
    MTX_BARCODES: f"{FILTERED_MTX_DIR}/{MTX_BARCODES}",
    MTX_FEATURES: f"{FILTERED_MTX_DIR}/{MTX_FEATURES}",
    MTX_GENES: f"{FILTERED_MTX_DIR}/{MTX_GENES}",
    POSITIONS_V2: f"{SPATIAL_DIR}/{POSITIONS_V2}",
    POSITIONS_V1: f"{SPATIAL_DIR}/{POSITIONS_V1}",
    POSITIONS_PARQUET: f"{SPATIAL_DIR}/{POSITIONS_PARQUET}",
    SCALEFACTORS_JSON: f"{SPATIAL_DIR}/{SCALEFACTORS_JSON}",
    HIRES_IMAGE: f"{SPATIAL_DIR}/{HIRES_IMAGE}",
    LOWRES_IMAGE: f"{SPATIAL_DIR}/{LOWRES_IMAGE}",
    **{name: f"{SPATIAL_DIR}/{name}" for name in SPATIAL_QC_IMAGES},
}
KEEP_GZIPPED = (".mtx", ".tsv", ".csv")
# Suffixes of other files kept with a sample: its full-resolution image, which GEO submitters name freely.
IMAGE_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
MTX_NAMES = (MTX_MATRIX, MTX_BARCODES, MTX_FEATURES, MTX_GENES)
COUNTS_PLACES = (FILTERED_H5, RAW_H5, f"{FILTERED_MTX_DIR}/{MTX_MATRIX}", f"{RAW_MTX_DIR}/{MTX_MATRIX}")
POSITIONS_PLACES = tuple(PLACES[name] for name in (POSITIONS_V2, POSITIONS_V1, POSITIONS_PARQUET))


@dataclass
class FlatSample:
    """The files of one sample in a flat folder: places in a Space Ranger folder to paths, and other images."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)

    def missing(self) -> list[str]:
        """Return what the sample is missing to be read: a count matrix, a position table or the scale factors."""
        needs = []
        if not any(place in self.files for place in COUNTS_PLACES):
            needs.append(f"a count matrix ({FILTERED_H5} or {MTX_MATRIX}.gz with barcodes and features)")
        if not any(place in self.files for place in POSITIONS_PLACES):
            needs.append(f"a position table ({POSITIONS_V2} or {POSITIONS_V1})")
        if PLACES[SCALEFACTORS_JSON] not in self.files:
            needs.append(SCALEFACTORS_JSON)
        return needs


def _unzipped_name(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def _prefix_before(name: str, end: str) -> str | None:
    """Return what comes before ``end`` and a separator in ``name`` ("" when ``name`` is ``end``), or None."""
    if name == end:
        return ""
    for separator in PREFIX_SEPARATORS:
        if name.endswith(separator + end):
            return name[: -len(end) - 1]
    return None


def _split_name(file_name: str) -> tuple[str, str] | None:
    """Return (sample prefix, place in a Space Ranger folder) for a file named like a Space Ranger file, else None.

    The prefix may be empty. Matrix files named like ``GSM1_raw_feature_bc_matrix_matrix.mtx.gz`` go to the
    raw matrix folder.
    """
    name = _unzipped_name(file_name)
    for known in sorted(PLACES, key=len, reverse=True):
        prefix = _prefix_before(name, known)
        if prefix is None:
            continue
        if known in MTX_NAMES:
            for folder in (FILTERED_MTX_DIR, RAW_MTX_DIR):
                inner = _prefix_before(prefix, folder)
                if inner is not None:
                    return inner, f"{folder}/{known}"
        return prefix, PLACES[known]
    return None


def find_flat_samples(folder: str | Path) -> dict[str, FlatSample]:
    """Group the Space Ranger files directly in ``folder`` by their sample prefix.

    A file without a prefix belongs to a sample named after ``folder``. Images with a sample's prefix and no
    Space Ranger name (the full-resolution image) go with that sample.
    """
    folder = Path(folder)
    samples: dict[str, FlatSample] = {}
    others = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not child.is_file():
            continue
        split = _split_name(child.name)
        if split is None:
            others.append(child)
            continue
        prefix, place = split
        sample = samples.setdefault(prefix, FlatSample(prefix or folder.name))
        sample.files[place] = child
    for child in others:
        if not _unzipped_name(child.name).lower().endswith(IMAGE_SUFFIXES):
            continue
        owners = [prefix for prefix in samples if prefix and any(
            child.name.startswith(prefix + separator) for separator in PREFIX_SEPARATORS)]
        if owners:
            samples[max(owners, key=len)].images.append(child)
    return {sample.name: sample for sample in samples.values()}


def flat_folder_hint(folder: str | Path) -> str:
    """Return a sentence on how to arrange ``folder`` when it is a flat GEO download, else an empty string."""
    try:
        samples = [sample for sample in find_flat_samples(folder).values() if not sample.missing()]
    except OSError:
        return ""
    if not samples:
        return ""
    names = ", ".join(sample.name for sample in samples[:5]) + (", ..." if len(samples) > 5 else "")
    return (f" It looks like a GEO download with every file in one folder ({len(samples)} samples: {names}); "
            f"run `stdiff arrange-geo {folder} --out FOLDER` to make one Space Ranger folder per sample.")


def _place(source: Path, target: Path, *, move: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.name.lower().endswith(".gz") and not target.name.endswith(".gz"):
        with gzip.open(source, "rb") as packed, open(target, "wb") as unpacked:
            shutil.copyfileobj(packed, unpacked, length=16 * 1024 * 1024)
        if move:
            source.unlink()
    elif move:
        os.replace(source, target)
    else:
        try:
            os.link(source, target)  # A hard link needs no second copy of a large image.
        except OSError:
            shutil.copy2(source, target)


def arrange_sample(sample: FlatSample, out_dir: str | Path, *, move: bool = False, overwrite: bool = False) -> Path:
    """Write ``sample`` as a Space Ranger folder ``out_dir/<sample name>`` and return it.

    Files are hard-linked (copied where links are not possible) or, with ``move``, moved. The folder is built
    under a temporary name and renamed when complete, so an interrupted run leaves no half sample.

    Raises
    ------
    ValueError
        When the sample lacks a file the reader needs.
    FileExistsError
        When ``out_dir/<sample name>`` exists and ``overwrite`` is False.
    """
    missing = sample.missing()
    if missing:
        found = sorted(path.name for path in sample.files.values())
        raise ValueError(f"Sample {sample.name} is missing {', '.join(missing)}; found {found}. Download the missing "
                         "files from the same GEO record into the folder.")
    out_dir = Path(out_dir)
    target = out_dir / sample.name
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; remove it or pass --overwrite to arrange {sample.name} again.")
    partial = out_dir / f".{sample.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        for place, source in sample.files.items():
            if source.name.lower().endswith(".gz") and place.endswith(KEEP_GZIPPED):
                place += ".gz"
            _place(source, partial / place, move=move)
        for image in sample.images:
            _place(image, partial / _unzipped_name(image.name), move=move)
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("Arranged %s into %s (%d files).", sample.name, target, len(sample.files) + len(sample.images))
    return target


def arrange_flat_folder(folder: str | Path, out_dir: str | Path, *, move: bool = False,
                        overwrite: bool = False) -> tuple[list[Path], dict[str, str]]:
    """Write one Space Ranger folder per sample of the flat ``folder`` into ``out_dir``.

    Returns the sample folders written and, by sample name, why the others were not (a missing file, or a
    folder that exists already).

    Raises
    ------
    FileNotFoundError
        When ``folder`` is not a folder.
    ValueError
        When ``folder`` contains no Space Ranger file with a sample prefix.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Folder {folder} not found. Pass the folder that the GEO files were unpacked into.")
    samples = find_flat_samples(folder)
    if not samples:
        found = sorted(child.name for child in folder.iterdir())[:20]
        raise ValueError(f"No Space Ranger files in {folder}; found {found}. Expected names such as "
                         f"GSM1_{POSITIONS_V1}.gz, GSM1_{SCALEFACTORS_JSON}.gz and GSM1_{FILTERED_H5}.")
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], {}
    for name, sample in samples.items():
        try:
            written.append(arrange_sample(sample, out_dir, move=move, overwrite=overwrite))
        except (ValueError, FileExistsError) as error:
            logger.warning("%s", error)
            skipped[name] = str(error)
    return written, skipped
