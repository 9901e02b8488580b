"""A level-of-detail pyramid of a tissue image, for viewing the full-resolution H&E at any zoom.

Level 0 contains full-resolution pixels, level ``L`` one pixel per ``2**L`` full-resolution pixels. Each level
is cut into square JPEG tiles, made on first use and kept in a cache folder. A view sends the browser only the
pixels of its own window and zoom, and a second visit reads a few small files.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

TILE_SIZE = 512
JPEG_QUALITY = 90


class TilePyramid:
    """Tiles of ``image`` (a :class:`stdiff.io.TissueImage`), cached as JPEG files under ``cache_dir``.

    ``key`` names the image in the cache. By default it is made from the image file's path, size and
    modification time, so an edited image gets new tiles. Without a cache folder, or for an image held in
    memory (no file) without a ``key``, tiles stay in memory.
    """

    def __init__(self, image, cache_dir: str | Path | None = None, *, key: str | None = None,
                 tile_size: int = TILE_SIZE) -> None:
        if tile_size < 16:
            raise ValueError(f"tile_size must be at least 16 pixels, got {tile_size}.")
        self.image = image
        self.tile_size = int(tile_size)
        self.width = image.width_fullres
        self.height = image.height_fullres
        # The coarsest level fits in one tile.
        self.n_levels = max(1, math.ceil(math.log2(max(self.width, self.height) / self.tile_size)) + 1)
        on_disk = cache_dir is not None and (key is not None or image.path is not None)
        self.folder = Path(cache_dir) / (key or _image_key(image, self.tile_size)) if on_disk else None
        self._memory: dict[tuple[int, int, int], np.ndarray] = {}

    def level_shape(self, level: int) -> tuple[int, int]:
        """(height, width) of a level in its own pixels."""
        factor = 2**level
        return math.ceil(self.height / factor), math.ceil(self.width / factor)

    def level_for(self, downsample: float) -> int:
        """Return the coarsest level that still has at least one pixel per displayed pixel at ``downsample``
        full-resolution pixels per displayed pixel."""
        if downsample <= 1:
            return 0
        return min(self.n_levels - 1, int(math.floor(math.log2(downsample))))

    def tile(self, level: int, column: int, row: int) -> np.ndarray:
        """Return the tile at ``column``, ``row`` of ``level``: uint8 (h, w, 3), smaller than the tile size at the
        right and bottom edges."""
        height, width = self.level_shape(level)
        columns, rows = math.ceil(width / self.tile_size), math.ceil(height / self.tile_size)
        if not (0 <= level < self.n_levels and 0 <= column < columns and 0 <= row < rows):
            raise IndexError(f"No tile ({level}, {column}, {row}): level {level} has {columns} x {rows} tiles "
                             f"and the pyramid {self.n_levels} levels.")
        key = (level, column, row)
        if key in self._memory:
            return self._memory[key]
        path = self.folder / str(level) / f"{row}_{column}.jpg" if self.folder is not None else None
        if path is not None and path.is_file():
            try:
                with Image.open(path) as stored:
                    return np.asarray(stored.convert("RGB"))
            except OSError:
                logger.warning("Tile %s is unreadable; making it again.", path)
        pixels = self._make_tile(level, column, row, width, height)
        if path is None:
            self._memory[key] = pixels
            return pixels
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(buffer.getvalue())
            tmp.replace(path)
        except OSError as error:
            # A read-only or full cache folder only costs speed: keep this pyramid's tiles in memory instead.
            logger.warning("Cannot write image tiles to %s (%s); keeping them in memory. Set STDIFF_CACHE_DIR to a "
                           "writable folder to keep them between sessions.", self.folder, error)
            self.folder = None
            self._memory[key] = pixels
        return pixels

    def _make_tile(self, level: int, column: int, row: int, width: int, height: int) -> np.ndarray:
        factor = 2**level
        left, top = column * self.tile_size, row * self.tile_size
        out_width = min(self.tile_size, width - left)
        out_height = min(self.tile_size, height - top)
        return self.image.read_region(left * factor, top * factor, (left + out_width) * factor,
                                      (top + out_height) * factor, out_width=out_width, out_height=out_height)

    def view(self, left: float, top: float, right: float, bottom: float, *, out_width: int,
             out_height: int) -> np.ndarray:
        """Draw the full-resolution rectangle (left, top, right, bottom) at ``out_width`` x ``out_height``,
        stitched from the tiles of the level that matches that zoom. Outside the image is white."""
        if not all(math.isfinite(v) for v in (left, top, right, bottom)) or right <= left or bottom <= top:
            raise ValueError(f"View ({left}, {top}, {right}, {bottom}) must have finite edges with right > left and "
                             "bottom > top.")
        if out_width < 1 or out_height < 1:
            raise ValueError(f"View size must be at least 1 x 1 pixels, got {out_width} x {out_height}.")
        out = np.full((out_height, out_width, 3), 255, dtype=np.uint8)
        level = self.level_for(min((right - left) / out_width, (bottom - top) / out_height))
        factor = 2**level
        height, width = self.level_shape(level)
        # The rectangle in level pixels, and the part of it inside the image.
        x0, y0, x1, y1 = left / factor, top / factor, right / factor, bottom / factor
        inside = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
        # Where that part lands in the output, in whole output pixels.
        scale_x, scale_y = out_width / (x1 - x0), out_height / (y1 - y0)
        out_left, out_right = round((inside[0] - x0) * scale_x), round((inside[2] - x0) * scale_x)
        out_top, out_bottom = round((inside[1] - y0) * scale_y), round((inside[3] - y0) * scale_y)
        if out_right <= out_left or out_bottom <= out_top:
            return out  # the view lies outside the image
        # Snap the part inside to the output pixel grid, so that the pasted block is not stretched.
        inside = (x0 + out_left / scale_x, y0 + out_top / scale_y, x0 + out_right / scale_x, y0 + out_bottom / scale_y)
        first_column, first_row = int(inside[0] // self.tile_size), int(inside[1] // self.tile_size)
        last_column = min(math.ceil(width / self.tile_size), math.ceil(inside[2] / self.tile_size))
        last_row = min(math.ceil(height / self.tile_size), math.ceil(inside[3] / self.tile_size))
        canvas = np.full(((last_row - first_row) * self.tile_size, (last_column - first_column) * self.tile_size, 3),
                         255, dtype=np.uint8)
        for row in range(first_row, last_row):
            for column in range(first_column, last_column):
                pixels = self.tile(level, column, row)
                y, x = (row - first_row) * self.tile_size, (column - first_column) * self.tile_size
                canvas[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        origin_x, origin_y = first_column * self.tile_size, first_row * self.tile_size
        box = (inside[0] - origin_x, inside[1] - origin_y, inside[2] - origin_x, inside[3] - origin_y)
        part = Image.fromarray(canvas).resize((out_right - out_left, out_bottom - out_top), Image.Resampling.LANCZOS,
                                              box=box)
        out[out_top:out_bottom, out_left:out_right] = np.asarray(part)
        return out


def _image_key(image, tile_size: int) -> str:
    stat = Path(image.path).stat()
    identity = f"{Path(image.path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{image.scale}|{tile_size}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]
