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
import shlex
import shutil
import uuid
import zlib
from collections.abc import Callable
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
from stdiff.io.files import PREFIX_SEPARATORS, space_ranger_prefix

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
UNPACK_CHUNK_BYTES = 16 * 1024 * 1024


@dataclass
class FlatSample:
    """The files of one sample in a flat folder, keyed by their place in a Space Ranger folder."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    broken_links: list[Path] = field(default_factory=list)

    def add(self, place: str, path: Path) -> None:
        """Record ``path`` for ``place``; a second file for the same place is a conflict."""
        if place in self.files:
            self.conflicts.append(f"{self.files[place].name} and {path.name} both give {place}")
        else:
            self.files[place] = path

    def missing(self) -> list[str]:
        """Return what stops the sample from being read: missing files, conflicts and broken links."""
        problems = []
        matrix_folders = [folder for folder in (FILTERED_MTX_DIR, RAW_MTX_DIR) if f"{folder}/{MTX_MATRIX}" in self.files]
        if not any(place in self.files for place in (FILTERED_H5, RAW_H5)) and not matrix_folders:
            problems.append(f"a count matrix ({FILTERED_H5} or {MTX_MATRIX}.gz with barcodes and features)")
        for folder in matrix_folders:
            if f"{folder}/{MTX_BARCODES}" not in self.files:
                problems.append(f"{MTX_BARCODES}.gz for its {MTX_MATRIX}")
            if not any(f"{folder}/{name}" in self.files for name in (MTX_FEATURES, MTX_GENES)):
                problems.append(f"{MTX_FEATURES}.gz (or {MTX_GENES}.gz) for its {MTX_MATRIX}")
        if not any(place in self.files for place in POSITIONS_PLACES):
            problems.append(f"a position table ({POSITIONS_V2} or {POSITIONS_V1})")
        if PLACES[SCALEFACTORS_JSON] not in self.files:
            problems.append(SCALEFACTORS_JSON)
        problems += [f"one file per place ({conflict}; keep one)" for conflict in self.conflicts]
        problems += [f"the target of the symbolic link {link.name} ({os.readlink(link)} is missing)"
                     for link in self.broken_links]
        return problems


def _unzipped_name(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


def _split_name(file_name: str) -> tuple[str, str] | None:
    """Return (sample prefix, place in a Space Ranger folder) for a file named like a Space Ranger file, else None.

    The prefix may be empty. Matrix files named like ``GSM1_raw_feature_bc_matrix_matrix.mtx.gz`` go to the
    raw matrix folder.
    """
    name = _unzipped_name(file_name)
    for known in sorted(PLACES, key=len, reverse=True):
        prefix = space_ranger_prefix(name, known)
        if prefix is None:
            continue
        if known in MTX_NAMES:
            for folder in (FILTERED_MTX_DIR, RAW_MTX_DIR):
                inner = space_ranger_prefix(prefix, folder)
                if inner is not None:
                    return inner, f"{folder}/{known}"
        return prefix, PLACES[known]
    return None


def _owner(file_name: str, prefixes: set[str]) -> str | None:
    """Return the longest of ``prefixes`` that ``file_name`` starts with, followed by a separator."""
    cuts = [index for index, character in enumerate(file_name) if character in PREFIX_SEPARATORS]
    for index in reversed(cuts):
        if file_name[:index] in prefixes:
            return file_name[:index]
    return None


def _sample_name(prefix: str, folder: Path) -> str:
    """Name a sample after its prefix or, for files without one, after the folder (never "", "." or "..")."""
    return prefix or folder.resolve().name or "sample"


def find_flat_samples(folder: str | Path) -> dict[str, FlatSample]:
    """Group the Space Ranger files directly in ``folder`` by their sample prefix.

    A file without a prefix belongs to a sample named after ``folder``. Images with a sample's prefix and no
    Space Ranger name (the full-resolution image) go with that sample, and in a folder without prefixes every
    image goes with its one sample.
    """
    folder = Path(folder)
    samples: dict[str, FlatSample] = {}
    others = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        broken = child.is_symlink() and not child.exists()
        if not broken and not child.is_file():
            continue
        split = _split_name(child.name)
        if split is None:
            others.append(child)
            continue
        prefix, place = split
        sample = samples.setdefault(prefix, FlatSample(_sample_name(prefix, folder)))
        if broken:
            sample.broken_links.append(child)
        else:
            sample.add(place, child)
    prefixes = {prefix for prefix in samples if prefix}
    for child in others:
        if prefixes:
            owner = _owner(child.name, prefixes)
        else:
            # In a folder of one sample without prefixes, every image belongs to that sample.
            owner = "" if "" in samples else None
        if owner is None or not _unzipped_name(child.name).lower().endswith(IMAGE_SUFFIXES):
            continue
        if child.is_symlink() and not child.exists():
            samples[owner].broken_links.append(child)
        else:
            samples[owner].add(_unzipped_name(child.name), child)
    by_name: dict[str, FlatSample] = {}
    for sample in samples.values():
        other = by_name.setdefault(sample.name, sample)
        if other is not sample:
            # Files without a prefix are named after the folder, which can equal another sample's prefix.
            conflict = f"files with and without the prefix {sample.name} describe one sample (keep one set)"
            other.conflicts.append(conflict)
    return by_name


def flat_folder_hint(folder: str | Path) -> str:
    """Return a sentence on how to arrange ``folder`` when it is a flat GEO download, else an empty string."""
    try:
        samples = [sample for sample in find_flat_samples(folder).values() if not sample.missing()]
    except OSError:
        return ""
    if not samples:
        return ""
    names = ", ".join(sample.name for sample in samples[:5]) + (", ..." if len(samples) > 5 else "")
    count = f"{len(samples)} sample" + ("s" if len(samples) > 1 else "")
    return (f" It looks like a GEO download with every file in one folder ({count}: {names}); "
            f"run `stdiff arrange-geo {shlex.quote(str(folder))} --out FOLDER` to make one Space Ranger folder "
            "per sample.")


def _place(source: Path, target: Path, on_bytes: Callable[[int], None] | None = None) -> None:
    """Put ``source`` at ``target``: unpacked when ``target`` drops its .gz, else hard-linked or copied.

    ``on_bytes`` is called with the size of each unpacked chunk, so that a caller can cap what a small gzip
    file expands to. Raises ValueError when a gzipped file is damaged.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    unpack = source.name.lower().endswith(".gz") and not target.name.endswith(".gz")
    source = source.resolve()  # Link or copy the file itself, not a symbolic link to it.
    if unpack:
        try:
            with gzip.open(source, "rb") as packed, open(target, "wb") as unpacked:
                while chunk := packed.read(UNPACK_CHUNK_BYTES):
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    unpacked.write(chunk)
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise ValueError(f"{source.name} is not a complete gzip file ({error}); download it again.") from error
        return
    try:
        os.link(source, target)  # A hard link needs no second copy of a large image.
    except OSError:
        shutil.copy2(source, target)


