"""Tests for stdiff.io.read_visium and list_samples on the real samples and on small folders written here."""

from __future__ import annotations

import csv
import functools
import gzip
import json
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from PIL import Image

from stdiff.constants import (
    FILTERED_H5,
    FILTERED_MTX_DIR,
    POSITION_COLUMNS,
    POSITIONS_PARQUET,
    POSITIONS_V1,
    POSITIONS_V2,
    SCALEFACTORS_JSON,
    SPATIAL_DIR,
)
from stdiff.io import VisiumReadError, list_samples, open_tissue_image, read_visium


@functools.cache
def read_cached(sample_dir: Path):
    """Read each real sample once per test session; tests must not modify the result."""
    return read_visium(sample_dir)


def _positions_file(sample_dir: Path) -> Path:
    for name in (POSITIONS_V2, POSITIONS_V1):
        if (sample_dir / SPATIAL_DIR / name).is_file():
            return sample_dir / SPATIAL_DIR / name
    raise AssertionError(f"no CSV position table in {sample_dir}")


def _position_rows(sample_dir: Path) -> dict[str, list[str]]:
    """Parse the position CSV with the csv module; Space Ranger writes a header only in tissue_positions.csv."""
    path = _positions_file(sample_dir)
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if path.name == POSITIONS_V2:
        rows = rows[1:]
    return {row[0]: row[1:] for row in rows}


def _matrix_barcodes(sample_dir: Path) -> list[str]:
    barcodes_path = sample_dir / FILTERED_MTX_DIR / "barcodes.tsv.gz"
    if barcodes_path.is_file():
        with gzip.open(barcodes_path, "rt") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    with h5py.File(sample_dir / FILTERED_H5, "r") as h5:
        return [barcode.decode() for barcode in h5["matrix/barcodes"][:]]


def _source_md_number(sample_dir: Path, pattern: str) -> int | None:
    source_md = sample_dir / "SOURCE.md"
    if not source_md.is_file():
        return None
    match = re.search(pattern, source_md.read_text())
    return int(match.group(1).replace(",", "")) if match else None


# Real samples


def test_list_samples_finds_real_samples(shared_data_dir):
    samples = list_samples(shared_data_dir)
    assert samples == sorted(samples)
    assert len(samples) >= 1
    for sample in samples:
        assert (sample / SPATIAL_DIR).is_dir() or (sample / "outs" / SPATIAL_DIR).is_dir()


def test_read_visium_spot_counts(shared_sample_dir):
    adata = read_cached(shared_sample_dir)
    positions = _position_rows(shared_sample_dir)
    matrix_barcodes = _matrix_barcodes(shared_sample_dir)
    expected = [barcode for barcode in matrix_barcodes if positions[barcode][0] == "1"]

    assert adata.obs_names.tolist() == expected
    documented_spots = _source_md_number(shared_sample_dir, r"Spots: ([\d,]+)")
    if documented_spots is not None:
        assert adata.n_obs == documented_spots
    documented_genes = _source_md_number(shared_sample_dir, r"Genes[^:]*: ([\d,]+)")
    if documented_genes is not None:
        assert adata.n_vars == documented_genes


def test_read_visium_slots(shared_sample_dir):
    adata = read_cached(shared_sample_dir)

    assert sp.isspmatrix_csr(adata.X)
    assert adata.X.dtype == np.float32
    assert adata.var_names.is_unique
    assert "gene_ids" in adata.var
    for column in (*POSITION_COLUMNS[1:], "library_id"):
        assert column in adata.obs
    assert (adata.obs["in_tissue"] == 1).all()

    library_ids = list(adata.uns["spatial"])
    assert len(library_ids) == 1
    with h5py.File(shared_sample_dir / FILTERED_H5, "r") as h5:
        assert library_ids[0] == h5.attrs["library_ids"][0].decode()
    assert (adata.obs["library_id"] == library_ids[0]).all()

    library = adata.uns["spatial"][library_ids[0]]
    metadata = library["metadata"]
    assert metadata["source_dir"] == str(shared_sample_dir)
    assert Path(metadata["positions_file"]) == _positions_file(shared_sample_dir)
    assert Path(metadata["counts_file"]).name == FILTERED_H5
    scalefactors = json.loads((shared_sample_dir / SPATIAL_DIR / SCALEFACTORS_JSON).read_text())
    assert library["scalefactors"] == scalefactors
    for image in library["images"].values():
        assert image.dtype == np.uint8
        assert image.ndim == 3
        assert image.shape[2] == 3


