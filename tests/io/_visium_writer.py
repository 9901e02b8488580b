"""Writers for small Space Ranger folders in every layout stdiff reads, with coloured marks at known spots.

The full-resolution slide is WIDTH x HEIGHT grey pixels with one coloured square per in-tissue spot, centred on
the spot's (x, y) = (pxl_col_in_fullres, pxl_row_in_fullres). A reader that swaps x and y, misassigns barcodes
or misreads a scale factor crops a patch without that spot's colour at its centre.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
import tifffile
from PIL import Image

from stdiff.constants import POSITION_COLUMNS

WIDTH, HEIGHT = 1200, 900
GREY = 128
MARK_HALF = 20  # marks span 41 x 41 full-resolution pixels, 8 pixels even in the lowres image
HIRES_SCALEF = 0.5
LOWRES_SCALEF = 0.2
SPOT_DIAMETER = 60.0

# In-tissue spots in matrix order: barcode, (x, y) in full-resolution pixels, mark colour. No spot sits at another
# spot's (y, x), so swapped coordinates miss every mark.
SPOTS = [
    ("AAACAAGTATCTCCCA-1", (150, 100), (230, 30, 30)),
    ("AAACAATCTACTAGCA-1", (900, 220), (30, 200, 30)),
    ("AAACACCAATAACTGC-1", (400, 700), (30, 30, 230)),
    ("AAACAGAGCGACTCCT-1", (1050, 800), (230, 220, 30)),
    ("AAACAGCTTTCAGAAG-1", (620, 450), (220, 30, 220)),
    ("AAACAGGGTCTATATT-1", (260, 520), (30, 220, 220)),
]
OUT_OF_TISSUE = ("AAACATTTCCCGGATT-1", (1150, 40))  # listed in positions and raw matrices, in_tissue = 0
BARCODES = [barcode for barcode, _, _ in SPOTS]
# Gene symbols repeat ("GeneA"), as in real annotations; ids are unique.
GENES = [("ENSG0001", "GeneA"), ("ENSG0002", "GeneB"), ("ENSG0003", "GeneA"), ("ENSG0004", "GeneC")]
EXPECTED_VAR_NAMES = ["GeneA", "GeneB", "GeneA-1", "GeneC"]
EXPECTED_XY = np.array([xy for _, xy, _ in SPOTS], dtype=np.float64)


def counts_matrix(n_barcodes: int) -> np.ndarray:
    """Return the barcodes x genes integer counts written for the first ``n_barcodes`` barcodes."""
    return (np.arange(n_barcodes * len(GENES)).reshape(n_barcodes, len(GENES)) % 7 + 1).astype(np.int64)


def make_slide() -> np.ndarray:
    """Return the full-resolution slide as uint8 (HEIGHT, WIDTH, 3)."""
    slide = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)
    for _, (x, y), colour in SPOTS:
        slide[y - MARK_HALF : y + MARK_HALF + 1, x - MARK_HALF : x + MARK_HALF + 1] = colour
    return slide


def scaled_slide(scale: float) -> np.ndarray:
    size = (round(WIDTH * scale), round(HEIGHT * scale))
    return np.asarray(Image.fromarray(make_slide()).resize(size, Image.Resampling.BOX))


# Counts


def _matrix_barcodes(raw: bool) -> list[str]:
    return BARCODES + [OUT_OF_TISSUE[0]] if raw else list(BARCODES)


def write_h5(path: Path, *, raw: bool = False, library_id: str | None = "lib-h5", barcodes: list[str] | None = None,
             counts: np.ndarray | None = None) -> Path:
    """Write a 10x Genomics HDF5 feature-barcode matrix (Space Ranger 1.x+ layout)."""
    barcodes = _matrix_barcodes(raw) if barcodes is None else barcodes
    counts = counts_matrix(len(barcodes)) if counts is None else counts
    matrix = sp.csc_matrix(counts.T)  # features x barcodes, compressed by barcode
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        if library_id is not None:
            h5.attrs["library_ids"] = np.array([library_id.encode()])
        group = h5.create_group("matrix")
        group["barcodes"] = np.array([barcode.encode() for barcode in barcodes])
        group["data"] = matrix.data.astype(np.int32)
        group["indices"] = matrix.indices.astype(np.int64)
        group["indptr"] = matrix.indptr.astype(np.int64)
        group["shape"] = np.array(matrix.shape, dtype=np.int32)
        features = group.create_group("features")
        features["id"] = np.array([gene_id.encode() for gene_id, _ in GENES])
        features["name"] = np.array([name.encode() for _, name in GENES])
        features["feature_type"] = np.array([b"Gene Expression"] * len(GENES))
        features["genome"] = np.array([b"GRCh38"] * len(GENES))
        features["_all_tag_keys"] = np.array([b"genome"])
    return path


def write_mtx(folder: Path, *, gzipped: bool = True, genes_tsv: bool = False, raw: bool = False) -> Path:
    """Write a Matrix Market trio: features.tsv (3 columns) or, for Cell Ranger 2 style, genes.tsv (2)."""
    barcodes = _matrix_barcodes(raw)
    folder.mkdir(parents=True)
    opener = gzip.open if gzipped else open
    suffix = ".gz" if gzipped else ""
    with opener(folder / f"matrix.mtx{suffix}", "wb") as handle:
        scipy.io.mmwrite(handle, sp.coo_matrix(counts_matrix(len(barcodes)).T))
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as handle:
        handle.write("".join(f"{barcode}\n" for barcode in barcodes))
    features_name = "genes.tsv" if genes_tsv else "features.tsv"
    with opener(folder / f"{features_name}{suffix}", "wt") as handle:
        for gene_id, name in GENES:
            handle.write(f"{gene_id}\t{name}\n" if genes_tsv else f"{gene_id}\t{name}\tGene Expression\n")
    return folder


# Positions


def positions_table() -> pd.DataFrame:
    """Return every spot (in tissue and not) with Space Ranger's columns; x is the pixel column."""
    rows = []
    for index, (barcode, (x, y), _) in enumerate(SPOTS):
        rows.append((barcode, 1, index, 2 * index, float(y), float(x)))
    barcode, (x, y) = OUT_OF_TISSUE
    rows.append((barcode, 0, 10, 20, float(y), float(x)))
    return pd.DataFrame(rows, columns=list(POSITION_COLUMNS))


