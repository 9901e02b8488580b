"""Tests for stdiff.io.open_tissue_image and TissueImage patch geometry."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import tifffile
from PIL import Image

import stdiff.io.images as images_module
from stdiff.io import TissueImage, VisiumReadError, list_samples, open_tissue_image, read_visium

# A non-square slide (width 2000, height 1500) in grey, so white padding outside it is recognisable, with red
# marks at positions whose x and y differ.
WIDTH, HEIGHT = 2000, 1500
GREY = 128
MARK_HALF = 6  # marks span 13 x 13 pixels
MARK = (1400, 300)  # (x, y)
EDGE_MARK = (10, 1490)  # 10 pixels from the left edge and from the bottom edge


def make_slide() -> np.ndarray:
    slide = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.uint8)
    for x, y in (MARK, EDGE_MARK):
        slide[y - MARK_HALF : y + MARK_HALF + 1, x - MARK_HALF : x + MARK_HALF + 1] = (255, 0, 0)
    return slide


def red_centroid(patch: np.ndarray) -> tuple[float, float]:
    """Return the (x, y) centroid of red pixels in a patch."""
    red = (patch[:, :, 0] > 200) & (patch[:, :, 1] < 80) & (patch[:, :, 2] < 80)
    assert red.any(), "no red pixels in the patch"
    rows, cols = np.nonzero(red)
    return float(cols.mean()), float(rows.mean())


def adata_with_image(*, fullres_path: Path | None = None, images: dict | None = None, scalefactors=None) -> ad.AnnData:
    adata = ad.AnnData(np.zeros((1, 1), dtype=np.float32))
    adata.uns["spatial"] = {
        "lib": {
            "images": images or {},
            "scalefactors": scalefactors or {"spot_diameter_fullres": 50.0},
            "metadata": {
                "source_dir": "synthetic",
                "fullres_path": str(fullres_path) if fullres_path else None,
                "counts_file": "",
                "positions_file": "",
            },
        }
    }
    return adata


def save_slide(folder: Path, fmt: str) -> Path:
    slide = make_slide()
    if fmt == "tiff-tiled":
        path = folder / "slide_tiled.tif"
        tifffile.imwrite(path, slide, tile=(256, 256), compression="zlib", photometric="rgb")
    elif fmt == "tiff-planar":
        path = folder / "slide_planar.tif"
        tifffile.imwrite(path, np.moveaxis(slide, -1, 0), photometric="rgb", planarconfig="separate")
    elif fmt == "tiff":
        path = folder / "slide.tif"
        tifffile.imwrite(path, slide, photometric="rgb")
    else:
        path = folder / f"slide.{fmt}"
        Image.fromarray(slide).save(path, quality=95)
    return path


FORMATS = ["png", "jpg", "tiff", "tiff-tiled", "tiff-planar"]


@pytest.fixture(scope="module", params=FORMATS)
def fullres_image(request, tmp_path_factory) -> TissueImage:
    path = save_slide(tmp_path_factory.mktemp(request.param), request.param)
    with open_tissue_image(adata_with_image(fullres_path=path)) as image:
        yield image


def test_fullres_extent(fullres_image):
    assert fullres_image.source == "fullres"
    assert fullres_image.scale == 1.0
    assert fullres_image.width_fullres == WIDTH
    assert fullres_image.height_fullres == HEIGHT


@pytest.mark.parametrize("out_size", [101, 64])
def test_crop_centres_mark(fullres_image, out_size):
    patch = fullres_image.crop(*MARK, size=101, out_size=out_size)

    assert patch.shape == (out_size, out_size, 3)
    assert patch.dtype == np.uint8
    x, y = red_centroid(patch)
    centre = (out_size - 1) / 2
    assert abs(x - centre) <= 1
    assert abs(y - centre) <= 1


def test_crop_offset_mark_position(fullres_image):
    """A patch centred 20 px right of and 30 px below the mark shows it up and to the left of centre."""
    patch = fullres_image.crop(MARK[0] + 20, MARK[1] + 30, size=101, out_size=101)

    x, y = red_centroid(patch)
    assert abs(x - (50 - 20)) <= 1
    assert abs(y - (50 - 30)) <= 1


def test_crop_x_y_not_swapped(fullres_image):
    swapped = fullres_image.crop(MARK[1], MARK[0], size=101, out_size=101)

    assert not (swapped[:, :, 1] < 80).any(), "a mark appeared with x and y swapped"


def test_crop_near_edge_pads_white(fullres_image):
    patch = fullres_image.crop(*EDGE_MARK, size=101, out_size=101)

    x, y = red_centroid(patch)
    assert abs(x - 50) <= 1
    assert abs(y - 50) <= 1
    # The mark is 10 px from the left and bottom edges: columns left of 50 - 10 and rows below 50 + 10 are
    # outside the slide. Stay 3 px clear of the edge, where the Lanczos filter blends grey and white.
    assert (patch[:, : 50 - 10 - 3] == 255).all()
    assert (patch[50 + 10 + 3 :, :] == 255).all()
    # Inside the slide, away from the mark and from JPEG ringing around it, the patch is the slide's grey.
    assert (np.abs(patch[:30, 70:].astype(int) - GREY) <= 3).all()


def test_crop_outside_image_is_white(fullres_image):
    patch = fullres_image.crop(-500, -500, size=64, out_size=32)

    assert (patch == 255).all()


def test_crop_many_matches_crop(fullres_image):
    xy = np.array([MARK, EDGE_MARK, (1000, 700)], dtype=float)

    patches = fullres_image.crop_many(xy, size=80, out_size=32)

    assert patches.shape == (3, 32, 32, 3)
    assert patches.dtype == np.uint8
    for patch, (x, y) in zip(patches, xy):
        np.testing.assert_array_equal(patch, fullres_image.crop(x, y, size=80, out_size=32))


def test_crop_many_empty(fullres_image):
    assert fullres_image.crop_many(np.zeros((0, 2)), size=80, out_size=16).shape == (0, 16, 16, 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": 0, "out_size": 32}, "size must be"),
        ({"size": float("nan"), "out_size": 32}, "size must be"),
        ({"size": 50, "out_size": 0}, "out_size must be"),
        ({"size": 50, "out_size": 32.0}, "out_size must be"),
    ],
)
def test_crop_rejects_bad_arguments(fullres_image, arguments, message):
    with pytest.raises(ValueError, match=message):
        fullres_image.crop(*MARK, **arguments)


def test_crop_many_rejects_bad_shape(fullres_image):
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        fullres_image.crop_many(np.zeros((3, 3)), size=50, out_size=16)


def test_jpeg_decoded_once(tmp_path):
    path = save_slide(tmp_path, "jpg")
    image = open_tissue_image(adata_with_image(fullres_path=path))
    first = image.crop(*MARK, size=101, out_size=101)
    path.unlink()

    second = image.crop(*MARK, size=101, out_size=101)

    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("source", ["hires", "lowres"])
def test_scaled_image_centres_mark(source):
    scale = 0.25 if source == "hires" else 0.1
    scaled = Image.fromarray(make_slide()).resize((round(WIDTH * scale), round(HEIGHT * scale)), Image.Resampling.BOX)
    adata = adata_with_image(
        images={source: np.asarray(scaled)},
        scalefactors={f"tissue_{source}_scalef": scale, "spot_diameter_fullres": 50.0},
    )

    if source == "lowres":
        with pytest.warns(UserWarning, match="coarse"):
            image = open_tissue_image(adata)
    else:
        image = open_tissue_image(adata)
    # 400 full-resolution pixels hold the 13 px mark at 100 or 40 source pixels; out_size 100 upsamples lowres.
    patch = image.crop(*MARK, size=400, out_size=100)

    assert image.source == source
    assert image.scale == scale
    assert image.width_fullres == WIDTH
    assert image.height_fullres == HEIGHT
    x, y = red_centroid(patch)
    assert abs(x - 49.5) <= 1
    assert abs(y - 49.5) <= 1


def test_missing_scalefactor_for_hires_raises():
    adata = adata_with_image(
        images={"hires": np.zeros((10, 10, 3), np.uint8)}, scalefactors={"spot_diameter_fullres": 5}
    )

    with pytest.raises(VisiumReadError, match="tissue_hires_scalef"):
        open_tissue_image(adata)


def test_no_image_raises():
    with pytest.raises(VisiumReadError, match="no tissue image"):
        open_tissue_image(adata_with_image())


def test_missing_uns_spatial_raises():
    with pytest.raises(ValueError, match="read_visium"):
        open_tissue_image(ad.AnnData(np.zeros((1, 1), dtype=np.float32)))


def test_unknown_library_id_raises(tmp_path):
    with pytest.raises(ValueError, match="'other' not found"):
        open_tissue_image(adata_with_image(), library_id="other")


def test_fullres_not_an_image_raises(tmp_path):
    path = tmp_path / "slide.jpg"
    path.write_text("this is not a JPEG")

    with pytest.raises(VisiumReadError, match="slide.jpg") as error:
        open_tissue_image(adata_with_image(fullres_path=path))
    assert error.value.path == path


def test_fullres_tiff_not_an_image_raises(tmp_path):
    path = tmp_path / "slide.tif"
    path.write_text("this is not a TIFF")

    with pytest.raises(VisiumReadError, match="slide.tif"):
        open_tissue_image(adata_with_image(fullres_path=path))


def test_fullres_missing_file_raises(tmp_path):
    with pytest.raises(VisiumReadError, match="gone.jpg"):
        open_tissue_image(adata_with_image(fullres_path=tmp_path / "gone.jpg"))


def test_fullres_too_large_raises(tmp_path, monkeypatch):
    path = save_slide(tmp_path, "png")
    monkeypatch.setattr(images_module, "MAX_DECODED_PIXELS", WIDTH * HEIGHT - 1)

    with pytest.raises(VisiumReadError, match="slide.png") as error:
        open_tissue_image(adata_with_image(fullres_path=path))
    assert "tiled TIFF" in str(error.value)


# Real data: patches cut from the full-resolution JPEG and from the hires PNG show the same tissue.


@pytest.fixture(scope="module")
def her2st_sample(shared_data_dir):
    samples = [sample for sample in list_samples(shared_data_dir) if sample.name.startswith("her2st")]
    if not samples:
        pytest.skip(f"no her2st sample in {shared_data_dir}")
    return read_visium(samples[0])


def test_fullres_and_hires_patches_agree(her2st_sample):
    library = next(iter(her2st_sample.uns["spatial"].values()))
    xy = her2st_sample.obsm["spatial"][:: max(1, her2st_sample.n_obs // 20)]
    size = 2 * library["scalefactors"]["spot_diameter_fullres"]
    fullres = open_tissue_image(her2st_sample)
    without_fullres = her2st_sample.copy()
    next(iter(without_fullres.uns["spatial"].values()))["metadata"]["fullres_path"] = None
    hires = open_tissue_image(without_fullres)

    from_fullres = fullres.crop_many(xy, size=size, out_size=32).astype(float)
    from_hires = hires.crop_many(xy, size=size, out_size=32).astype(float)
    same_spot = np.abs(from_fullres - from_hires).mean()
    other_spot = np.abs(from_fullres - np.roll(from_hires, 1, axis=0)).mean()

    assert fullres.source == "fullres"
    assert hires.source == "hires"
    assert abs(fullres.width_fullres - hires.width_fullres) <= 0.01 * fullres.width_fullres
    assert same_spot < 0.5 * other_spot