def test_read_visium_spatial_is_x_y(shared_sample_dir):
    adata = read_cached(shared_sample_dir)
    positions = _position_rows(shared_sample_dir)
    # Columns after the barcode: in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres.
    expected_x = np.array([float(positions[barcode][4]) for barcode in adata.obs_names])
    expected_y = np.array([float(positions[barcode][3]) for barcode in adata.obs_names])

    assert adata.obsm["spatial"].dtype == np.float64
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    np.testing.assert_array_equal(adata.obsm["spatial"][:, 0], expected_x)
    np.testing.assert_array_equal(adata.obsm["spatial"][:, 1], expected_y)


def test_read_visium_spots_inside_images(shared_sample_dir):
    adata = read_cached(shared_sample_dir)
    library = next(iter(adata.uns["spatial"].values()))
    xy = adata.obsm["spatial"]
    assert library["images"], "expected at least one of hires and lowres"
    for source, image in library["images"].items():
        scaled = xy * library["scalefactors"][f"tissue_{source}_scalef"]
        height, width = image.shape[:2]
        assert (scaled[:, 0] >= 0).all(), source
        assert (scaled[:, 0] < width).all(), source
        assert (scaled[:, 1] >= 0).all(), source
        assert (scaled[:, 1] < height).all(), source
    if library["metadata"]["fullres_path"] is not None:
        with Image.open(library["metadata"]["fullres_path"]) as fullres:
            width, height = fullres.size
        assert (xy[:, 0] < width).all()
        assert (xy[:, 1] < height).all()


def test_her2st_has_hires_and_fullres(shared_sample_dir):
    if not shared_sample_dir.name.startswith("her2st"):
        pytest.skip("only the her2st sections ship hires and full-resolution images")
    adata = read_cached(shared_sample_dir)
    library = next(iter(adata.uns["spatial"].values()))

    assert "hires" in library["images"]
    assert library["metadata"]["fullres_path"] is not None
    assert Path(library["metadata"]["fullres_path"]).suffix == ".jpg"


def test_lowres_only_sample_warns(shared_sample_dir):
    adata = read_cached(shared_sample_dir)
    library = next(iter(adata.uns["spatial"].values()))
    if library["metadata"]["fullres_path"] is not None or "hires" in library["images"]:
        pytest.skip(f"{shared_sample_dir.name} has a full-resolution or hires image")

    with pytest.warns(UserWarning, match="coarse"):
        image = open_tissue_image(adata)
    assert image.source == "lowres"


def _link_sample(sample_dir: Path, target: Path, *, counts: str) -> Path:
    """Link a real sample into ``target`` with only one count layout (an h5 file or the mtx folder)."""
    target.mkdir()
    (target / SPATIAL_DIR).mkdir()
    for image_or_table in (sample_dir / SPATIAL_DIR).iterdir():
        (target / SPATIAL_DIR / image_or_table.name).symlink_to(image_or_table)
    (target / counts).symlink_to(sample_dir / counts)
    return target


def test_mtx_and_h5_identical(shared_sample_dir, tmp_path):
    if not (shared_sample_dir / FILTERED_MTX_DIR).is_dir():
        pytest.skip(f"{shared_sample_dir} has no {FILTERED_MTX_DIR}/ folder")
    from_h5 = read_visium(_link_sample(shared_sample_dir, tmp_path / "h5", counts=FILTERED_H5), library_id="lib")
    from_mtx = read_visium(_link_sample(shared_sample_dir, tmp_path / "mtx", counts=FILTERED_MTX_DIR), library_id="lib")

    assert from_mtx.obs_names.tolist() == from_h5.obs_names.tolist()
    assert from_mtx.var_names.tolist() == from_h5.var_names.tolist()
    assert from_mtx.var["gene_ids"].tolist() == from_h5.var["gene_ids"].tolist()
    assert from_mtx.X.dtype == from_h5.X.dtype
    assert (from_mtx.X != from_h5.X).nnz == 0
    np.testing.assert_array_equal(from_mtx.obsm["spatial"], from_h5.obsm["spatial"])


