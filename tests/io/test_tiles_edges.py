"""TilePyramid caches shared between tile sizes, and the Tissue viewer on very thin images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from stdiff.io.images import TissueImage, _PillowReader
from stdiff.tiles import TilePyramid
from stdiff_app.viewer import make_window


def _gradient_image(path, *, width: int, height: int) -> TissueImage:
    """Save a smooth RGB gradient (JPEG tiles keep it within a few levels) and open it as a full-resolution image."""
    rows, columns = np.mgrid[0:height, 0:width]
    pixels = np.stack([columns * 255 // max(width - 1, 1), rows * 255 // max(height - 1, 1),
                       np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return TissueImage(_PillowReader(path), source="fullres", scale=1.0, path=path)


def test_cache_shared_between_tile_sizes(tmp_path):
    image = _gradient_image(tmp_path / "image.png", width=1200, height=1500)
    source = np.asarray(Image.open(tmp_path / "image.png").convert("RGB"), dtype=np.int16)
    cache = tmp_path / "cache"
    TilePyramid(image, cache, tile_size=256).view(0, 0, 1200, 1500, out_width=1200, out_height=1500)

    view = TilePyramid(image, cache).view(0, 0, 1200, 1500, out_width=1200, out_height=1500)

    assert np.abs(view.astype(np.int16) - source).max() <= 8


def test_whole_view_of_thin_image(tmp_path):
    image = _gradient_image(tmp_path / "strip.png", width=2000, height=1)
    pyramid = TilePyramid(image, tmp_path / "cache")

    window = make_window(pyramid, 1, None)

    assert window.width >= 1
    assert window.height >= 1
    pixels = pyramid.view(window.left, window.top, window.right, window.bottom, out_width=window.width,
                          out_height=window.height)
    assert pixels.shape == (window.height, window.width, 3)
