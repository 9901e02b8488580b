"""Reading several Space Ranger samples at once, each under its own library id."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import anndata as ad
import pandas as pd

from stdiff.constants import LIBRARY_ID_KEY, OUTS_DIR, SPATIAL_KEY
from stdiff.io.errors import VisiumReadError, warn
from stdiff.io.visium import is_sample_dir, list_samples, read_visium

logger = logging.getLogger(__name__)

ERROR_POLICIES = ("raise", "warn")


def _sample_name(sample_dir: Path) -> str:
    sample_dir = sample_dir.resolve()
    return sample_dir.parent.name if sample_dir.name == OUTS_DIR else sample_dir.name


def _sample_dirs(paths_or_folder: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths_or_folder, (str, Path)):
        folder = Path(paths_or_folder).expanduser()
        if is_sample_dir(folder):
            return [folder]
        samples = list_samples(folder)
        if not samples:
            found = sorted(child.name for child in folder.iterdir())[:20]
            raise VisiumReadError(
                f"No Space Ranger sample in {folder}; found {found}. Each sample needs its own folder (or outs/ "
                "folder) with spatial/ and a count matrix such as filtered_feature_bc_matrix.h5.",
                path=folder,
            )
        return samples
    return [Path(path).expanduser() for path in paths_or_folder]


def _set_library_id(adata: ad.AnnData, new_id: str) -> None:
    """Move ``uns["spatial"]`` and ``obs["library_id"]`` of a single-library AnnData to ``new_id``."""
    (old_id,) = adata.uns[SPATIAL_KEY]
    adata.uns[SPATIAL_KEY] = {new_id: adata.uns[SPATIAL_KEY][old_id]}
    adata.obs[LIBRARY_ID_KEY] = pd.Categorical([new_id] * adata.n_obs)


def read_samples(
    paths_or_folder: str | Path | Iterable[str | Path],
    *,
    errors: str = "raise",
) -> dict[str, ad.AnnData]:
    """Read several Space Ranger samples, each into its own AnnData with its own images and scalefactors.

    Parameters
    ----------
    paths_or_folder
        A folder of sample folders (as :func:`stdiff.io.list_samples` finds them), a single sample folder, or
        a list of sample folders.
    errors
        "raise" stops at the first unreadable sample. "warn" skips it with a
        :class:`stdiff.io.VisiumReadWarning` that carries the error message.

    Returns
    -------
    dict mapping each library id to the AnnData that :func:`stdiff.io.read_visium` returns for it, in sample
    order. When two samples have the same library id (a copied sample, or two runs of one library), each of
    them is keyed by its folder name instead, with a warning.

    Raises
    ------
    VisiumReadError
        When a sample cannot be read (with ``errors="raise"``), when no sample is found, or when two samples
        still share a key after renaming.
    ValueError
        When ``errors`` is not "raise" or "warn".
    """
    if errors not in ERROR_POLICIES:
        raise ValueError(f"errors must be one of {ERROR_POLICIES}; got {errors!r}.")
    sample_dirs = _sample_dirs(paths_or_folder)

    read: list[tuple[Path, ad.AnnData]] = []
    for sample_dir in sample_dirs:
        try:
            read.append((sample_dir, read_visium(sample_dir)))
        except VisiumReadError as error:
            if errors == "raise":
                raise
            warn(f"Skipping sample {sample_dir}: {error}", notes=None)

    library_ids = [next(iter(adata.uns[SPATIAL_KEY])) for _, adata in read]
    samples: dict[str, ad.AnnData] = {}
    for (sample_dir, adata), library_id in zip(read, library_ids):
        if library_ids.count(library_id) > 1:
            new_id = _sample_name(sample_dir)
            warn(
                f"Library id {library_id!r} of {sample_dir} is shared with another sample; keying it by its folder "
                f"name {new_id!r} instead.",
                notes=adata.uns[SPATIAL_KEY][library_id]["metadata"]["warnings"],
            )
            _set_library_id(adata, new_id)
            library_id = new_id
        if library_id in samples:
            raise VisiumReadError(
                f"Two samples have the library id {library_id!r}, the second in {sample_dir}. Rename one sample "
                "folder so that every sample has its own name.",
                path=sample_dir,
            )
        samples[library_id] = adata
    logger.info("Read %d of %d samples: %s", len(samples), len(sample_dirs), list(samples))
    return samples