def test_mtx_library_id_is_folder_name(shared_sample_dir, tmp_path):
    if not (shared_sample_dir / FILTERED_MTX_DIR).is_dir():
        pytest.skip(f"{shared_sample_dir} has no {FILTERED_MTX_DIR}/ folder")
    sample = _link_sample(shared_sample_dir, tmp_path / "my-sample", counts=FILTERED_MTX_DIR)

    adata = read_visium(sample)

    assert list(adata.uns["spatial"]) == ["my-sample"]


def test_positions_header_and_no_header_agree(shared_sample_dir, tmp_path):
    """Rewrite the real position table in the other CSV layout and in Parquet; all must read the same."""
    original = _positions_file(shared_sample_dir)
    table = pd.read_csv(original, header=0 if original.name == POSITIONS_V2 else None, dtype=str)
    table.columns = list(POSITION_COLUMNS)
    reference = read_cached(shared_sample_dir)

    variants = {
        POSITIONS_V2: lambda path: table.to_csv(path, index=False, header=True),
        POSITIONS_V1: lambda path: table.to_csv(path, index=False, header=False),
        POSITIONS_PARQUET: lambda path: table.astype(
            {column: float for column in POSITION_COLUMNS[1:]}
        ).to_parquet(path),
    }
    for name, write in variants.items():
        sample = _link_sample(shared_sample_dir, tmp_path / name.replace(".", "_"), counts=FILTERED_H5)
        (sample / SPATIAL_DIR / original.name).unlink()
        write(sample / SPATIAL_DIR / name)

        adata = read_visium(sample)

        assert Path(adata.uns["spatial"][next(iter(adata.uns["spatial"]))]["metadata"]["positions_file"]).name == name
        assert adata.obs_names.tolist() == reference.obs_names.tolist(), name
        np.testing.assert_array_equal(adata.obsm["spatial"], reference.obsm["spatial"], err_msg=name)
        np.testing.assert_array_equal(adata.obs["array_row"], reference.obs["array_row"], err_msg=name)


# Small folders written by the tests

BARCODES = ["AAACAAGTATCTCCCA-1", "AAACAATCTACTAGCA-1", "AAACACCAATAACTGC-1", "AAACAGAGCGACTCCT-1"]
GENES = [("ENSG01", "GeneA"), ("ENSG02", "GeneB"), ("ENSG03", "GeneA")]


def write_sample(
    folder: Path,
    *,
    positions_barcodes: list[str] | None = None,
    header: bool = False,
    scalefactors: dict | None = None,
) -> Path:
    """Write a four-spot Space Ranger folder with a plain-text mtx trio and a 40 x 50 hires image."""
    mtx_dir = folder / FILTERED_MTX_DIR
    spatial_dir = folder / SPATIAL_DIR
    mtx_dir.mkdir(parents=True)
    spatial_dir.mkdir()

    counts = sp.coo_matrix(np.arange(len(GENES) * len(BARCODES), dtype=np.int64).reshape(len(GENES), len(BARCODES)))
    scipy.io.mmwrite(mtx_dir / "matrix.mtx", counts)
    (mtx_dir / "barcodes.tsv").write_text("".join(f"{barcode}\n" for barcode in BARCODES))
    (mtx_dir / "features.tsv").write_text("".join(f"{gene_id}\t{name}\tGene Expression\n" for gene_id, name in GENES))

    positions_barcodes = BARCODES + ["AAACCCAAGGAGTTTC-1"] if positions_barcodes is None else positions_barcodes
    lines = [",".join(POSITION_COLUMNS)] if header else []
    for index, barcode in enumerate(positions_barcodes):
        in_tissue = 0 if index == 4 else 1
        lines.append(f"{barcode},{in_tissue},{index},{2 * index},{100 + 10 * index},{50 + 20 * index}")
    name = POSITIONS_V2 if header else POSITIONS_V1
    (spatial_dir / name).write_text("\n".join(lines) + "\n")

    if scalefactors is None:
        scalefactors = {"tissue_hires_scalef": 0.2, "tissue_lowres_scalef": 0.05, "spot_diameter_fullres": 20.0}
    (spatial_dir / SCALEFACTORS_JSON).write_text(json.dumps(scalefactors))
    Image.new("RGB", (40, 50), (200, 150, 200)).save(spatial_dir / "tissue_hires_image.png")
    return folder