def write_positions(path: Path, *, header: bool) -> Path:
    """Write the position table as CSV (with or without a header, gzipped when ``path`` ends in .gz) or Parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = positions_table()
    if path.suffix == ".parquet":
        table.to_parquet(path)
    else:
        table.to_csv(path, index=False, header=header)
    return path


# Images and scalefactors


def write_scalefactors(spatial_dir: Path, **changes) -> Path:
    scalefactors = {
        "tissue_hires_scalef": HIRES_SCALEF,
        "tissue_lowres_scalef": LOWRES_SCALEF,
        "spot_diameter_fullres": SPOT_DIAMETER,
        "fiducial_diameter_fullres": 90.0,
    }
    scalefactors.update(changes)
    scalefactors = {key: value for key, value in scalefactors.items() if value is not None}
    path = spatial_dir / "scalefactors_json.json"
    path.write_text(json.dumps(scalefactors))
    return path


def write_scaled_images(spatial_dir: Path, *, hires: bool = True, lowres: bool = True) -> None:
    if hires:
        Image.fromarray(scaled_slide(HIRES_SCALEF)).save(spatial_dir / "tissue_hires_image.png")
    if lowres:
        Image.fromarray(scaled_slide(LOWRES_SCALEF)).save(spatial_dir / "tissue_lowres_image.png")


def write_fullres(path: Path, fmt: str) -> Path:
    """Write the slide as ``fmt``: png, jpeg, tiff, tiff-tiled, tiff-jpeg, bigtiff or ome-pyramid."""
    slide = make_slide()
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "tiff":
        tifffile.imwrite(path, slide, photometric="rgb")
    elif fmt == "tiff-tiled":
        tifffile.imwrite(path, slide, photometric="rgb", tile=(256, 256), compression="zlib")
    elif fmt == "tiff-jpeg":
        # Tiled and JPEG-compressed, as slide scanners write them; encoding and decoding need imagecodecs.
        tifffile.imwrite(path, slide, photometric="rgb", tile=(256, 256), compression="jpeg")
    elif fmt == "bigtiff":
        tifffile.imwrite(path, slide, photometric="rgb", bigtiff=True, tile=(128, 128))
    elif fmt == "ome-pyramid":
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
            options = {"photometric": "rgb", "tile": (256, 256), "compression": "zlib"}
            tif.write(slide, subifds=2, metadata={"axes": "YXS"}, **options)
            tif.write(slide[::2, ::2], subfiletype=1, **options)
            tif.write(slide[::4, ::4], subfiletype=1, **options)
    elif fmt == "jpeg":
        Image.fromarray(slide).save(path, format="JPEG", quality=95)
    elif fmt == "png":
        Image.fromarray(slide).save(path, format="PNG")
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return path


def write_sample(folder: Path, *, counts: str = "h5", positions: str = "tissue_positions.csv",
                 header: bool = True, fullres: tuple[str, str] | None = ("tissue_fullres_image.tif", "tiff"),
                 hires: bool = True, lowres: bool = True, library_id: str | None = "lib-h5") -> Path:
    """Write a Space Ranger sample folder.

    ``counts`` is "h5", "raw-h5", "mtx-gz", "mtx" or "genes-tsv"; ``positions`` the position file name (inside
    spatial/); ``fullres`` (file name relative to ``folder``, format) or None.
    """
    spatial_dir = folder / "spatial"
    spatial_dir.mkdir(parents=True)
    if counts == "h5":
        write_h5(folder / "filtered_feature_bc_matrix.h5", library_id=library_id)
    elif counts == "raw-h5":
        write_h5(folder / "raw_feature_bc_matrix.h5", raw=True, library_id=library_id)
    else:
        write_mtx(folder / "filtered_feature_bc_matrix", gzipped=counts == "mtx-gz", genes_tsv=counts == "genes-tsv")
    write_positions(spatial_dir / positions, header=header)
    write_scalefactors(spatial_dir)
    write_scaled_images(spatial_dir, hires=hires, lowres=lowres)
    if fullres is not None:
        write_fullres(folder / fullres[0], fullres[1])
    return folder
