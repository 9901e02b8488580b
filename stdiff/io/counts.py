"""Readers for the filtered count matrix of a Space Ranger sample (10x h5 or Matrix Market trio)."""

from __future__ import annotations

import gzip
import logging
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from stdiff.constants import (
    FILTERED_H5,
    FILTERED_MTX_DIR,
    GENE_EXPRESSION_FEATURE_TYPE,
    GENE_IDS_KEY,
    H5_LIBRARY_IDS_ATTR,
    MTX_BARCODES,
    MTX_FEATURES,
    MTX_GENES,
    MTX_MATRIX,
    RAW_H5,
    RAW_MTX_DIR,
)
from stdiff.io.errors import VisiumReadError
from stdiff.io.files import find_named, has_space_ranger_name

logger = logging.getLogger(__name__)

FEATURE_TYPES_KEY = "feature_types"


def find_counts_file(sample_dir: Path) -> Path | None:
    """Return the count matrix of a sample, or None when there is none.

    Searched in this order, each also with a prefix such as ``GSM5000001_`` (see :func:`find_named`):
    ``filtered_feature_bc_matrix.h5``, ``filtered_feature_bc_matrix/``, ``raw_feature_bc_matrix.h5``,
    ``raw_feature_bc_matrix/``. A raw matrix lists every spot of the capture area; the reader keeps the spots
    that the position table marks as in tissue, which is how Space Ranger filters it.
    """
    for name, directory in ((FILTERED_H5, False), (FILTERED_MTX_DIR, True), (RAW_H5, False), (RAW_MTX_DIR, True)):
        found = find_named(sample_dir, name, directory=directory)
        if found is not None:
            return found
    return None


def is_raw_matrix(counts_path: Path) -> bool:
    """Return True when ``counts_path`` is a raw (unfiltered) Space Ranger matrix, judged by its name."""
    return has_space_ranger_name(counts_path, RAW_H5) or has_space_ranger_name(counts_path, RAW_MTX_DIR)


def read_counts(counts_path: Path) -> ad.AnnData:
    """Read a filtered count matrix as AnnData with CSR float32 counts.

    Parameters
    ----------
    counts_path
        ``filtered_feature_bc_matrix.h5`` or the ``filtered_feature_bc_matrix/`` folder.

    Returns
    -------
    AnnData with barcodes as ``obs_names``, unique gene symbols as ``var_names`` and the feature id in
    ``var["gene_ids"]`` (the symbol when the features file has a single column). Only features of type
    "Gene Expression" are kept when feature types are listed, as ``scanpy.read_10x_h5`` does.
    """
    if counts_path.is_dir():
        adata = _read_mtx(counts_path)
    else:
        adata = _read_h5(counts_path)
    _check_not_empty(adata, counts_path=counts_path)
    adata.var_names_make_unique()
    if not sp.isspmatrix_csr(adata.X) or adata.X.dtype != np.float32:
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return adata


def _check_not_empty(adata: ad.AnnData, *, counts_path: Path) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise VisiumReadError(
            f"{counts_path} contains {adata.n_obs} barcodes x {adata.n_vars} gene expression features; expected "
            "at least one of each. The file is empty or was written without gene expression data; copy the "
            "filtered feature-barcode matrix from the Space Ranger output again.",
            path=counts_path,
        )
    nonzero = adata.X.nnz if sp.issparse(adata.X) else int(np.count_nonzero(adata.X))
    if nonzero == 0:
        raise VisiumReadError(
            f"{counts_path} contains {adata.n_obs} barcodes x {adata.n_vars} genes but every count is zero. "
            "Expected UMI counts; copy the feature-barcode matrix from the Space Ranger output again.",
            path=counts_path,
        )


def read_h5_library_id(h5_path: Path) -> str | None:
    """Return the first entry of the h5 attribute ``library_ids``, or None when it is absent."""
    try:
        with h5py.File(h5_path, "r") as h5:
            library_ids = h5.attrs.get(H5_LIBRARY_IDS_ATTR)
    except OSError as error:
        raise VisiumReadError(
            f"Could not open {h5_path} as an HDF5 file ({error}). Expected a 10x Genomics feature-barcode "
            "matrix written by Space Ranger; replace the file or remove it so the mtx folder is read.",
            path=h5_path,
        ) from error
    if library_ids is None:
        return None
    values = [value.decode() if isinstance(value, bytes) else str(value) for value in np.ravel(library_ids)]
    if not values:
        return None
    if len(values) > 1:
        logger.warning("%s lists %d library ids %s; using the first.", h5_path, len(values), values)
    return values[0]


