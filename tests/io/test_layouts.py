"""Every Space Ranger layout stdiff accepts returns the same spots at the same full-resolution pixels.

Each layout is written by ``_visium_writer`` with a coloured mark at every spot. The test reads it, checks
``obsm["spatial"]``, counts and genes, then crops a patch at each spot and checks that the spot's own colour is
at the patch centre, so swapped x and y, misassigned barcodes and wrong scale factors all fail.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from _visium_writer import (
    BARCODES,
    EXPECTED_VAR_NAMES,
    EXPECTED_XY,
    GENES,
    HEIGHT,
    HIRES_SCALEF,
    SPOTS,
    WIDTH,
    counts_matrix,
    make_slide,
    write_fullres,
    write_h5,
    write_positions,
    write_sample,
)
import stdiff.io.images as images_module
from stdiff.io import VisiumReadWarning, open_tissue_image, read_visium

PATCH_SIZE = 101  # full-resolution pixels; out_size is the same, so one patch pixel is one slide pixel
COLOUR_TOLERANCE = 40  # JPEG and Lanczos resampling shift the flat mark colours by less than this


@dataclass(frozen=True)
class Layout:
    write: Callable[[Path], Path]  # writes the layout under the given folder, returns the path to read
    library_id: str
    source: str  # image the patches come from: fullres, hires or lowres
    fullres_name: str | None = None  # file name of the full-resolution image found, when source is fullres
    warning: str | None = None  # regex of the VisiumReadWarning expected, or None for none


def _v1_h5_tiff(root: Path) -> Path:
    return write_sample(root / "s", positions="tissue_positions_list.csv", header=False)


def _v2_mtx_gz_tiled(root: Path) -> Path:
    return write_sample(root / "sample-mtx", counts="mtx-gz", fullres=("spatial/slide.tiff", "tiff-tiled"))


def _parquet_genes_tsv_bigtiff(root: Path) -> Path:
    return write_sample(root / "sample-parquet", counts="genes-tsv", positions="tissue_positions.parquet",
                        fullres=("image.tif", "bigtiff"))


def _prefixed_h5_ome_pyramid(root: Path) -> Path:
    sample = write_sample(root / "s", fullres=("spatial/GSM1_slide.ome.tif", "ome-pyramid"))
    (sample / "filtered_feature_bc_matrix.h5").rename(sample / "GSM1_filtered_feature_bc_matrix.h5")
    return sample


def _raw_h5_only_jpeg(root: Path) -> Path:
    return write_sample(root / "s", counts="raw-h5", fullres=("tissue_fullres_image.jpg", "jpeg"))


def _png_fullres_in_outs(root: Path) -> Path:
    write_sample(root / "patient-3" / "outs", counts="mtx", fullres=("spatial/tissue_fullres_image.png", "png"))
    return root / "patient-3"


def _hires_symlinks(root: Path) -> Path:
    """Images linked from another folder, as in copies made with ``cp -s`` or shared scratch space."""
    sample = write_sample(root / "s", fullres=None)
    store = root / "image-store"
    store.mkdir()
    for name in ("tissue_hires_image.png", "tissue_lowres_image.png"):
        shutil.move(sample / "spatial" / name, store / name)
        (sample / "spatial" / name).symlink_to(store / name)
    return sample


def _lowres_only(root: Path) -> Path:
    return write_sample(root / "s", fullres=None, hires=False)


def _cytassist_only(root: Path) -> Path:
    """CytAssist run without a microscope image: spot pixels refer to cytassist_image.tiff."""
    return write_sample(root / "s", fullres=("spatial/cytassist_image.tiff", "tiff"))


def _cytassist_with_microscope(root: Path) -> Path:
    """CytAssist run with a microscope image: the smaller CytAssist image is another frame and is not used."""
    sample = write_sample(root / "s", fullres=("spatial/tissue_fullres_image.tif", "tiff-tiled"))
    small = Image.fromarray(make_slide()[::-1]).resize((WIDTH // 3, HEIGHT // 3))
    small.save(sample / "spatial" / "cytassist_image.tiff")
    return sample


def _jpeg_tiled_tiff(root: Path) -> Path:
    return write_sample(root / "s", fullres=("tissue_fullres_image.tif", "tiff-jpeg"))


def _list_name_with_header(root: Path) -> Path:
    """A 2.x table renamed to the 1.x name: the header is detected from its content."""
    return write_sample(root / "s", positions="tissue_positions_list.csv", header=True)


def _v2_name_without_header(root: Path) -> Path:
    return write_sample(root / "s", positions="tissue_positions.csv", header=False)


def _geo_prefixed_gzipped(root: Path) -> Path:
    """GEO style: every file prefixed with the sample accession, position table gzipped, JPEG named .tif."""
    sample = write_sample(root / "s", fullres=None, positions="GSM7_tissue_positions_list.csv.gz", header=False)
    for name in ("filtered_feature_bc_matrix.h5", "spatial/scalefactors_json.json",
                 "spatial/tissue_hires_image.png", "spatial/tissue_lowres_image.png"):
        path = sample / name
        path.rename(path.with_name(f"GSM7_{path.name}"))
    write_fullres(sample / "GSM7_slide.tif", "jpeg")
    return sample


LAYOUTS = {
    "v1-csv-h5-tiff": Layout(_v1_h5_tiff, "lib-h5", "fullres", "tissue_fullres_image.tif"),
    "v2-csv-mtx-gz-tiled-tiff": Layout(_v2_mtx_gz_tiled, "sample-mtx", "fullres", "slide.tiff"),
    "parquet-genes-tsv-bigtiff": Layout(_parquet_genes_tsv_bigtiff, "sample-parquet", "fullres", "image.tif"),
    "prefixed-h5-ome-pyramid": Layout(_prefixed_h5_ome_pyramid, "lib-h5", "fullres", "GSM1_slide.ome.tif"),
    "raw-h5-only-jpeg": Layout(_raw_h5_only_jpeg, "lib-h5", "fullres", "tissue_fullres_image.jpg"),
    "outs-mtx-png": Layout(_png_fullres_in_outs, "patient-3", "fullres", "tissue_fullres_image.png"),
    "hires-symlinks": Layout(_hires_symlinks, "lib-h5", "hires"),
    "lowres-only": Layout(_lowres_only, "lib-h5", "lowres", warning="only a lowres image"),
    "cytassist-only": Layout(_cytassist_only, "lib-h5", "fullres", "cytassist_image.tiff"),
    "cytassist-and-microscope": Layout(_cytassist_with_microscope, "lib-h5", "fullres", "tissue_fullres_image.tif"),
    "jpeg-tiled-tiff": Layout(_jpeg_tiled_tiff, "lib-h5", "fullres", "tissue_fullres_image.tif"),
    "list-name-with-header": Layout(_list_name_with_header, "lib-h5", "fullres", "tissue_fullres_image.tif"),
    "v2-name-without-header": Layout(_v2_name_without_header, "lib-h5", "fullres", "tissue_fullres_image.tif"),
    "geo-prefixed-gzipped": Layout(_geo_prefixed_gzipped, "lib-h5", "fullres", "GSM7_slide.tif"),
}


def _read(layout: Layout, path: Path):
    """Read ``path``; check that exactly the expected VisiumReadWarning (or none) is raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adata = read_visium(path)
        image = open_tissue_image(adata)
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, VisiumReadWarning)]
    if layout.warning is None:
        assert messages == []
    else:
        assert len(messages) == 1, messages
        assert layout.warning in messages[0]
        assert adata.uns["spatial"][layout.library_id]["metadata"]["warnings"] == messages
    return adata, image


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_reads_spots(name, tmp_path):
    layout = LAYOUTS[name]
    adata, image = _read(layout, layout.write(tmp_path))

    assert adata.obs_names.tolist() == BARCODES
    np.testing.assert_array_equal(adata.obsm["spatial"], EXPECTED_XY)
    np.testing.assert_array_equal(adata.obs["pxl_col_in_fullres"].to_numpy(), EXPECTED_XY[:, 0])
    np.testing.assert_array_equal(adata.obs["pxl_row_in_fullres"].to_numpy(), EXPECTED_XY[:, 1])
    assert adata.var_names.tolist() == EXPECTED_VAR_NAMES
    assert adata.var["gene_ids"].tolist() == [gene_id for gene_id, _ in GENES]
    np.testing.assert_array_equal(adata.X.toarray(), counts_matrix(len(BARCODES)))
    assert list(adata.uns["spatial"]) == [layout.library_id]
    assert (adata.obs["library_id"] == layout.library_id).all()

    assert image.source == layout.source
    assert image.width_fullres == WIDTH
    assert image.height_fullres == HEIGHT
    fullres_path = adata.uns["spatial"][layout.library_id]["metadata"]["fullres_path"]
    if layout.fullres_name is None:
        assert fullres_path is None
    else:
        assert Path(fullres_path).name == layout.fullres_name


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_marks_at_spot_centres(name, tmp_path):
    layout = LAYOUTS[name]
    adata, image = _read(layout, layout.write(tmp_path))
    patches = image.crop_many(adata.obsm["spatial"], size=PATCH_SIZE, out_size=PATCH_SIZE)
    swapped = image.crop_many(adata.obsm["spatial"][:, ::-1], size=PATCH_SIZE, out_size=PATCH_SIZE)

    centre = PATCH_SIZE // 2
    for (barcode, _, colour), patch, swapped_patch in zip(SPOTS, patches, swapped):
        middle = patch[centre - 5 : centre + 6, centre - 5 : centre + 6].reshape(-1, 3).mean(axis=0)
        assert np.abs(middle - colour).max() < COLOUR_TOLERANCE, (barcode, middle, colour)
        # The 41-pixel mark fills the patch centre and ends 20 pixels either side of it.
        matches = (np.abs(patch.astype(int) - colour).max(axis=2) < COLOUR_TOLERANCE)
        rows, cols = np.nonzero(matches)
        assert abs(cols.mean() - centre) <= 1.5, barcode
        assert abs(rows.mean() - centre) <= 1.5, barcode
        swapped_middle = swapped_patch[centre - 5 : centre + 6, centre - 5 : centre + 6].reshape(-1, 3).mean(axis=0)
        assert np.abs(swapped_middle - colour).max() >= COLOUR_TOLERANCE, f"{barcode} found at (y, x)"