def _check_target(target: Path, out_dir: Path, sources: list[Path]) -> None:
    """Raise ValueError when replacing ``target`` would delete the output folder or a source file's folder."""
    resolved, out_resolved = target.resolve(), out_dir.resolve()
    if resolved == out_resolved or resolved in out_resolved.parents:
        raise ValueError(f"The sample folder {target} would replace the output folder {out_dir}; choose another --out.")
    for source in sources:
        for folder in {source.absolute().parent.resolve(), source.resolve().parent}:
            if resolved == folder or resolved in folder.parents:
                raise ValueError(f"The sample folder {target} would replace the folder that contains {source.name}; "
                                 "choose an --out folder outside the GEO folder's own path.")


def arrange_sample(sample: FlatSample, out_dir: str | Path, *, move: bool = False, overwrite: bool = False,
                   on_bytes: Callable[[int], None] | None = None) -> Path:
    """Write ``sample`` as a Space Ranger folder ``out_dir/<sample name>`` and return it.

    Files are hard-linked (copied where links are not possible) and gzipped ones unpacked, into a folder under
    a temporary name that is renamed when complete. With ``move`` the source files are deleted only after that,
    so an error or an interruption leaves every source file in place. ``on_bytes`` receives the size of each
    unpacked chunk (see :func:`_place`).

    Raises
    ------
    ValueError
        When the sample is missing a file the reader needs, a gzipped file is damaged, or the target would
        replace the output folder or the folder of a source file.
    FileExistsError
        When ``out_dir/<sample name>`` exists and ``overwrite`` is False.
    """
    problems = sample.missing()
    if problems:
        found = sorted(path.name for path in sample.files.values())
        raise ValueError(f"Sample {sample.name} is missing {', '.join(problems)}; found {found}. Download the missing "
                         "files from the same GEO record into the folder (or unpack its GSM..._spatial.tar.gz "
                         "there).")
    out_dir = Path(out_dir)
    target = out_dir / sample.name
    sources = list(sample.files.values())
    _check_target(target, out_dir, sources)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise FileExistsError(f"{target} exists; remove it or pass --overwrite to arrange {sample.name} again.")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f".{sample.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        for place, source in sample.files.items():
            if source.name.lower().endswith(".gz") and place.endswith(KEEP_GZIPPED):
                place += ".gz"
            _place(source, partial / place, on_bytes)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if move:
        for source in sources:
            try:
                source.unlink()
            except OSError as error:
                logger.warning("Arranged %s, but %s was not removed: %s", sample.name, source, error)
    logger.info("Arranged %s into %s (%d files).", sample.name, target, len(sources))
    return target