def _read_h5(h5_path: Path) -> ad.AnnData:
    import scanpy as sc  # imported here because scanpy takes seconds to import

    try:
        with warnings.catch_warnings():
            # Gene symbols repeat in real data; read_counts makes them unique right after.
            warnings.filterwarnings("ignore", message="Variable names are not unique")
            return sc.read_10x_h5(h5_path)
    except (OSError, KeyError, ValueError) as error:
        raise VisiumReadError(
            f"Could not read {h5_path} as a 10x Genomics feature-barcode matrix: {type(error).__name__}: "
            f"{error}. Expected the filtered_feature_bc_matrix.h5 that Space Ranger writes; replace it, or "
            f"remove it so the {FILTERED_MTX_DIR}/ folder is read instead.",
            path=h5_path,
        ) from error


def _find_mtx_file(mtx_dir: Path, *names: str) -> Path:
    for name in names:
        for candidate in (mtx_dir / f"{name}.gz", mtx_dir / name):
            if candidate.is_file():
                return candidate
    expected = " or ".join(f"{name}[.gz]" for name in names)
    found = sorted(child.name for child in mtx_dir.iterdir())
    raise VisiumReadError(
        f"Missing {expected} in {mtx_dir}; found {found}. A Space Ranger matrix folder contains matrix.mtx.gz, "
        "barcodes.tsv.gz and features.tsv.gz (or genes.tsv); copy the missing file from the Space Ranger "
        "output.",
        path=mtx_dir,
    )


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, compression="infer")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise VisiumReadError(
            f"Could not read {path} as a tab-separated table: {error}. Expected one row per barcode or "
            "feature, as Space Ranger writes it.",
            path=path,
        ) from error
    return table


def _read_mtx(mtx_dir: Path) -> ad.AnnData:
    matrix_path = _find_mtx_file(mtx_dir, MTX_MATRIX)
    barcodes_path = _find_mtx_file(mtx_dir, MTX_BARCODES)
    features_path = _find_mtx_file(mtx_dir, MTX_FEATURES, MTX_GENES)

    try:
        opener = gzip.open if matrix_path.suffix == ".gz" else open
        with opener(matrix_path, "rb") as handle:
            # The Matrix Market file stores features x barcodes.
            matrix = scipy.io.mmread(handle)
    except (OSError, ValueError, EOFError) as error:
        raise VisiumReadError(
            f"Could not read {matrix_path} as a Matrix Market file: {error}. Expected the sparse "
            "features x barcodes count matrix written by Space Ranger.",
            path=matrix_path,
        ) from error
    counts = sp.csr_matrix(sp.coo_matrix(matrix).T, dtype=np.float32)

    barcodes = _read_tsv(barcodes_path).iloc[:, 0].to_numpy()
    features = _read_tsv(features_path)
    if counts.shape != (len(barcodes), len(features)):
        raise VisiumReadError(
            f"{matrix_path} has {counts.shape[1]} features x {counts.shape[0]} barcodes, but {features_path} "
            f"lists {len(features)} features and {barcodes_path} lists {len(barcodes)} barcodes. The three "
            "files must come from the same Space Ranger run.",
            path=mtx_dir,
        )

    gene_ids = features.iloc[:, 0].to_numpy()
    symbols = features.iloc[:, 1].to_numpy() if features.shape[1] > 1 else gene_ids
    var = pd.DataFrame({GENE_IDS_KEY: gene_ids}, index=pd.Index(symbols, name=None))
    if features.shape[1] > 2:
        var[FEATURE_TYPES_KEY] = features.iloc[:, 2].to_numpy()
    obs = pd.DataFrame(index=pd.Index(barcodes, name=None))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        adata = ad.AnnData(X=counts, obs=obs, var=var)
        if FEATURE_TYPES_KEY in adata.var:
            adata = adata[:, adata.var[FEATURE_TYPES_KEY] == GENE_EXPRESSION_FEATURE_TYPE].copy()
    return adata