def test_small_sample_reads(tmp_path):
    adata = read_visium(write_sample(tmp_path / "sample"))

    assert adata.obs_names.tolist() == BARCODES
    assert adata.var_names.tolist() == ["GeneA", "GeneB", "GeneA-1"]
    assert adata.var["gene_ids"].tolist() == ["ENSG01", "ENSG02", "ENSG03"]
    np.testing.assert_array_equal(adata.X.toarray(), np.arange(12).reshape(3, 4).T)
    np.testing.assert_array_equal(adata.obsm["spatial"][1], [50 + 20, 100 + 10])
    assert list(adata.uns["spatial"]) == ["sample"]
    assert adata.uns["spatial"]["sample"]["images"]["hires"].shape == (50, 40, 3)
    assert adata.uns["spatial"]["sample"]["metadata"]["fullres_path"] is None


def test_out_of_tissue_matrix_spot_dropped(tmp_path):
    # Mark the first matrix spot as outside the tissue.
    sample = write_sample(tmp_path / "sample")
    rows = (sample / SPATIAL_DIR / POSITIONS_V1).read_text().splitlines()
    rows[0] = rows[0].replace(",1,", ",0,", 1)
    (sample / SPATIAL_DIR / POSITIONS_V1).write_text("\n".join(rows) + "\n")

    adata = read_visium(sample)

    assert adata.obs_names.tolist() == BARCODES[1:]


def test_sample_in_outs_subfolder(tmp_path):
    write_sample(tmp_path / "data" / "patient-7" / "outs")
    (tmp_path / "data" / "notes").mkdir()
    (tmp_path / "data" / "only-spatial" / SPATIAL_DIR).mkdir(parents=True)

    samples = list_samples(tmp_path / "data")
    adata = read_visium(samples[0])

    assert samples == [tmp_path / "data" / "patient-7"]
    assert list(adata.uns["spatial"]) == ["patient-7"]


def test_list_samples_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="STDIFF_DATA_DIR"):
        list_samples(tmp_path / "absent")


def test_header_positions_keep_every_row(tmp_path):
    with_header = read_visium(write_sample(tmp_path / "header", header=True))
    without_header = read_visium(write_sample(tmp_path / "plain", header=False))

    assert with_header.obs_names.tolist() == BARCODES
    np.testing.assert_array_equal(with_header.obsm["spatial"], without_header.obsm["spatial"])


def test_fullres_argument_recorded(tmp_path):
    sample = write_sample(tmp_path / "sample")
    fullres = tmp_path / "slide.png"
    Image.new("RGB", (200, 250), "white").save(fullres)

    adata = read_visium(sample, fullres_image=fullres, library_id="custom")

    assert adata.uns["spatial"]["custom"]["metadata"]["fullres_path"] == str(fullres)
    assert (adata.obs["library_id"] == "custom").all()


def test_fullres_found_by_name(tmp_path):
    sample = write_sample(tmp_path / "sample")
    Image.new("RGB", (200, 250), "white").save(sample / SPATIAL_DIR / "detected_tissue_image.jpg")
    Image.new("RGB", (200, 250), "white").save(sample / "slide_fullres.png")

    adata = read_visium(sample)

    assert adata.uns["spatial"]["sample"]["metadata"]["fullres_path"] == str(sample / "slide_fullres.png")


# Broken folders: each error names the file.


def test_missing_positions_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    (sample / SPATIAL_DIR / POSITIONS_V1).unlink()

    with pytest.raises(VisiumReadError, match=POSITIONS_V1) as error:
        read_visium(sample)
    assert error.value.path == sample / SPATIAL_DIR
    assert str(sample / SPATIAL_DIR) in str(error.value)


