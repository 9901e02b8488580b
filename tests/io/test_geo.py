"""Tests for flat GEO downloads (stdiff.io.geo, `stdiff arrange-geo`, uploads), built from real her2st sections."""

from __future__ import annotations

import gzip
import io
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import stdiff.io.geo as geo_module
from _helpers import require_samples
from stdiff.cli import main
from stdiff.io import read_visium
from stdiff.io.archive import ArchiveError, extract_archive
from stdiff.io.errors import VisiumReadError
from stdiff.io.geo import _split_name, arrange_flat_folder, find_flat_samples

SAMPLES = {"GSM9000002_C2": "her2st-C2", "GSM9000003_C3": "her2st-C3"}


def _gzip(source: Path, target: Path) -> None:
    with open(source, "rb") as plain, gzip.open(target, "wb") as packed:
        shutil.copyfileobj(plain, packed)


def _flatten(sample_dir: Path, prefix: str, out: Path, *, mtx: bool) -> None:
    """Write a sample's files the way GEO serves them: prefixed, in one folder, most of them gzipped."""
    spatial = sample_dir / "spatial"
    for name in ("tissue_positions_list.csv", "scalefactors_json.json", "tissue_hires_image.png",
                 "tissue_lowres_image.png"):
        _gzip(spatial / name, out / f"{prefix}_{name}.gz")
    if mtx:
        for path in sorted((sample_dir / "filtered_feature_bc_matrix").iterdir()):
            shutil.copy(path, out / f"{prefix}_{path.name}")
        _gzip(spatial / "tissue_fullres_image.jpg", out / f"{prefix}_HE.jpg.gz")
    else:
        shutil.copy(sample_dir / "filtered_feature_bc_matrix.h5", out / f"{prefix}_filtered_feature_bc_matrix.h5")
        shutil.copy(spatial / "tissue_fullres_image.jpg", out / f"{prefix}_HE.jpg")


@pytest.fixture(scope="module")
def flat_folder(shared_data_dir, tmp_path_factory) -> Path:
    """Two real sections as a flat GEO folder: C2 with its h5 matrix, C3 with its gzipped mtx files."""
    require_samples(shared_data_dir, *SAMPLES.values())
    out = tmp_path_factory.mktemp("GSE9000001_RAW")
    for mtx, (prefix, name) in enumerate(SAMPLES.items()):
        _flatten(shared_data_dir / name, prefix, out, mtx=bool(mtx))
    (out / "GSE9000001_README.txt").write_text("series description")
    return out


@pytest.mark.parametrize("file_name, expected", [
    ("GSM1_A1_tissue_positions_list.csv.gz", ("GSM1_A1", "spatial/tissue_positions_list.csv")),
    ("tissue_positions.csv", ("", "spatial/tissue_positions.csv")),
    ("GSM1-scalefactors_json.json.gz", ("GSM1", "spatial/scalefactors_json.json")),
    ("GSM2_barcodes.tsv.gz", ("GSM2", "filtered_feature_bc_matrix/barcodes.tsv")),
    ("GSM2_raw_feature_bc_matrix_matrix.mtx.gz", ("GSM2", "raw_feature_bc_matrix/matrix.mtx")),
    ("GSM2_filtered_feature_bc_matrix.h5", ("GSM2", "filtered_feature_bc_matrix.h5")),
    ("GSM3_HE.tif", None),
    ("xmatrix.mtx", None),
])
def test_split_name(file_name, expected):
    assert _split_name(file_name) == expected


def test_arranged_samples_read_like_originals(flat_folder, shared_data_dir, tmp_path):
    written, skipped = arrange_flat_folder(flat_folder, tmp_path / "data")

    assert sorted(path.name for path in written) == sorted(SAMPLES)
    assert skipped == {}
    for prefix, name in SAMPLES.items():
        arranged, original = read_visium(tmp_path / "data" / prefix), read_visium(shared_data_dir / name)
        assert arranged.obs_names.tolist() == original.obs_names.tolist()
        assert (arranged.X != original.X).nnz == 0
        np.testing.assert_array_equal(arranged.obsm["spatial"], original.obsm["spatial"])
        metadata = next(iter(arranged.uns["spatial"].values()))["metadata"]
        assert Path(metadata["fullres_path"]).name == f"{prefix}_HE.jpg"
        images = next(iter(arranged.uns["spatial"].values()))["images"]
        original_images = next(iter(original.uns["spatial"].values()))["images"]
        np.testing.assert_array_equal(images["hires"], original_images["hires"])


def test_incomplete_sample_is_skipped(flat_folder, tmp_path):
    folder = tmp_path / "flat"
    shutil.copytree(flat_folder, folder)
    (folder / "GSM9000004_D1_scalefactors_json.json.gz").write_bytes(
        (folder / "GSM9000002_C2_scalefactors_json.json.gz").read_bytes())

    written, skipped = arrange_flat_folder(folder, tmp_path / "data")

    assert len(written) == 2
    assert list(skipped) == ["GSM9000004_D1"]
    assert "is missing a count matrix" in skipped["GSM9000004_D1"]
    assert "a position table" in skipped["GSM9000004_D1"]


