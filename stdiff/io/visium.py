"""Reader for Space Ranger (10x Visium) output folders."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from stdiff.constants import (
    FILTERED_H5,
    FILTERED_MTX_DIR,
    FULLRES_NAME_HINT,
    HIRES_IMAGE,
    HIRES_SCALEF,
    IMAGES_KEY,
    LIBRARY_ID_KEY,
    LOWRES_IMAGE,
    LOWRES_SCALEF,
    METADATA_KEY,
    OUTS_DIR,
    POSITIONS_PARQUET,
    POSITIONS_V1,
    POSITIONS_V2,
    SCALEFACTORS_JSON,
    SCALEFACTORS_KEY,
    SPATIAL_DIR,
    SPATIAL_KEY,
    SPATIAL_QC_IMAGES,
    SPOT_DIAMETER_FULLRES,
)
from stdiff.io.counts import find_counts_file, read_counts, read_h5_library_id
from stdiff.io.errors import VisiumReadError
from stdiff.io.images import TIFF_SUFFIXES, load_rgb_image, read_image_size
from stdiff.io.positions import find_positions_file, fullres_xy, read_positions

logger = logging.getLogger(__name__)

FULLRES_SUFFIXES = (*TIFF_SUFFIXES, ".jpg", ".jpeg")
FULLRES_NAME_SUFFIXES = (*FULLRES_SUFFIXES, ".png")
# The full-resolution size implied by hires size / tissue_hires_scalef differs from the real one by rounding.
# A larger gap means the image is not the one Space Ranger was run on.
SIZE_MISMATCH_TOLERANCE = 0.02
SPOTS_OUTSIDE_TOLERANCE = 0.01


def _resolve_sample_dir(path: Path) -> Path:
    """Return the folder holding ``spatial/``: ``path`` itself or its ``outs/`` subfolder."""
    if (path / SPATIAL_DIR).is_dir():
        return path
    if (path / OUTS_DIR / SPATIAL_DIR).is_dir():
        return path / OUTS_DIR
    found = sorted(child.name for child in path.iterdir())[:20]
    raise VisiumReadError(
        f"No {SPATIAL_DIR}/ folder in {path} or {path / OUTS_DIR}; found {found}. Expected a Space Ranger "
        f"outs folder with {SPATIAL_DIR}/ (positions, scalefactors, images) and {FILTERED_H5} or "
        f"{FILTERED_MTX_DIR}/.",
        path=path,
    )


def _is_sample_dir(path: Path) -> bool:
    for candidate in (path, path / OUTS_DIR):
        if (candidate / SPATIAL_DIR).is_dir() and find_counts_file(candidate) is not None:
            return True
    return False


def list_samples(data_dir: str | Path) -> list[Path]:
    """List the Space Ranger sample folders directly under ``data_dir``, sorted by name.

    A folder counts as a sample when it, or its ``outs/`` subfolder, contains a ``spatial/`` folder and a
    filtered count matrix (``filtered_feature_bc_matrix.h5`` or ``filtered_feature_bc_matrix/``). Other
    entries are skipped with a debug log message.

    Raises
    ------
    FileNotFoundError
        When ``data_dir`` is not a folder.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"Data folder {data_dir} not found. Set STDIFF_DATA_DIR to a folder holding one Space Ranger "
            "outs folder per sample."
        )
    samples = []
    for child in sorted(data_dir.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        if _is_sample_dir(child):
            samples.append(child)
        else:
            logger.debug("Skipping %s: no %s/ folder with a filtered count matrix next to it.", child, SPATIAL_DIR)
    return samples


def _read_scalefactors(spatial_dir: Path, *, required: list[str]) -> dict:
    path = spatial_dir / SCALEFACTORS_JSON
    if not path.is_file():
        raise VisiumReadError(
            f"Missing {path}. Space Ranger writes {SCALEFACTORS_JSON} into {SPATIAL_DIR}/ with "
            f"{', '.join(required)}; copy it from the Space Ranger output.",
            path=path,
        )
    try:
        scalefactors = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VisiumReadError(f"Could not parse {path} as JSON: {error}.", path=path) from error
    if not isinstance(scalefactors, dict):
        raise VisiumReadError(
            f"{path} contains a JSON {type(scalefactors).__name__}; expected a JSON object with {', '.join(required)}.",
            path=path,
        )
    for key in required:
        if key not in scalefactors:
            raise VisiumReadError(
                f"{path} lacks the key {key!r}; found keys {sorted(scalefactors)}. Expected "
                f"{', '.join(required)}; restore the file from the Space Ranger output.",
                path=path,
            )
        value = scalefactors[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise VisiumReadError(
                f"{path} has {key} = {value!r}; expected a positive number.",
                path=path,
            )
    return scalefactors


def _find_fullres_image(sample_dir: Path) -> Path | None:
    """Find the full-resolution H&E image in ``spatial/`` or the sample folder, or return None.

    A file qualifies when its name contains "fullres" (any image suffix), or it ends in .tif, .tiff, .jpg or
    .jpeg and is not a Space Ranger hires, lowres or quality-control image. Names with "fullres" win; among
    several other candidates the largest file is used.
    """
    excluded = {HIRES_IMAGE, LOWRES_IMAGE, *SPATIAL_QC_IMAGES}
    for folder in (sample_dir / SPATIAL_DIR, sample_dir):
        files = [child for child in sorted(folder.iterdir()) if child.is_file() and child.name not in excluded]
        named = [f for f in files if FULLRES_NAME_HINT in f.name.lower() and f.suffix.lower() in FULLRES_NAME_SUFFIXES]
        others = [f for f in files if f.suffix.lower() in FULLRES_SUFFIXES and f not in named]
        for candidates in (named, others):
            if not candidates:
                continue
            chosen = max(candidates, key=lambda f: f.stat().st_size)
            if len(candidates) > 1:
                logger.warning(
                    "Several full-resolution image candidates in %s: %s; using the largest, %s. Pass "
                    "fullres_image= to choose.",
                    folder,
                    [f.name for f in candidates],
                    chosen.name,
                )
            return chosen
    return None


def _check_fullres_size(fullres_path: Path, *, hires: np.ndarray | None, scalefactors: dict) -> tuple[int, int]:
    """Read the full-res image size from its header; warn when it disagrees with hires / tissue_hires_scalef."""
    width, height = read_image_size(fullres_path)
    if hires is not None and HIRES_SCALEF in scalefactors:
        expected_width = hires.shape[1] / scalefactors[HIRES_SCALEF]
        expected_height = hires.shape[0] / scalefactors[HIRES_SCALEF]
        if (
            abs(width - expected_width) > SIZE_MISMATCH_TOLERANCE * expected_width
            or abs(height - expected_height) > SIZE_MISMATCH_TOLERANCE * expected_height
        ):
            logger.warning(
                "%s is %d x %d pixels, but the hires image and tissue_hires_scalef imply %.0f x %.0f; it may "
                "not be the image Space Ranger was run on, and patches would miss their spots.",
                fullres_path,
                width,
                height,
                expected_width,
                expected_height,
            )
    return width, height


def _match_barcodes(
    counts: ad.AnnData, positions: pd.DataFrame, *, counts_path: Path, positions_path: Path
) -> ad.AnnData:
    """Keep matrix spots that are in tissue, in matrix order; raise when a matrix barcode has no position."""
    missing = ~counts.obs_names.isin(positions.index)
    if missing.any():
        examples = counts.obs_names[missing][:3].tolist()
        position_examples = positions.index[:3].tolist()
        raise VisiumReadError(
            f"{int(missing.sum())} of {counts.n_obs} barcodes in {counts_path} are not in {positions_path} "
            f"(for example {examples}; the positions file lists {len(positions)} barcodes such as "
            f"{position_examples}). Both files must come from the same Space Ranger run; barcodes are matched "
            "exactly, including any '-1' suffix.",
            path=positions_path,
        )
    spot_positions = positions.loc[counts.obs_names]
    in_tissue = spot_positions["in_tissue"].to_numpy() == 1
    if not in_tissue.all():
        logger.info(
            "Dropping %d of %d matrix spots that %s marks as outside the tissue.",
            int((~in_tissue).sum()),
            counts.n_obs,
            positions_path.name,
        )
    adata = counts[in_tissue].copy()
    for column in spot_positions.columns:
        adata.obs[column] = spot_positions[column].to_numpy()[in_tissue]
    return adata


def read_visium(
    path: str | Path,
    *,
    fullres_image: str | Path | None = None,
    library_id: str | None = None,
) -> ad.AnnData:
    """Read a Space Ranger output folder into AnnData, laid out as scanpy and squidpy do.

    Accepted layouts, inside ``path`` or ``path/outs``:

    - counts: ``filtered_feature_bc_matrix.h5`` (read with ``scanpy.read_10x_h5``; preferred when both are
      present) or ``filtered_feature_bc_matrix/`` with ``matrix.mtx``, ``barcodes.tsv`` and ``features.tsv``
      or ``genes.tsv``, each plain or gzipped;
    - positions: ``spatial/tissue_positions.csv`` (header), ``spatial/tissue_positions_list.csv`` (no header)
      or ``spatial/tissue_positions.parquet``; a CSV header is detected from the content of the first row;
    - ``spatial/scalefactors_json.json`` and any of ``tissue_hires_image.png``, ``tissue_lowres_image.png``;
    - full-resolution image: ``fullres_image``, else a file in ``spatial/`` or the sample folder whose name
      contains "fullres" or ends in .tif, .tiff, .jpg or .jpeg (Space Ranger's quality-control images are
      skipped). Only its header is read here; :func:`stdiff.io.open_tissue_image` decodes it.

    Parameters
    ----------
    path
        Space Ranger ``outs`` folder, or a sample folder containing ``outs/``.
    fullres_image
        The full-resolution H&E image the spot pixel coordinates refer to.
    library_id
        Key under ``uns["spatial"]``. Defaults to the h5 attribute ``library_ids`` when present, else the
        sample folder name.

    Returns
    -------
    AnnData with one row per spot that is in the matrix and in tissue, in matrix order:

    - ``X``: counts, CSR float32; ``obs_names``: barcodes; ``var_names``: unique gene symbols;
    - ``var["gene_ids"]``: feature ids (the symbol when the features file has no id); ``var["feature_types"]``
      when listed (only "Gene Expression" features are kept);
    - ``obs``: ``in_tissue``, ``array_row``, ``array_col``, ``pxl_row_in_fullres``, ``pxl_col_in_fullres``,
      ``library_id`` (categorical);
    - ``obsm["spatial"]``: float64 (n_spots, 2) full-resolution (x, y) = (pxl_col_in_fullres,
      pxl_row_in_fullres);
    - ``uns["spatial"][library_id]``: ``images`` (``hires`` and/or ``lowres`` as uint8 (height, width, 3)),
      ``scalefactors`` (the JSON file as a dict), ``metadata`` (``source_dir``, ``fullres_path`` or None,
      ``counts_file``, ``positions_file``).

    Raises
    ------
    VisiumReadError
        When a file is missing or malformed, or a matrix barcode has no position. The message names the file.
    """
    source_path = Path(path).expanduser()
    if not source_path.is_dir():
        raise VisiumReadError(
            f"Sample folder {source_path} not found. Pass a Space Ranger outs folder.",
            path=source_path,
        )
    sample_dir = _resolve_sample_dir(source_path)
    spatial_dir = sample_dir / SPATIAL_DIR

    # 1. Locate the files.
    counts_path = find_counts_file(sample_dir)
    if counts_path is None:
        raise VisiumReadError(
            f"No count matrix in {sample_dir}: expected {FILTERED_H5} or a {FILTERED_MTX_DIR}/ folder. Copy "
            "the filtered feature-barcode matrix from the Space Ranger output.",
            path=sample_dir,
        )
    positions_path = find_positions_file(spatial_dir)
    if positions_path is None:
        found = sorted(child.name for child in spatial_dir.iterdir())
        raise VisiumReadError(
            f"No spot position table in {spatial_dir}; found {found}. Expected {POSITIONS_V2}, "
            f"{POSITIONS_V1} or {POSITIONS_PARQUET}; copy it from the Space Ranger output.",
            path=spatial_dir,
        )
    image_paths = {
        source: spatial_dir / name
        for source, name in (("hires", HIRES_IMAGE), ("lowres", LOWRES_IMAGE))
        if (spatial_dir / name).is_file()
    }
    required_scalefactors = [SPOT_DIAMETER_FULLRES]
    required_scalefactors += [{"hires": HIRES_SCALEF, "lowres": LOWRES_SCALEF}[source] for source in image_paths]
    scalefactors = _read_scalefactors(spatial_dir, required=required_scalefactors)

    # 2. Counts and positions, matched by barcode.
    counts = read_counts(counts_path)
    positions = read_positions(positions_path)
    adata = _match_barcodes(counts, positions, counts_path=counts_path, positions_path=positions_path)
    if adata.n_obs == 0:
        raise VisiumReadError(
            f"None of the {counts.n_obs} spots in {counts_path} is in tissue according to {positions_path}.",
            path=positions_path,
        )
    adata.obsm[SPATIAL_KEY] = fullres_xy(adata.obs)

    # 3. Library id and images.
    if library_id is None and counts_path.suffix == ".h5":
        library_id = read_h5_library_id(counts_path)
    if library_id is None:
        # An outs/ folder is named after nothing; its parent is named after the sample.
        library_id = (sample_dir.parent if sample_dir.name == OUTS_DIR else sample_dir).resolve().name
    adata.obs[LIBRARY_ID_KEY] = pd.Categorical([library_id] * adata.n_obs)
    images = {source: load_rgb_image(image_path) for source, image_path in image_paths.items()}

    fullres_path = Path(fullres_image).expanduser() if fullres_image is not None else _find_fullres_image(sample_dir)
    if fullres_path is not None:
        if not fullres_path.is_file():
            raise VisiumReadError(
                f"Full-resolution image {fullres_path} not found. Pass the path of the H&E image Space Ranger "
                "was run on.",
                path=fullres_path,
            )
        width, height = _check_fullres_size(fullres_path, hires=images.get("hires"), scalefactors=scalefactors)
        _warn_spots_outside(adata.obsm[SPATIAL_KEY], width=width, height=height, image_path=fullres_path)
        logger.info("Library %r: full-resolution image %s (%d x %d).", library_id, fullres_path, width, height)
    elif not images:
        logger.warning("%s has no tissue image: no full-resolution, hires or lowres file.", sample_dir)

    adata.uns[SPATIAL_KEY] = {
        library_id: {
            IMAGES_KEY: images,
            SCALEFACTORS_KEY: scalefactors,
            METADATA_KEY: {
                "source_dir": str(sample_dir),
                "fullres_path": str(fullres_path) if fullres_path is not None else None,
                "counts_file": str(counts_path),
                "positions_file": str(positions_path),
            },
        }
    }
    logger.info("Read %s: %d spots x %d genes, library %r.", sample_dir, adata.n_obs, adata.n_vars, library_id)
    return adata


def _warn_spots_outside(xy: np.ndarray, *, width: int, height: int, image_path: Path) -> None:
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    if outside.mean() > SPOTS_OUTSIDE_TOLERANCE:
        logger.warning(
            "%d of %d spot centres lie outside %s (%d x %d pixels); the image may not match the positions file.",
            int(outside.sum()),
            len(xy),
            image_path,
            width,
            height,
        )
