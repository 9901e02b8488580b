"""A level-of-detail pyramid of a tissue image, for viewing the full-resolution H&E at any zoom.

Level 0 holds full-resolution pixels, level ``L`` one pixel per ``2**L`` full-resolution pixels. Each level
is cut into square JPEG tiles, made on first use and kept in a cache folder, so that a view sends the browser
only the pixels of its own window and zoom, and a second visit reads a few small files.
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

    ``key`` names the image in the cache; by default it is made from the image file's path, size and
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
        self.folder = Path(cache_dir) / (key or _image_key(image)) if on_disk else None
        self._memory: dict[tuple[int, int, int], np.ndarray] = {}

    def level_shape(self, level: int) -> tuple[int, int]:
        """(height, width) of a level in its own pixels."""
        factor = 2**level
        return math.ceil(self.height / factor), math.ceil(self.width / factor)

    def level_for(self, downsample: float) -> int:
        """The coarsest level that still has at least one pixel per displayed pixel at ``downsample``
        full-resolution pixels per displayed pixel."""
        if downsample <= 1:
            return 0
        return min(self.n_levels - 1, int(math.floor(math.log2(downsample))))

    def tile(self, level: int, column: int, row: int) -> np.ndarray:
        """The tile at ``column``, ``row`` of ``level``: uint8 (h, w, 3), smaller than the tile size at the right
        and bottom edges."""
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
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(buffer.getvalue())
            tmp.replace(path)
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
        if right <= left or bottom <= top or out_width < 1 or out_height < 1:
            raise ValueError(f"View ({left}, {top}, {right}, {bottom}) at {out_width} x {out_height} pixels is "
                             "empty.")
        level = self.level_for(min((right - left) / out_width, (bottom - top) / out_height))
        factor = 2**level
        height, width = self.level_shape(level)
        # The rectangle in level pixels, and the tiles it touches.
        x0, y0, x1, y1 = left / factor, top / factor, right / factor, bottom / factor
        first_column, first_row = max(0, int(x0 // self.tile_size)), max(0, int(y0 // self.tile_size))
        last_column = min(math.ceil(width / self.tile_size), math.ceil(x1 / self.tile_size))
        last_row = min(math.ceil(height / self.tile_size), math.ceil(y1 / self.tile_size))
        origin_x, origin_y = first_column * self.tile_size, first_row * self.tile_size
        canvas = np.full((max(1, (last_row - first_row) * self.tile_size),
                          max(1, (last_column - first_column) * self.tile_size), 3), 255, dtype=np.uint8)
        for row in range(first_row, last_row):
            for column in range(first_column, last_column):
                pixels = self.tile(level, column, row)
                y, x = (row - first_row) * self.tile_size, (column - first_column) * self.tile_size
                canvas[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        # Pad with white where the view reaches past the image, then resample the exact box.
        pad_left, pad_top = max(0, math.ceil(origin_x - x0)), max(0, math.ceil(origin_y - y0))
        pad_right = max(0, math.ceil(x1 - (origin_x + canvas.shape[1])))
        pad_bottom = max(0, math.ceil(y1 - (origin_y + canvas.shape[0])))
        canvas = np.pad(canvas, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)), constant_values=255)
        box = (x0 - origin_x + pad_left, y0 - origin_y + pad_top, x1 - origin_x + pad_left, y1 - origin_y + pad_top)
        resized = Image.fromarray(canvas).resize((out_width, out_height), Image.Resampling.LANCZOS, box=box)
        return np.asarray(resized)


def _image_key(image) -> str:
    stat = Path(image.path).stat()
    identity = f"{Path(image.path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{image.scale}|{TILE_SIZE}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]