def test_interrupted_arrange_leaves_nothing(flat_folder, tmp_path, monkeypatch):
    calls = []
    place = geo_module._place

    def fail_on_third(source, target, on_bytes=None):
        calls.append(source)
        if len(calls) == 3:
            raise KeyboardInterrupt
        place(source, target, on_bytes)

    monkeypatch.setattr(geo_module, "_place", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        arrange_flat_folder(flat_folder, tmp_path / "data")

    assert list((tmp_path / "data").iterdir()) == []


def test_reader_error_suggests_arrange(flat_folder):
    with pytest.raises(VisiumReadError, match="stdiff arrange-geo") as caught:
        read_visium(flat_folder)

    assert "2 samples: GSM9000002_C2, GSM9000003_C3" in str(caught.value)


def test_cli_arranges_then_refuses_existing(flat_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "data"

    assert main(["arrange-geo", str(flat_folder), "--out", str(out)]) == 0
    assert "Arranged 2 samples" in caplog.text
    assert main(["arrange-geo", str(flat_folder), "--out", str(out)]) == 2
    assert "pass --overwrite" in caplog.text
    assert main(["arrange-geo", str(flat_folder), "--out", str(out), "--overwrite"]) == 0


def _zip(folder: Path, prefixes: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            if any(path.name.startswith(prefix) for prefix in prefixes):
                archive.write(path, f"download/{path.name}")
    return buffer.getvalue()


def test_upload_of_one_flat_sample_reads(flat_folder, tmp_path, shared_data_dir):
    sample = extract_archive(_zip(flat_folder, ["GSM9000003_C3"]), tmp_path / "uploads", name="C3.zip")

    assert sample.name == "GSM9000003_C3"
    assert read_visium(sample).n_obs == read_visium(shared_data_dir / "her2st-C3").n_obs


def test_upload_of_two_flat_samples_rejected(flat_folder, tmp_path):
    with pytest.raises(ArchiveError, match="GEO files of 2 samples"):
        extract_archive(_zip(flat_folder, list(SAMPLES)), tmp_path / "uploads", name="GSE9000001_RAW.zip")

    assert [path for path in (tmp_path / "uploads").iterdir() if not path.name.startswith(".")] == []


def test_find_flat_samples_attaches_fullres_image(flat_folder):
    samples = find_flat_samples(flat_folder)

    assert samples["GSM9000002_C2"].files["GSM9000002_C2_HE.jpg"].name == "GSM9000002_C2_HE.jpg"
    assert samples["GSM9000003_C3"].files["GSM9000003_C3_HE.jpg"].name == "GSM9000003_C3_HE.jpg.gz"


def _copy_flat(flat_folder: Path, target: Path, prefix: str) -> Path:
    target.mkdir(parents=True)
    for path in flat_folder.glob(f"{prefix}*"):
        shutil.copy(path, target / path.name)
    return target


def _unprefixed(flat_folder: Path, target: Path, prefix: str) -> Path:
    target.mkdir(parents=True)
    for path in flat_folder.glob(f"{prefix}_*"):
        shutil.copy(path, target / path.name.removeprefix(f"{prefix}_"))
    return target


def test_unprefixed_sample_named_after_folder(flat_folder, tmp_path, monkeypatch):
    flat = _unprefixed(flat_folder, tmp_path / "download" / "C2", "GSM9000002_C2")
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "data.txt").write_text("precious")
    monkeypatch.chdir(flat)

    written, skipped = arrange_flat_folder(".", "../../out", overwrite=True)

    assert [path.name for path in written] == ["C2"]
    assert (out / "keep" / "data.txt").read_text() == "precious"
    adata = read_visium(out / "C2")
    assert Path(adata.uns["spatial"]["her2st_C2"]["metadata"]["fullres_path"]).name == "HE.jpg"


def test_target_equal_to_source_folder_rejected(flat_folder, tmp_path):
    flat = _unprefixed(flat_folder, tmp_path / "data" / "C2", "GSM9000002_C2")
    (flat / "notes.txt").write_text("mine")

    written, skipped = arrange_flat_folder(flat, tmp_path / "data", overwrite=True)

    assert written == []
    assert "would replace the folder that contains" in skipped["C2"]
    assert (flat / "notes.txt").read_text() == "mine"


def test_move_keeps_sources_when_gzip_damaged(flat_folder, tmp_path):
    flat = _copy_flat(flat_folder, tmp_path / "flat", "GSM")
    damaged = flat / "GSM9000002_C2_tissue_hires_image.png.gz"
    damaged.write_bytes(damaged.read_bytes()[:5000])
    before = sorted(path.name for path in flat.iterdir())

    written, skipped = arrange_flat_folder(flat, tmp_path / "data", move=True)

    assert [path.name for path in written] == ["GSM9000003_C3"]
    assert "is not a complete gzip file" in skipped["GSM9000002_C2"]
    assert sorted(path.name for path in flat.iterdir() if path.name.startswith("GSM9000002")) == [
        name for name in before if name.startswith("GSM9000002")]
    assert not any(path.name.startswith("GSM9000003") for path in flat.iterdir())
    assert [path.name for path in (tmp_path / "data").iterdir()] == ["GSM9000003_C3"]


def test_symlinked_sources_give_real_files(flat_folder, tmp_path):
    links = tmp_path / "links"
    links.mkdir()
    for path in flat_folder.glob("GSM9000002_C2*"):
        (links / path.name).symlink_to(path)

    written, _ = arrange_flat_folder(links, tmp_path / "data")

    h5 = written[0] / "filtered_feature_bc_matrix.h5"
    assert not h5.is_symlink()
    assert read_visium(written[0]).n_obs > 0


@pytest.mark.parametrize("change, message", [
    (lambda flat: (flat / "GSM9000003_C3_barcodes.tsv.gz").unlink(), "barcodes.tsv.gz for its matrix.mtx"),
    (lambda flat: shutil.copy(flat / "GSM9000003_C3_HE.jpg.gz", flat / "GSM9000003_C3_HE.jpg"),
     "GSM9000003_C3_HE.jpg and GSM9000003_C3_HE.jpg.gz both give"),
    (lambda flat: (flat / "GSM9000003_C3_filtered_feature_bc_matrix.h5").symlink_to(flat / "gone.h5"),
     "symbolic link GSM9000003_C3_filtered_feature_bc_matrix.h5"),
])
def test_unreadable_sample_skipped_with_reason(flat_folder, tmp_path, change, message):
    flat = _copy_flat(flat_folder, tmp_path / "flat", "GSM9000003_C3")
    change(flat)

    written, skipped = arrange_flat_folder(flat, tmp_path / "data")

    assert written == []
    assert message in skipped["GSM9000003_C3"]


def test_sample_folder_is_not_arranged(shared_data_dir, tmp_path):
    with pytest.raises(ValueError, match="is a Space Ranger sample folder already"):
        arrange_flat_folder(shared_data_dir / "her2st-C2", tmp_path / "data")

    assert not (tmp_path / "data").exists()


def test_upload_two_flat_folders_rejected(flat_folder, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(flat_folder.iterdir()):
            if path.name.startswith("GSM"):
                archive.write(path, f"{path.name[:10]}/{path.name}")

    with pytest.raises(ArchiveError, match="GEO files of 2 samples"):
        extract_archive(buffer.getvalue(), tmp_path / "uploads", name="two-folders.zip")


def test_upload_with_folder_named_like_sample(flat_folder, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(flat_folder.glob("GSM9000002_C2*")):
            archive.write(path, path.name)
        archive.writestr("GSM9000002_C2/readme.txt", "notes")

    sample = extract_archive(buffer.getvalue(), tmp_path / "uploads", name="C2.zip")

    assert read_visium(sample).n_obs > 0


def test_upload_with_damaged_gzip_rejected(flat_folder, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(flat_folder.glob("GSM9000002_C2*")):
            data = path.read_bytes()
            archive.writestr(path.name, data[:3000] if path.name.endswith("hires_image.png.gz") else data)

    with pytest.raises(ArchiveError, match="is not a complete gzip file"):
        extract_archive(buffer.getvalue(), tmp_path / "uploads", name="C2.zip")

    assert [path for path in (tmp_path / "uploads").iterdir() if not path.name.startswith(".")] == []


def test_upload_gzip_counts_against_size_cap(flat_folder, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(flat_folder.glob("GSM9000002_C2*")):
            archive.write(path, path.name)
    size = len(buffer.getvalue())  # the archive stores its entries uncompressed; unpacking the gzips adds about 3 MB

    with pytest.raises(ArchiveError, match="STDIFF_UPLOAD_MAX_BYTES"):
        extract_archive(buffer.getvalue(), tmp_path / "uploads", name="C2.zip", max_total_bytes=size + 1_000_000)


def test_unprefixed_and_prefixed_same_name_conflict(flat_folder, tmp_path):
    flat = _unprefixed(flat_folder, tmp_path / "GSM9000002_C2", "GSM9000002_C2")
    for path in flat_folder.glob("GSM9000002_C2_*"):
        shutil.copy(path, flat / path.name)

    written, skipped = arrange_flat_folder(flat, tmp_path / "data")

    assert written == []
    assert "files with and without the prefix GSM9000002_C2" in skipped["GSM9000002_C2"]