def test_missing_scalefactors_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    (sample / SPATIAL_DIR / SCALEFACTORS_JSON).unlink()

    with pytest.raises(VisiumReadError, match=SCALEFACTORS_JSON) as error:
        read_visium(sample)
    assert error.value.path == sample / SPATIAL_DIR / SCALEFACTORS_JSON


def test_missing_scalefactor_key_lists_keys(tmp_path):
    scalefactors = {"tissue_hires_scalef": 0.2, "fiducial_diameter_fullres": 30}
    sample = write_sample(tmp_path / "sample", scalefactors=scalefactors)

    with pytest.raises(VisiumReadError, match="spot_diameter_fullres") as error:
        read_visium(sample)
    assert SCALEFACTORS_JSON in str(error.value)
    assert "fiducial_diameter_fullres" in str(error.value)
    assert "tissue_hires_scalef" in str(error.value)


def test_non_numeric_coordinate_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    positions = sample / SPATIAL_DIR / POSITIONS_V1
    rows = positions.read_text().splitlines()
    rows[2] = rows[2].rsplit(",", 1)[0] + ",12.5px"
    positions.write_text("\n".join(rows) + "\n")

    with pytest.raises(VisiumReadError, match=POSITIONS_V1) as error:
        read_visium(sample)
    assert "'12.5px'" in str(error.value)
    assert "line 3" in str(error.value)
    assert error.value.path == positions


def test_half_header_first_row_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    positions = sample / SPATIAL_DIR / POSITIONS_V1
    rows = positions.read_text().splitlines()
    rows[0] = rows[0].replace(",1,0,0,", ",1,row,0,")
    positions.write_text("\n".join(rows) + "\n")

    with pytest.raises(VisiumReadError, match="neither a header nor a spot"):
        read_visium(sample)


def test_wrong_column_count_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    positions = sample / SPATIAL_DIR / POSITIONS_V1
    positions.write_text("\n".join(row.rsplit(",", 1)[0] for row in positions.read_text().splitlines()) + "\n")

    with pytest.raises(VisiumReadError, match="has 5 columns"):
        read_visium(sample)


def test_barcode_mismatch_names_both_files(tmp_path):
    sample = write_sample(tmp_path / "sample", positions_barcodes=[barcode.replace("-1", "-2") for barcode in BARCODES])

    with pytest.raises(VisiumReadError) as error:
        read_visium(sample)
    message = str(error.value)
    assert str(sample / FILTERED_MTX_DIR) in message
    assert str(sample / SPATIAL_DIR / POSITIONS_V1) in message
    assert "4 of 4 barcodes" in message
    assert BARCODES[0] in message


def test_hires_not_an_image_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    (sample / SPATIAL_DIR / "tissue_hires_image.png").write_text("not a PNG")

    with pytest.raises(VisiumReadError, match="tissue_hires_image.png") as error:
        read_visium(sample)
    assert "as an image" in str(error.value)


def test_fullres_not_an_image_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    (sample / SPATIAL_DIR / "tissue_fullres_image.jpg").write_bytes(b"\x00" * 64)

    with pytest.raises(VisiumReadError, match="tissue_fullres_image.jpg"):
        read_visium(sample)


def test_missing_fullres_argument_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")

    with pytest.raises(VisiumReadError, match="absent.tif"):
        read_visium(sample, fullres_image=tmp_path / "absent.tif")


def test_mtx_features_missing_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    (sample / FILTERED_MTX_DIR / "features.tsv").unlink()

    with pytest.raises(VisiumReadError, match="features.tsv") as error:
        read_visium(sample)
    assert "barcodes.tsv" in str(error.value)


def test_h5_not_hdf5_raises(tmp_path):
    sample = write_sample(tmp_path / "sample")
    shutil.rmtree(sample / FILTERED_MTX_DIR)
    (sample / FILTERED_H5).write_text("not HDF5")

    with pytest.raises(VisiumReadError, match=FILTERED_H5):
        read_visium(sample)


def test_missing_spatial_folder_raises(tmp_path):
    (tmp_path / "sample").mkdir()

    with pytest.raises(VisiumReadError, match="No spatial/ folder"):
        read_visium(tmp_path / "sample")
