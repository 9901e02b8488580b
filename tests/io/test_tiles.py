"""Tests for the level-of-detail tile pyramid (stdiff.tiles) and TissueImage.read_region behind it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import stdiff.io.images as images_module
from stdiff.io.images import TissueImage, _open_fullres
from stdiff.tiles import TilePyramid


@pytest.fixture()
def image_file(tmp_path):
    """A 1500 x 1100 RGB PNG with smooth gradients and a sharp checkerboard, so resampling errors show."""
    rows, columns = np.mgrid[0:1100, 0:1500]
    pixels = np.stack([columns * 255 // 1499, rows * 255 // 1099, ((rows // 40 + columns // 40) % 2) * 200],
                      axis=-1).astype(np.uint8)
    path = tmp_path / "tissue_fullres.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def _open(path) -> TissueImage:
    return TissueImage(_open_fullres(path), source="fullres", scale=1.0, path=path)


def test_read_region_full_resolution_is_exact(image_file):
    path, pixels = image_file

    region = _open(path).read_region(100, 200, 420, 330, out_width=320, out_height=130)

    np.testing.assert_array_equal(region, pixels[200:330, 100:420])


def test_read_region_outside_is_white(image_file):
    path, _ = image_file

    region = _open(path).read_region(-200, -100, -10, -5, out_width=19, out_height=19)

    assert (region == 255).all()


def test_read_region_strips_match_one_read(image_file, monkeypatch):
    path, _ = image_file
    whole = _open(path).read_region(0, 0, 1500, 1100, out_width=300, out_height=220)
    monkeypatch.setattr(images_module, "STRIP_PIXELS", 50_000)

    stripped = _open(path).read_region(0, 0, 1500, 1100, out_width=300, out_height=220)

    assert np.abs(whole.astype(int) - stripped).mean() < 1.0


@pytest.mark.parametrize("edges", [(10, 10, 10, 20), (0, 0, float("nan"), 5), (5, 5, 4, 9)])
def test_read_region_rejects_empty(image_file, edges):
    path, _ = image_file
    with pytest.raises(ValueError, match="right > left"):
        _open(path).read_region(*edges, out_width=4, out_height=4)


def test_pyramid_levels(image_file):
    path, _ = image_file
    pyramid = TilePyramid(_open(path), tile_size=256)

    assert pyramid.n_levels == 4  # 1500 px: 256-px tiles at levels 0-2, one tile at level 3
    assert pyramid.level_shape(0) == (1100, 1500)
    assert pyramid.level_shape(3) == (138, 188)
    assert [pyramid.level_for(d) for d in (0.5, 1, 1.9, 2, 7.9, 8, 100)] == [0, 0, 0, 1, 2, 3, 3]


def test_pyramid_edge_tile_and_bad_index(image_file):
    path, pixels = image_file
    pyramid = TilePyramid(_open(path), tile_size=256)

    edge = pyramid.tile(0, 5, 4)

    np.testing.assert_array_equal(edge, pixels[1024:1100, 1280:1500])
    with pytest.raises(IndexError, match="level 0 has 6 x 5 tiles"):
        pyramid.tile(0, 6, 0)


def test_pyramid_view_at_full_resolution_matches_image(image_file):
    path, pixels = image_file
    pyramid = TilePyramid(_open(path), tile_size=256)

    view = pyramid.view(300, 250, 700, 550, out_width=400, out_height=300)

    np.testing.assert_array_equal(view, pixels[250:550, 300:700])


def test_pyramid_coarse_view_matches_direct_read(image_file):
    path, _ = image_file
    image = _open(path)
    pyramid = TilePyramid(image, tile_size=256)

    view = pyramid.view(0, 0, 1500, 1100, out_width=150, out_height=110)
    direct = image.read_region(0, 0, 1500, 1100, out_width=150, out_height=110)

    assert pyramid.level_for(10) == 3
    assert np.abs(view.astype(int) - direct).mean() < 4.0


def test_pyramid_view_past_the_edge_is_white(image_file):
    path, _ = image_file
    pyramid = TilePyramid(_open(path), tile_size=256)

    view = pyramid.view(1400, 1000, 1600, 1200, out_width=200, out_height=200)

    assert (view[150:, :] == 255).all()
    assert (view[:, 150:] == 255).all()
    assert not (view[:90, :90] == 255).all()


def test_pyramid_disk_cache(image_file, tmp_path):
    path, _ = image_file
    cache = tmp_path / "tiles"
    first = TilePyramid(_open(path), cache, tile_size=256)
    view = first.view(0, 0, 512, 512, out_width=512, out_height=512)
    files = sorted(cache.rglob("*.jpg"))

    second = TilePyramid(_open(path), cache, tile_size=256)
    again = second.view(0, 0, 512, 512, out_width=512, out_height=512)

    assert len(files) == 4
    assert np.abs(view.astype(int) - again).mean() < 3.0  # JPEG, quality 90
    # A changed image file gets a new cache folder.
    os.utime(path, ns=(1, 1))
    assert TilePyramid(_open(path), cache, tile_size=256).folder != first.folder


def test_pyramid_unreadable_tile_is_made_again(image_file, tmp_path):
    path, pixels = image_file
    pyramid = TilePyramid(_open(path), tmp_path / "tiles", tile_size=256)
    pyramid.tile(0, 0, 0)
    tile_path = next((tmp_path / "tiles").rglob("0_0.jpg"))
    tile_path.write_bytes(b"not a jpeg")

    tile = TilePyramid(_open(path), tmp_path / "tiles", tile_size=256).tile(0, 0, 0)

    assert np.abs(tile.astype(int) - pixels[:256, :256]).mean() < 3.0


def test_pyramid_unwritable_cache_keeps_tiles_in_memory(image_file, tmp_path, caplog):
    path, pixels = image_file
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("a file where the cache folder should be")
    pyramid = TilePyramid(_open(path), not_a_folder, tile_size=256)

    view = pyramid.view(0, 0, 256, 256, out_width=256, out_height=256)

    np.testing.assert_array_equal(view, pixels[:256, :256])
    assert pyramid.folder is None
    assert "keeping them in memory" in caplog.text


def test_pyramid_view_much_larger_than_image(image_file):
    path, _ = image_file
    pyramid = TilePyramid(_open(path), tile_size=256)

    view = pyramid.view(0, 0, 1e7, 1e7, out_width=10, out_height=10)

    assert view.shape == (10, 10, 3)
    assert (view[1:, :] == 255).all()
    assert (view[:, 1:] == 255).all()


@pytest.mark.parametrize("edges", [(0, 0, float("nan"), 5), (0, float("-inf"), 5, 5), (5, 5, 5, 9)])
def test_pyramid_view_rejects_bad_edges(image_file, edges):
    path, _ = image_file
    with pytest.raises(ValueError, match="finite edges"):
        TilePyramid(_open(path), tile_size=256).view(*edges, out_width=4, out_height=4)
