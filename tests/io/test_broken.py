"""Broken and odd sample folders, made from a real her2st sample, each with the exact outcome expected.

Every case copies the real sample (small files copied, large ones linked), breaks one thing, and reads it. An
error must be a VisiumReadError whose message names the file and the fix; a warning must be a
VisiumReadWarning naming the file, stored in ``metadata["warnings"]`` too; "loads" means no warning at all.
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
from PIL import Image

from _visium_writer import write_h5
from stdiff.io import VisiumReadError, VisiumReadWarning, open_tissue_image, read_visium

REAL_SAMPLE = "her2st-C2"
LIBRARY_ID = "her2st_C2"
COPY_LIMIT_BYTES = 200_000  # files up to this size are copied so cases can edit them; larger ones are linked
POSITIONS = "spatial/tissue_positions_list.csv"
SCALEFACTORS = "spatial/scalefactors_json.json"
HIRES = "spatial/tissue_hires_image.png"
LOWRES = "spatial/tissue_lowres_image.png"
FULLRES = "spatial/tissue_fullres_image.jpg"
H5 = "filtered_feature_bc_matrix.h5"
MTX = "filtered_feature_bc_matrix"


@pytest.fixture(scope="module")
def real_sample(shared_data_dir) -> Path:
    sample = shared_data_dir / REAL_SAMPLE
    if not sample.is_dir():
        pytest.skip(f"{sample} not found; the broken-folder cases are made from it")
    return sample


def copy_sample(source: Path, target: Path) -> Path:
    """Copy the Space Ranger files of ``source``: small files as copies, large ones as symbolic links."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if relative.parts[0] in ("original", "SOURCE.md") or path.is_dir():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        if path.stat().st_size <= COPY_LIMIT_BYTES:
            shutil.copyfile(path, target / relative)
        else:
            (target / relative).symlink_to(path)
    return target


def replace(path: Path, content: str | bytes) -> None:
    """Write ``content`` to ``path``, first removing a link so the shared real file is never touched."""
    path.unlink(missing_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)


def edit_positions(sample: Path, edit: Callable[[list[list[str]]], list[list[str]]]) -> None:
    path = sample / POSITIONS
    rows = [line.split(",") for line in path.read_text().splitlines()]
    replace(path, "\n".join(",".join(row) for row in edit(rows)) + "\n")


def edit_scalefactors(sample: Path, **changes) -> None:
    path = sample / SCALEFACTORS
    scalefactors = json.loads(path.read_text())
    scalefactors.update(changes)
    replace(path, json.dumps({key: value for key, value in scalefactors.items() if value is not None}))


def set_row(row_index: int, column: int, value: str):
    def edit(rows):
        rows[row_index][column] = value
        return rows

    return edit