def arrange_flat_folder(folder: str | Path, out_dir: str | Path, *, move: bool = False,
                        overwrite: bool = False) -> tuple[list[Path], dict[str, str]]:
    """Write one Space Ranger folder per sample of the flat ``folder`` into ``out_dir``.

    Returns the sample folders written and, by sample name, why the others were not (a missing or damaged
    file, a folder that exists already, a folder that cannot be written).

    Raises
    ------
    FileNotFoundError
        When ``folder`` does not exist.
    ValueError
        When ``folder`` is not a readable folder, is a Space Ranger sample already, contains no Space Ranger
        file, or ``out_dir`` is a file.
    """
    from stdiff.io.visium import is_sample_dir

    folder, out_dir = Path(folder).expanduser(), Path(out_dir).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"Folder {folder} not found. Pass the folder that the GEO files were unpacked into.")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder. Pass the folder that the GEO files were unpacked into.")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; pass a folder (it is created when missing).")
    try:
        if is_sample_dir(folder):
            raise ValueError(f"{folder} is a Space Ranger sample folder already; put it in a data folder as it is.")
        samples = find_flat_samples(folder)
    except OSError as error:
        raise ValueError(f"Cannot read {folder}: {error}. Check its permissions.") from error
    if not samples:
        found = sorted(child.name for child in folder.iterdir())[:20]
        raise ValueError(f"No Space Ranger files in {folder}; found {found}. Expected names such as "
                         f"GSM1_{POSITIONS_V1}.gz, GSM1_{SCALEFACTORS_JSON}.gz and GSM1_{FILTERED_H5}.")
    written, skipped = [], {}
    for name, sample in samples.items():
        try:
            written.append(arrange_sample(sample, out_dir, move=move, overwrite=overwrite))
        except (ValueError, OSError) as error:
            message = str(error) if not isinstance(error, PermissionError) else (
                f"Cannot arrange {sample.name}: {error}. Check that the GEO files can be read and that --out "
                "can be written.")
            logger.warning("%s", message)
            skipped[name] = message
    return written, skipped