def test_tiff_read_lazily(tmp_path):
    """A tiled TIFF is not decoded whole: cropping one patch reads only the tiles under it."""
    sample = write_sample(tmp_path / "s", fullres=("slide.tif", "tiff-tiled"))
    image = open_tissue_image(read_visium(sample))
    reader = image._reader

    image.crop(*SPOTS[0][1], size=PATCH_SIZE, out_size=32)

    assert isinstance(reader._pixels, images_module._TileCache)
    # The 101-pixel patch around (150, 100) lies in the first tile; the slide has 5 x 4 tiles of 256 pixels.
    assert list(reader._pixels._tiles) == [0]


def test_hires_fullres_scale(tmp_path):
    sample = write_sample(tmp_path / "s", fullres=None)
    image = open_tissue_image(read_visium(sample))

    assert image.source == "hires"
    assert image.scale == HIRES_SCALEF


def test_h5_and_mtx_identical(tmp_path):
    from_h5 = read_visium(write_sample(tmp_path / "h5", fullres=None), library_id="lib")
    from_mtx = read_visium(write_sample(tmp_path / "mtx", counts="mtx-gz", fullres=None), library_id="lib")

    assert from_h5.obs_names.tolist() == from_mtx.obs_names.tolist()
    assert from_h5.var_names.tolist() == from_mtx.var_names.tolist()
    assert from_h5.var["gene_ids"].tolist() == from_mtx.var["gene_ids"].tolist()
    assert (from_h5.X != from_mtx.X).nnz == 0


def test_filtered_matrix_preferred_over_raw(tmp_path):
    sample = write_sample(tmp_path / "s", fullres=None)
    write_h5(sample / "raw_feature_bc_matrix.h5", raw=True, library_id="raw-lib")

    adata = read_visium(sample)

    assert Path(adata.uns["spatial"]["lib-h5"]["metadata"]["counts_file"]).name == "filtered_feature_bc_matrix.h5"


def test_positions_v2_preferred_over_v1(tmp_path):
    sample = write_sample(tmp_path / "s", fullres=None)
    stale = write_positions(sample / "spatial" / "tissue_positions_list.csv", header=False)
    stale.write_text(stale.read_text().replace("AAAC", "TTTG"))

    adata = read_visium(sample)

    assert Path(adata.uns["spatial"]["lib-h5"]["metadata"]["positions_file"]).name == "tissue_positions.csv"
    assert adata.obs_names.tolist() == BARCODES
