"""Reader for Space Ranger (10x Visium) output folders."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import anndata as ad
import pandas as pd

from stdiff.constants import (
    FILTERED_H5,
    FILTERED_MTX_DIR,
    IMAGES_KEY,
    LIBRARY_ID_KEY,
    METADATA_KEY,
    OUTS_DIR,
    POSITIONS_PARQUET,
    POSITIONS_V1,
    POSITIONS_V2,
    RAW_H5,
    SCALEFACTORS_JSON,
    SCALEFACTORS_KEY,
    SPATIAL_DIR,
    SPATIAL_KEY,
    SPOT_DIAMETER_FULLRES,
)
from stdiff.io.counts import find_counts_file, is_raw_matrix, read_counts, read_h5_library_id
from stdiff.io.errors import VisiumReadError, warn
from stdiff.io.files import find_named
from stdiff.io.geo import flat_folder_hint
from stdiff.io.images import broken_link_note, load_rgb_image
from stdiff.io.positions import find_positions_file, fullres_xy, read_positions
from stdiff.io.sample_images import (
    SCALEF_KEYS,
    check_fullres_size,
    check_scaled_images,
    find_cytassist_fullres,
    find_fullres_image,
    find_scaled_images,
    implied_fullres_sizes,
    warn_spots_outside,
)

logger = logging.getLogger(__name__)

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
        f"{FILTERED_MTX_DIR}/.{flat_folder_hint(path)}",
        path=path,
    )


def is_sample_dir(path: Path) -> bool:
    """Return True when ``path`` or ``path/outs`` contains ``spatial/`` and a count matrix."""
    for candidate in (path, path / OUTS_DIR):
        if not (candidate / SPATIAL_DIR).is_dir():
            continue
        try:
            if find_counts_file(candidate) is not None:
                return True
        except VisiumReadError:
            return True  # several matrices or a broken link: a sample, whose reading reports the problem
    return False


def list_samples(data_dir: str | Path) -> list[Path]:
    """List the Space Ranger sample folders directly under ``data_dir``, sorted by name.

    A folder counts as a sample when it, or its ``outs/`` subfolder, contains a ``spatial/`` folder and a
    count matrix (see :func:`read_visium`). Other entries are skipped with a debug log message.

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
        if is_sample_dir(child):
            samples.append(child)
        else:
            logger.debug("Skipping %s: no %s/ folder with a filtered count matrix next to it.", child, SPATIAL_DIR)
    return samples


def _read_scalefactors(spatial_dir: Path, *, required: list[str]) -> tuple[dict, Path]:
    path = find_named(spatial_dir, SCALEFACTORS_JSON)
    if path is None:
        path = spatial_dir / SCALEFACTORS_JSON
        raise VisiumReadError(
            f"Missing {path}. Space Ranger writes {SCALEFACTORS_JSON} into {SPATIAL_DIR}/ with "
            f"{', '.join(required)}; copy it from the Space Ranger output.",
            path=path,
        )
    try:
        scalefactors = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise VisiumReadError(
            f"Could not parse {path} as JSON: {error}. Expected a JSON object with {', '.join(required)}; copy "
            "the file again from the Space Ranger output.",
            path=path,
        ) from error
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
                f"{path} has {key} = {value!r}; expected a positive number. Restore the file from the Space "
                "Ranger output.",
                path=path,
            )
    return scalefactors, path


def _strip_suffix(barcodes: pd.Index) -> pd.Index:
    return barcodes.str.replace(r"-\d+$", "", regex=True)