def png_with_size(width: int, height: int) -> bytes:
    """Return a 1 x 1 PNG whose header claims ``width`` x ``height`` pixels, so only the header is plausible."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then chunk length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13])))
    return bytes(data)


def h5_barcodes(sample: Path) -> list[str]:
    with h5py.File(sample / H5, "r") as h5:
        return [barcode.decode() for barcode in h5["matrix/barcodes"][:]]


def write_matrix_h5(sample: Path, counts: np.ndarray, barcodes: list[str]) -> None:
    (sample / H5).unlink()
    shutil.rmtree(sample / MTX)
    write_h5(sample / H5, library_id=LIBRARY_ID, barcodes=barcodes, counts=counts)


# Cases: each breaks a copy of the real sample.


def _remove(relative: str):
    def mutate(sample: Path) -> None:
        path = sample / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    return mutate


def _write(relative: str, content: str | bytes):
    return lambda sample: replace(sample / relative, content)


def _truncate(relative: str):
    def mutate(sample: Path) -> None:
        data = (sample / relative).read_bytes()
        replace(sample / relative, data[: len(data) // 2])

    return mutate


def _only_mtx(mutate_mtx: Callable[[Path], None]):
    def mutate(sample: Path) -> None:
        (sample / H5).unlink()
        mutate_mtx(sample)

    return mutate


def _swap_images(sample: Path) -> None:
    hires, lowres = (sample / HIRES).readlink(), (sample / LOWRES).readlink()
    (sample / HIRES).unlink()
    (sample / LOWRES).unlink()
    (sample / HIRES).symlink_to(lowres)
    (sample / LOWRES).symlink_to(hires)


def _broken_link(sample: Path) -> None:
    (sample / HIRES).unlink()
    (sample / HIRES).symlink_to(sample / "moved-away.png")


def _two_prefixed_matrices(sample: Path) -> None:
    shutil.rmtree(sample / MTX)
    target = (sample / H5).readlink()
    (sample / H5).rename(sample / f"GSM1_{H5}")
    (sample / f"GSM2_{H5}").symlink_to(target)


def _empty_matrix(sample: Path) -> None:
    write_matrix_h5(sample, np.zeros((0, 4), dtype=np.int64), [])


def _zero_matrix(sample: Path) -> None:
    barcodes = h5_barcodes(sample)
    write_matrix_h5(sample, np.zeros((len(barcodes), 4), dtype=np.int64), barcodes)


def _mtx_feature_missing(sample: Path) -> None:
    import gzip

    path = sample / MTX / "features.tsv.gz"
    lines = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    replace(path, gzip.compress(b"".join(lines[:-1])))


def _renamed_header(sample: Path) -> None:
    edit_positions(sample, lambda rows: [["spot", "tissue", "row", "col", "imagerow", "imagecol"], *rows])


def _v1_content_v2_name(sample: Path) -> None:
    (sample / POSITIONS).rename(sample / "spatial/tissue_positions.csv")


def _v2_content_v1_name(sample: Path) -> None:
    header = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    edit_positions(sample, lambda rows: [header, *rows])


def _raw_matrix_only(sample: Path) -> None:
    shutil.rmtree(sample / MTX)
    (sample / H5).rename(sample / "raw_feature_bc_matrix.h5")


def _spots_outside(sample: Path) -> None:
    def edit(rows):
        for row in rows[::2]:
            row[5] = str(float(row[5]) + 20_000)
        return rows

    edit_positions(sample, edit)


def _larger_fullres(sample: Path) -> None:
    """An image 10 % larger than the one Space Ranger was run on; all spots still fall inside it."""
    (sample / FULLRES).unlink()
    replace(sample / "spatial/tissue_fullres_image.png", png_with_size(10_200, 10_900))


def _two_fullres_candidates(sample: Path) -> None:
    fullres = (sample / FULLRES).readlink()
    (sample / FULLRES).unlink()
    (sample / "slide_scan.jpg").symlink_to(fullres)
    Image.new("RGB", (20, 20), "white").save(sample / "label.jpg")


def _lowres_only(sample: Path) -> None:
    (sample / FULLRES).unlink()
    (sample / HIRES).unlink()


def _no_images(sample: Path) -> None:
    for relative in (FULLRES, HIRES, LOWRES):
        (sample / relative).unlink()


def _huge_png_fullres(width: int, height: int):
    def mutate(sample: Path) -> None:
        (sample / FULLRES).unlink()
        replace(sample / "spatial/tissue_fullres_image.png", png_with_size(width, height))

    return mutate


def _no_spatial(sample: Path) -> None:
    shutil.rmtree(sample / "spatial")


@dataclass(frozen=True)
class Case:
    mutate: Callable[[Path], None]
    outcome: str  # "error", "warning" or "loads"
    file: str | None = None  # path relative to the sample that the message must contain
    fragments: tuple[str, ...] = ()  # further text the message must contain: what was found and the fix


CASES = {
    # Positions
    "positions-missing": Case(_remove(POSITIONS), "error", "spatial", ("tissue_positions.csv",
                              "copy it from the Space Ranger output")),
    "positions-empty": Case(_write(POSITIONS, ""), "error", POSITIONS, ("is empty", "Copy the file again")),
    "positions-header-only": Case(_write(POSITIONS, "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,"
                                  "pxl_col_in_fullres\n"), "error", POSITIONS, ("lists no spots", "copy the file")),
    "coordinate-not-numeric": Case(lambda s: edit_positions(s, set_row(2, 5, "12.5px")), "error", POSITIONS,
                                   ("'12.5px'", "line 3", "fix or regenerate")),
    "coordinate-missing": Case(lambda s: edit_positions(s, set_row(4, 4, "")), "error", POSITIONS,
                               ("missing pxl_row_in_fullres value ''", "line 5")),
    "in-tissue-invalid": Case(lambda s: edit_positions(s, set_row(0, 1, "2")), "error", POSITIONS,
                              ("in_tissue values [2]", "only 0 or 1")),
    "no-spot-in-tissue": Case(lambda s: edit_positions(s, lambda rows: [[r[0], "0", *r[2:]] for r in rows]),
                              "error", POSITIONS, ("None of the 187 spots", "belongs to this sample")),
    "positions-five-columns": Case(lambda s: edit_positions(s, lambda rows: [r[:5] for r in rows]), "error",
                                   POSITIONS, ("has 5 columns", "expected 6")),
    "half-header": Case(lambda s: edit_positions(s, set_row(0, 2, "row")), "error", POSITIONS,
                        ("neither a header nor a spot", "Fix the row")),
    "barcode-repeated": Case(lambda s: edit_positions(s, lambda rows: [*rows, rows[0]]), "error", POSITIONS,
                             ("more than once", "10x21")),
    "barcode-mismatch": Case(lambda s: edit_positions(s, lambda rows: [["X" + r[0], *r[1:]] for r in rows[:-3]]
                                                      + rows[-3:]), "error", H5,
                             (POSITIONS, "184 of 187 barcodes", "same Space Ranger run")),
    "barcode-suffix-mismatch": Case(lambda s: edit_positions(s, lambda rows: [[r[0] + "-1", *r[1:]] for r in rows]),
                                    "error", POSITIONS, ("Without their '-N' suffix", "Add or remove the suffix")),
    # Scalefactors
    "scalefactors-missing": Case(_remove(SCALEFACTORS), "error", SCALEFACTORS, ("Missing", "copy it from")),
    "scalefactors-key-missing": Case(lambda s: edit_scalefactors(s, spot_diameter_fullres=None), "error",
                                     SCALEFACTORS, ("lacks the key 'spot_diameter_fullres'", "tissue_hires_scalef",
                                                    "restore the file")),
    "scalefactors-not-json": Case(_write(SCALEFACTORS, '{"tissue_hires_scalef": 0.2,'), "error", SCALEFACTORS,
                                  ("Could not parse", "copy the file again")),
    "scalefactor-negative": Case(lambda s: edit_scalefactors(s, tissue_lowres_scalef=-0.06), "error", SCALEFACTORS,
                                 ("tissue_lowres_scalef = -0.06", "positive number")),
    # Counts
    "h5-truncated": Case(_truncate(H5), "error", H5, ("Could not", "replace it")),
    "h5-not-hdf5": Case(_write(H5, "<html>404 Not Found</html>"), "error", H5, ("Could not", "replace it")),
    "mtx-truncated": Case(_only_mtx(_truncate(f"{MTX}/matrix.mtx.gz")), "error", f"{MTX}/matrix.mtx.gz",
                          ("Matrix Market",)),
    "mtx-features-short": Case(_only_mtx(_mtx_feature_missing), "error", MTX,
                               ("lists 15705 features", "same Space Ranger run")),
    "mtx-features-missing": Case(_only_mtx(_remove(f"{MTX}/features.tsv.gz")), "error", MTX,
                                 ("features.tsv[.gz] or genes.tsv[.gz]", "copy the missing file")),
    "matrix-missing": Case(lambda s: (_remove(H5)(s), _remove(MTX)(s)), "error", "", ("No count matrix",
                           "filtered_feature_bc_matrix.h5", "Copy the feature-barcode matrix")),
    "matrix-empty": Case(_empty_matrix, "error", H5, ("contains 0 barcodes", "copy the filtered")),
    "matrix-all-zero": Case(_zero_matrix, "error", H5, ("every count is zero", "copy the feature-barcode")),
    "two-prefixed-matrices": Case(_two_prefixed_matrices, "error", "", ("GSM1_filtered_feature_bc_matrix.h5",
                                  "GSM2_filtered_feature_bc_matrix.h5", "move the others out")),
    # Images
    "hires-not-an-image": Case(_write(HIRES, "not a PNG"), "error", HIRES, ("as an image", "replace the file")),
    "fullres-not-an-image": Case(_write(FULLRES, b"\xff\xd8\xff\xe0" + b"\x00" * 64), "error", FULLRES,
                                 ("as an image", "replace the file")),
    "fullres-header-too-large": Case(_huge_png_fullres(100_000, 100_000), "error",
                                     "spatial/tissue_fullres_image.png", ("too many to decode", "tiled TIFF")),
    "fullres-over-decode-limit": Case(_huge_png_fullres(50_000, 40_000), "error", "spatial/tissue_fullres_image.png",
                                      ("50000 x 40000", "tiled TIFF")),
    "hires-lowres-swapped": Case(_swap_images, "error", HIRES, ("look swapped", "Rename them")),
    "hires-broken-link": Case(_broken_link, "error", HIRES, ("symbolic link to the missing", "fix the link")),
    "no-spatial-folder": Case(_no_spatial, "error", "", ("No spatial/ folder", "Expected a Space Ranger outs")),
    # Loaded with a warning
    "spots-outside-image": Case(_spots_outside, "warning", FULLRES, ("94 of 187 spot centres lie outside",
                                "same Space Ranger run")),
    "fullres-wrong-size": Case(_larger_fullres, "warning", "spatial/tissue_fullres_image.png",
                               ("10200 x 10900", "pass fullres_image=")),
    "hires-lowres-disagree": Case(lambda s: edit_scalefactors(s, tissue_lowres_scalef=0.05), "warning", LOWRES,
                                  ("disagree", "patches are cut from the hires image")),
    "positions-header-renamed": Case(_renamed_header, "warning", POSITIONS, ("'imagerow'", "Space Ranger order")),
    "two-fullres-candidates": Case(_two_fullres_candidates, "warning", "", ("slide_scan.jpg", "label.jpg",
                                   "fullres_image=")),
    "lowres-only": Case(_lowres_only, "warning", "", ("only a lowres image", "coarse")),
    "no-image": Case(_no_images, "warning", "", ("no tissue image", "add the H&E image")),
    # Odd but valid: loaded without a warning
    "v1-content-in-v2-name": Case(_v1_content_v2_name, "loads"),
    "v2-content-in-v1-name": Case(_v2_content_v1_name, "loads"),
    "raw-matrix-only": Case(_raw_matrix_only, "loads"),
}


def _check_message(message: str, sample: Path, case: Case) -> None:
    if case.file is not None:
        assert str(sample / case.file) in message
    for fragment in case.fragments:
        assert fragment in message


@pytest.mark.parametrize("name", list(CASES))
def test_broken_sample(name, real_sample, tmp_path):
    case = CASES[name]
    sample = copy_sample(real_sample, tmp_path / "sample")
    case.mutate(sample)

    if case.outcome == "error":
        with pytest.raises(VisiumReadError) as error:
            read_visium(sample)
        _check_message(str(error.value), sample, case)
        return

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adata = read_visium(sample)
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, VisiumReadWarning)]
    assert adata.n_obs > 0
    assert adata.uns["spatial"][LIBRARY_ID]["metadata"]["warnings"] == messages
    if case.outcome == "loads":
        assert messages == []
        assert adata.n_obs == 187
    else:
        assert len(messages) == 1, messages
        _check_message(messages[0], sample, case)


def test_case_table_size():
    errors = [case for case in CASES.values() if case.outcome == "error"]
    assert len(CASES) >= 25
    assert len(errors) >= 11


def test_jpeg_over_pillow_default_limit_crops(real_sample, tmp_path):
    """The real full-resolution JPEG has more pixels than Pillow's default decompression-bomb limit."""
    default_limit = 1024 * 1024 * 1024 // 4 // 3  # PIL.Image.MAX_IMAGE_PIXELS as Pillow ships it
    adata = read_visium(copy_sample(real_sample, tmp_path / "sample"))
    image = open_tissue_image(adata)

    patch = image.crop(*adata.obsm["spatial"][0], size=256, out_size=32)

    assert image.source == "fullres"
    assert image.width_fullres * image.height_fullres > default_limit
    assert patch.shape == (32, 32, 3)
    assert patch.std() > 5, "the patch is blank: the image was not decoded"