def _suffix_hint(matrix_barcodes: pd.Index, position_barcodes: pd.Index) -> str:
    """Return a sentence naming the fix when the barcodes differ only by their '-1' style suffix, else ""."""
    if _strip_suffix(matrix_barcodes).isin(_strip_suffix(position_barcodes)).all():
        return (
            " Without their '-N' suffix all matrix barcodes do match: one file was edited or comes from another "
            "tool. Add or remove the suffix in one file so both spell barcodes the same way."
        )
    return ""


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
            f"exactly, including any '-1' suffix.{_suffix_hint(counts.obs_names, positions.index)}",
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

    Accepted layouts, inside ``path`` or ``path/outs`` (Space Ranger 1.x to 3.x). Every Space Ranger file
    name below is also found with a prefix such as ``GSM5000001_``, as GEO downloads name them, and through
    symbolic links:

    - counts, in this order of preference: ``filtered_feature_bc_matrix.h5`` (read with
      ``scanpy.read_10x_h5``), ``filtered_feature_bc_matrix/`` with ``matrix.mtx``, ``barcodes.tsv`` and
      ``features.tsv`` or ``genes.tsv`` (each plain or gzipped), then the raw matrix
      ``raw_feature_bc_matrix.h5`` or ``raw_feature_bc_matrix/``, of which only spots in tissue are kept;
    - positions: ``spatial/tissue_positions.csv`` (2.x and 3.x, header), ``spatial/tissue_positions_list.csv``
      (1.x, no header), either also gzipped, or ``spatial/tissue_positions.parquet``; a CSV header is detected
      from the content of the first row, so no spot is lost whatever the file is named;
    - ``spatial/scalefactors_json.json`` and any of ``tissue_hires_image.png``, ``tissue_lowres_image.png``;
    - full-resolution image: ``fullres_image``, else a file in ``spatial/`` or the sample folder whose name
      contains "fullres" or ends in .tif, .tiff, .jpg or .jpeg (Space Ranger's quality-control images are
      skipped), else ``spatial/cytassist_image.tiff`` when its size matches the full-resolution size that the
      hires or lowres image implies. TIFF files (also BigTIFF and pyramidal OME-TIFF, whose level 0 is used)
      are recognised by content. Only the image header is read here; :func:`stdiff.io.open_tissue_image`
      decodes it, lazily for TIFF files.

    Problems that still allow reading (only a lowres image, spots outside the image, images that disagree with
    the scalefactors, several image candidates) raise a :class:`stdiff.io.VisiumReadWarning` and are listed
    in ``metadata["warnings"]``.

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

    - ``X``: counts, CSR float32; ``obs_names``: barcodes; ``var_names``: unique gene symbols (repeats get
      "-1", "-2" appended);
    - ``var["gene_ids"]``: feature ids (the symbol when the features file has no id); ``var["feature_types"]``
      when listed (only "Gene Expression" features are kept);
    - ``obs``: ``in_tissue``, ``array_row``, ``array_col``, ``pxl_row_in_fullres``, ``pxl_col_in_fullres``,
      ``library_id`` (categorical);
    - ``obsm["spatial"]``: float64 (n_spots, 2) full-resolution (x, y) = (pxl_col_in_fullres,
      pxl_row_in_fullres);
    - ``uns["spatial"][library_id]``: ``images`` (``hires`` and/or ``lowres`` as uint8 (height, width, 3)),
      ``scalefactors`` (the JSON file as a dict), ``metadata`` (``source_dir``, ``fullres_path`` or None,
      ``counts_file``, ``positions_file``, ``warnings``: the list of warning messages).

    Raises
    ------
    VisiumReadError
        When a file is missing, empty or malformed, or a matrix barcode has no position. The message names the
        file, what was found and what to do.
    """
    source_path = Path(path).expanduser()
    if not source_path.is_dir():
        raise VisiumReadError(
            f"Sample folder {source_path} not found{broken_link_note(source_path)}. Pass a Space Ranger outs "
            "folder.",
            path=source_path,
        )
    sample_dir = _resolve_sample_dir(source_path)
    spatial_dir = sample_dir / SPATIAL_DIR
    notes: list[str] = []

    # 1. Locate the files.
    counts_path = find_counts_file(sample_dir)
    if counts_path is None:
        found = sorted(child.name for child in sample_dir.iterdir())[:20]
        raise VisiumReadError(
            f"No count matrix in {sample_dir}; found {found}. Expected {FILTERED_H5}, a {FILTERED_MTX_DIR}/ "
            f"folder or, failing those, {RAW_H5}. Copy the feature-barcode matrix from the Space Ranger output.",
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
    image_paths = find_scaled_images(spatial_dir)
    required_scalefactors = [SPOT_DIAMETER_FULLRES, *(SCALEF_KEYS[source] for source in image_paths)]
    scalefactors, scalefactors_path = _read_scalefactors(spatial_dir, required=required_scalefactors)

    # 2. Counts and positions, matched by barcode.
    counts = read_counts(counts_path)
    positions = read_positions(positions_path, notes=notes)
    if is_raw_matrix(counts_path):
        logger.info("%s has no filtered matrix; keeping the spots of %s that are in tissue.", sample_dir,
                    counts_path.name)
    adata = _match_barcodes(counts, positions, counts_path=counts_path, positions_path=positions_path)
    if adata.n_obs == 0:
        raise VisiumReadError(
            f"None of the {counts.n_obs} spots in {counts_path} is in tissue according to {positions_path} "
            "(in_tissue is 0 for all of them). Check that the positions file belongs to this sample.",
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
    check_scaled_images(images, image_paths=image_paths, scalefactors=scalefactors,
                        scalefactors_path=scalefactors_path, notes=notes)
    implied_sizes = implied_fullres_sizes(images, scalefactors)

    fullres_path = _locate_fullres(fullres_image, sample_dir=sample_dir, implied_sizes=implied_sizes, notes=notes)
    xy = adata.obsm[SPATIAL_KEY]
    if fullres_path is not None:
        width, height = check_fullres_size(fullres_path, implied_sizes=implied_sizes, notes=notes)
        warn_spots_outside(xy, width=width, height=height, image_path=fullres_path, notes=notes)
        logger.info("Library %r: full-resolution image %s (%d x %d).", library_id, fullres_path, width, height)
    elif implied_sizes:
        source, (width, height) = next(iter(implied_sizes.items()))
        warn_spots_outside(xy, width=width, height=height, image_path=image_paths[source], notes=notes)
    if fullres_path is None and "hires" not in images:
        _warn_missing_sharp_image(sample_dir, has_lowres="lowres" in images, notes=notes)

    adata.uns[SPATIAL_KEY] = {
        library_id: {
            IMAGES_KEY: images,
            SCALEFACTORS_KEY: scalefactors,
            METADATA_KEY: {
                "source_dir": str(sample_dir),
                "fullres_path": str(fullres_path) if fullres_path is not None else None,
                "counts_file": str(counts_path),
                "positions_file": str(positions_path),
                "warnings": notes,
            },
        }
    }
    logger.info("Read %s: %d spots x %d genes, library %r.", sample_dir, adata.n_obs, adata.n_vars, library_id)
    return adata


def _locate_fullres(fullres_image: str | Path | None, *, sample_dir: Path,
                    implied_sizes: dict[str, tuple[float, float]], notes: list[str]) -> Path | None:
    if fullres_image is not None:
        fullres_path = Path(fullres_image).expanduser()
        if not fullres_path.is_file():
            raise VisiumReadError(
                f"Full-resolution image {fullres_path} not found{broken_link_note(fullres_path)}. Pass the path of "
                "the H&E image Space Ranger was run on.",
                path=fullres_path,
            )
        return fullres_path
    fullres_path = find_fullres_image(sample_dir, notes=notes)
    if fullres_path is None:
        fullres_path = find_cytassist_fullres(sample_dir / SPATIAL_DIR, implied_sizes=implied_sizes)
    return fullres_path


def _warn_missing_sharp_image(sample_dir: Path, *, has_lowres: bool, notes: list[str]) -> None:
    if has_lowres:
        warn(
            f"{sample_dir} has only a lowres image (no full-resolution or hires image), so patches will be coarse: "
            "each is upsampled from a few lowres pixels. Add the full-resolution H&E image to the sample folder "
            "or pass fullres_image=.",
            notes=notes,
        )
    else:
        warn(
            f"{sample_dir} has no tissue image: no full-resolution, hires or lowres file. Expression can be read, "
            "but patches cannot be cut; add the H&E image or pass fullres_image=.",
            notes=notes,
        )
