"""Tissue images of a Visium sample: opening the best one and cropping patches around spots.

Coordinates follow ``obsm["spatial"]``: (x, y) in full-resolution pixels, x along image columns and y along
image rows, with the centre of pixel (column i, row j) at (i, j).

Importing this module raises Pillow's decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS`` to
``MAX_DECODED_PIXELS`` (unless it is already higher or disabled), because full-resolution H&E slides exceed
Pillow's default of about 89 million pixels.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import anndata as ad
import numpy as np
from PIL import Image, UnidentifiedImageError

from stdiff.constants import (
    HIRES_SCALEF,
    IMAGES_KEY,
    LOWRES_SCALEF,
    METADATA_KEY,
    SCALEFACTORS_KEY,
    SPATIAL_KEY,
)
from stdiff.io.errors import VisiumReadError

logger = logging.getLogger(__name__)

# Largest image decoded fully into memory (3 bytes a pixel, so about 4.5 GB). TIFF files are read lazily
# and are not limited.
MAX_DECODED_PIXELS = 1_500_000_000
TIFF_SUFFIXES = (".tif", ".tiff")
# Decoded TIFF tiles kept per open image: about 1,300 tiles of 256 x 256 RGB pixels.
TILE_CACHE_BYTES = 256 * 1024**2
# Classic TIFF and BigTIFF, little- and big-endian.
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
WHITE = 255

if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_DECODED_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_DECODED_PIXELS


def is_tiff(path: Path) -> bool:
    """Return True when ``path`` starts with a TIFF or BigTIFF signature, whatever its suffix.

    The content decides, so a JPEG saved as ``.tif`` is decoded with Pillow and a TIFF saved as ``.jpg`` lazily
    with tifffile. A file that cannot be opened falls back to its suffix, and the reader then reports it.
    """
    try:
        with path.open("rb") as handle:
            signature = handle.read(4)
    except OSError:
        return path.suffix.lower() in TIFF_SUFFIXES
    return signature in TIFF_SIGNATURES


def broken_link_note(path: Path) -> str:
    """Return ", a symbolic link to the missing TARGET" when ``path`` is a dangling link, else ""."""
    if path.is_symlink() and not path.exists():
        return f", a symbolic link to the missing {path.readlink()}"
    return ""


def _too_large_error(path: Path, width: int, height: int) -> VisiumReadError:
    return VisiumReadError(
        f"{path} is {width} x {height} pixels ({width * height:,}), more than the {MAX_DECODED_PIXELS:,} "
        "pixels stdiff decodes into memory. Convert it to a tiled TIFF (for example with "
        "`vips tiffsave in.jpg out.tif --tile --compression deflate`), which is read lazily.",
        path=path,
    )


def _not_an_image_error(path: Path, error: Exception) -> VisiumReadError:
    return VisiumReadError(
        f"Could not read {path} as an image: {type(error).__name__}: {error}. Expected a PNG, JPEG or TIFF "
        "H&E image; replace the file with a valid image or move it out of the sample folder.",
        path=path,
    )


def _open_pil(path: Path) -> Image.Image:
    """Open an image with Pillow (header only), raising VisiumReadError when it is not one or too large."""
    try:
        with warnings.catch_warnings():
            # Images between the limit and twice the limit only warn in Pillow; the size check below raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise VisiumReadError(
            f"{path} has more than {2 * MAX_DECODED_PIXELS:,} pixels, too many to decode into memory. "
            "Convert it to a tiled TIFF, which is read lazily.",
            path=path,
        ) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise _not_an_image_error(path, error) from error
    width, height = image.size
    if width * height > MAX_DECODED_PIXELS:
        image.close()
        raise _too_large_error(path, width, height)
    return image


def _pil_to_rgb(image: Image.Image, *, path: Path) -> Image.Image:
    """Decode an image and return it as 8-bit RGB."""
    try:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: scale to 8 bits before Pillow clips it.
            values = np.asarray(image, dtype=np.float64)
            scaled = np.clip(values / max(values.max(), 1.0) * 255.0, 0, 255).astype(np.uint8)
            return Image.fromarray(scaled).convert("RGB")
        if image.mode != "RGB":
            return image.convert("RGB")
        image.load()
        return image
    except (OSError, ValueError, SyntaxError) as error:
        raise _not_an_image_error(path, error) from error


def read_image_size(path: Path) -> tuple[int, int]:
    """Return (width, height) of an image file, reading only its header.

    Raises
    ------
    VisiumReadError
        When the file is not a readable PNG, JPEG or TIFF image.
    """
    if is_tiff(path):
        reader = _TiffReader(path)
        size = (reader.width, reader.height)
        reader.close()
        return size
    with _open_pil(path) as image:
        return image.size


def load_rgb_image(path: Path) -> np.ndarray:
    """Read a whole image file as a uint8 array of shape (height, width, 3).

    Raises
    ------
    VisiumReadError
        When the file is not a readable image, or too large to decode.
    """
    with _open_pil(path) as image:
        rgb = _pil_to_rgb(image, path=path)
        return np.asarray(rgb, dtype=np.uint8).copy()


STRIP_PIXELS = 64_000_000  # source pixels read at once by TissueImage.read_region


class _RegionReader(Protocol):
    """Source of RGB pixels from one image, in source-image pixels."""

    width: int
    height: int

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        """Return pixels [top:bottom, left:right] as uint8 (bottom - top, right - left, 3); in bounds only."""
        ...

    def close(self) -> None: ...


class _ArrayReader:
    """Pixels of an image already in memory, such as ``uns["spatial"][library_id]["images"]["hires"]``."""

    def __init__(self, array: np.ndarray) -> None:
        array = np.asarray(array)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] < 3:
            raise ValueError(f"Expected an image array of shape (height, width, 3); got shape {array.shape}.")
        if array.dtype != np.uint8:
            # Images stored by scanpy are float in [0, 1].
            scale = 255.0 if np.issubdtype(array.dtype, np.floating) and array.max() <= 1.0 else 1.0
            array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
        self._array = array[:, :, :3]
        self.height, self.width = self._array.shape[:2]

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        return self._array[top:bottom, left:right]

    def close(self) -> None:
        pass


class _PillowReader:
    """Pixels of a JPEG or PNG file, decoded once on the first read and kept for later crops."""

    def __init__(self, path: Path) -> None:
        self._path = path
        with _open_pil(path) as image:
            self.width, self.height = image.size
        self._decoded: Image.Image | None = None
        self._lock = threading.Lock()

    def _image(self) -> Image.Image:
        with self._lock:
            if self._decoded is None:
                logger.info("Decoding %s (%d x %d pixels).", self._path, self.width, self.height)
                self._decoded = _pil_to_rgb(_open_pil(self._path), path=self._path)
            return self._decoded

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        return np.asarray(self._image().crop((left, top, right, bottom)))

    def close(self) -> None:
        with self._lock:
            if self._decoded is not None:
                self._decoded.close()
                self._decoded = None


class _TiffReader:
    """Pixels of level 0 of a TIFF file, read lazily: only the strips or tiles a crop touches are decoded.

    Uncompressed contiguous images are memory-mapped. Tiled images with interleaved channels (the usual
    layout of whole-slide and OME-TIFF files) are decoded tile by tile through :class:`_TileCache`; others are
    read through tifffile's zarr store.
    """

    def __init__(self, path: Path) -> None:
        import tifffile

        self._path = path
        try:
            self._file = tifffile.TiffFile(path)
            series = self._file.series[0]
            axes, shape, dtype = series.axes, series.shape, series.dtype
        except (tifffile.TiffFileError, OSError, ValueError, IndexError) as error:
            raise _not_an_image_error(path, error) from error

        self._layout = self._parse_axes(axes, shape)
        if dtype not in (np.uint8, np.uint16):
            self._file.close()
            raise VisiumReadError(
                f"{path} stores {dtype} pixels; expected 8-bit or 16-bit RGB or greyscale. Convert it to 8-bit "
                "RGB.",
                path=path,
            )
        self._dtype = np.dtype(dtype)
        self.height, self.width = self._layout[1]
        self._pixels = self._open_lazily(series)

    def _parse_axes(self, axes: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, int]]:
        """Return the channel layout ("YXS", "SYX" or "YX") and (height, width), dropping length-1 axes."""
        image_axes = [(axis, length) for axis, length in zip(axes, shape) if length > 1 or axis in "YX"]
        layout = "".join(axis if axis in "YX" else "S" for axis, _ in image_axes)
        lengths = dict(image_axes)
        if layout not in ("YXS", "SYX", "YX") or (layout != "YX" and image_axes[layout.index("S")][1] not in (3, 4)):
            self._file.close()
            raise VisiumReadError(
                f"{self._path} has TIFF axes {axes} with shape {shape}; expected one RGB or greyscale image "
                "(axes YXS, SYX or YX). Save the full-resolution H&E image as a single RGB TIFF.",
                path=self._path,
            )
        return layout, (lengths["Y"], lengths["X"])

    def _open_lazily(self, series) -> np.ndarray:
        import tifffile

        squeeze = tuple(
            0 if length == 1 and axis not in "YX" else slice(None) for axis, length in zip(series.axes, series.shape)
        )
        try:
            return tifffile.memmap(self._path, mode="r")[squeeze]
        except ValueError:
            pass  # Compressed or non-contiguous: decode tiles below.
        try:
            pixels = _TileCache.open(self._file, series, layout=self._layout[0])
            if pixels is None:
                import zarr

                pixels = _ZarrView(zarr.open(series.aszarr(level=0), mode="r"), squeeze)
            pixels[:1, :1]  # decode one tile now so a missing codec fails here, naming the file
            return pixels
        except Exception as error:  # noqa: BLE001 - zarr and codec errors vary; all are reported the same way
            self._file.close()
            raise VisiumReadError(
                f"Could not decode {self._path} ({self._file.pages[0].compression.name} compression): "
                f"{type(error).__name__}: {error}. Install the package named in the error (JPEG-compressed "
                "TIFF files need `imagecodecs`) or save the image as an uncompressed or deflate TIFF.",
                path=self._path,
            ) from error

    def read(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        layout = self._layout[0]
        if layout == "YXS":
            region = np.asarray(self._pixels[top:bottom, left:right])[:, :, :3]
        elif layout == "SYX":
            region = np.moveaxis(np.asarray(self._pixels[:3, top:bottom, left:right]), 0, -1)
        else:
            region = np.repeat(np.asarray(self._pixels[top:bottom, left:right])[:, :, None], 3, axis=2)
        if self._dtype == np.uint16:
            region = (region.astype(np.uint32) // 257).astype(np.uint8)
        return region

    def close(self) -> None:
        self._file.close()


class _TileCache:
    """Level 0 of a tiled TIFF page, sliced like an array; decoded tiles are kept up to ``TILE_CACHE_BYTES``.

    Neighbouring spots share tiles, so patches cut in spatial order decode most tiles once. Tiles are read
    from the file under a lock, because the file handle is shared.
    """

    def __init__(self, tiff_file, page) -> None:
        self._handle = tiff_file.filehandle
        self._page = page
        self._tile_height, self._tile_width = page.tilelength, page.tilewidth
        self._samples = page.samplesperpixel
        self._tiles_across = -(-page.imagewidth // page.tilewidth)
        self._decode = page.decode
        tile_bytes = self._tile_height * self._tile_width * self._samples * page.dtype.itemsize
        self._max_tiles = max(16, TILE_CACHE_BYTES // tile_bytes)
        self._tiles: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.dtype = page.dtype

    @classmethod
    def open(cls, tiff_file, series, *, layout: str) -> _TileCache | None:
        """Return a tile cache for level 0 of ``series``, or None when its layout needs the zarr store."""
        pages = series.levels[0].pages if series.levels else series.pages
        if len(pages) != 1 or layout not in ("YXS", "YX"):
            return None
        page = pages[0]
        if page is None or not page.is_tiled or page.imagedepth != 1 or page.planarconfig != 1:
            return None
        return cls(tiff_file, page)

    def _tile(self, index: int) -> np.ndarray:
        with self._lock:
            tile = self._tiles.get(index)
            if tile is not None:
                self._tiles.move_to_end(index)
                return tile
            self._handle.seek(self._page.dataoffsets[index])
            data = self._handle.read(self._page.databytecounts[index])
        segment = self._decode(data, index, jpegtables=self._page.jpegtables)[0]
        tile = segment.reshape(self._tile_height, self._tile_width, self._samples)
        with self._lock:
            self._tiles[index] = tile
            while len(self._tiles) > self._max_tiles:
                self._tiles.popitem(last=False)
        return tile

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        top, bottom, _ = rows.indices(self._page.imagelength)
        left, right, _ = cols.indices(self._page.imagewidth)
        region = np.empty((max(bottom - top, 0), max(right - left, 0), self._samples), dtype=self.dtype)
        for tile_row in range(top // self._tile_height, -(-bottom // self._tile_height)):
            for tile_col in range(left // self._tile_width, -(-right // self._tile_width)):
                tile = self._tile(tile_row * self._tiles_across + tile_col)
                tile_top, tile_left = tile_row * self._tile_height, tile_col * self._tile_width
                y0, y1 = max(top, tile_top), min(bottom, tile_top + self._tile_height)
                x0, x1 = max(left, tile_left), min(right, tile_left + self._tile_width)
                region[y0 - top : y1 - top, x0 - left : x1 - left] = tile[y0 - tile_top : y1 - tile_top,
                                                                          x0 - tile_left : x1 - tile_left]
        return region[:, :, 0] if self._samples == 1 else region


class _ZarrView:
    """A zarr array with length-1 leading axes indexed away, sliced like the remaining axes."""

    def __init__(self, pixels, squeeze: tuple) -> None:
        self._pixels = pixels
        self._fixed = tuple(index for index in squeeze if not isinstance(index, slice))

    def __getitem__(self, key: tuple) -> np.ndarray:
        return np.asarray(self._pixels[self._fixed + tuple(key)])


class TissueImage:
    """A tissue image opened for cropping square patches around spots.

    Attributes
    ----------
    width_fullres, height_fullres
        Full-resolution pixel extent of the image. For a hires or lowres source this is its size divided by
        ``scale``, rounded.
    source
        "fullres", "hires" or "lowres": which image the pixels come from.
    scale
        Source-image pixels per full-resolution pixel: 1 for "fullres", ``tissue_hires_scalef`` or
        ``tissue_lowres_scalef`` otherwise.
    path
        The image file, or None for an image taken from ``uns["spatial"]``.
    """

    def __init__(self, reader: _RegionReader, *, source: str, scale: float, path: Path | None = None) -> None:
        self._reader = reader
        self.source = source
        self.scale = float(scale)
        self.path = path
        self.width_fullres = int(round(reader.width / self.scale))
        self.height_fullres = int(round(reader.height / self.scale))

    def __repr__(self) -> str:
        return (
            f"TissueImage(source={self.source!r}, scale={self.scale:.6g}, "
            f"fullres={self.width_fullres}x{self.height_fullres}, path={str(self.path) if self.path else None!r})"
        )

    def __enter__(self) -> TissueImage:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle and the decoded pixels."""
        self._reader.close()

    def crop(self, x: float, y: float, *, size: float, out_size: int) -> np.ndarray:
        """Crop a square patch centred on a full-resolution position.

        Parameters
        ----------
        x, y
            Patch centre in full-resolution pixels, as in ``obsm["spatial"]`` (x = column, y = row).
        size
            Side of the square in full-resolution pixels, for example ``spot_diameter_fullres``.
        out_size
            Side of the returned patch in pixels. The square is resampled with Pillow's Lanczos filter,
            which antialiases when shrinking.

        Returns
        -------
        uint8 array of shape (out_size, out_size, 3). Parts of the square outside the image are white (255).
        """
        _check_crop_arguments(size=size, out_size=out_size)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"Patch centre must be finite; got x={x}, y={y}.")
        return self._crop(float(x), float(y), size=float(size), out_size=int(out_size))

    def crop_many(self, xy: np.ndarray, *, size: float, out_size: int) -> np.ndarray:
        """Crop one patch per row of ``xy`` (full-resolution (x, y), shape (N, 2)).

        Returns
        -------
        uint8 array of shape (N, out_size, out_size, 3); see :meth:`crop`.
        """
        _check_crop_arguments(size=size, out_size=out_size)
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"xy must have shape (N, 2) holding full-resolution (x, y); got shape {xy.shape}.")
        if not np.isfinite(xy).all():
            raise ValueError(f"xy contains {int((~np.isfinite(xy)).any(axis=1).sum())} row(s) with NaN or inf.")
        patches = np.empty((len(xy), int(out_size), int(out_size), 3), dtype=np.uint8)
        for index, (x, y) in enumerate(xy):
            patches[index] = self._crop(x, y, size=float(size), out_size=int(out_size))
        return patches

    def read_region(self, left: float, top: float, right: float, bottom: float, *, out_width: int,
                    out_height: int) -> np.ndarray:
        """Read a rectangle given in full-resolution pixels, resampled to ``out_width`` x ``out_height``.

        Edges are continuous coordinates: pixel ``j`` spans ``[j, j + 1)``, so ``read_region(0, 0, w, h, ...)``
        is the whole image.

        Large rectangles are read in horizontal strips, so memory stays near one strip of source pixels
        (about 64 megapixels) however large the image is. Parts outside the image are white.

        Returns
        -------
        uint8 array of shape (out_height, out_width, 3).
        """
        if not all(math.isfinite(v) for v in (left, top, right, bottom)) or right <= left or bottom <= top:
            raise ValueError(f"Region must have finite edges with right > left and bottom > top; got "
                             f"({left}, {top}, {right}, {bottom}).")
        _check_crop_arguments(size=right - left, out_size=out_width)
        _check_crop_arguments(size=bottom - top, out_size=out_height)
        source_pixels_per_row = (right - left) * self.scale * (bottom - top) * self.scale / out_height
        rows_per_strip = max(1, min(out_height, int(STRIP_PIXELS // max(source_pixels_per_row, 1.0))))
        strips = []
        for first in range(0, out_height, rows_per_strip):
            last = min(out_height, first + rows_per_strip)
            strip_top = top + (bottom - top) * first / out_height
            strip_bottom = top + (bottom - top) * last / out_height
            strips.append(self._resample(left, strip_top, right, strip_bottom, out_width, last - first))
        return np.concatenate(strips)

    def _crop(self, x: float, y: float, *, size: float, out_size: int) -> np.ndarray:
        # Pixel i spans [i, i + 1), so the centre of full-resolution pixel x sits at x + 0.5.
        half = size / 2.0
        return self._resample(x + 0.5 - half, y + 0.5 - half, x + 0.5 + half, y + 0.5 + half, out_size, out_size)

    def _resample(self, left: float, top: float, right: float, bottom: float, out_width: int,
                  out_height: int) -> np.ndarray:
        # 1. The rectangle in source pixels. Edges are continuous coordinates with Pillow's convention that pixel
        #    j spans [j, j + 1); scaling maps full-resolution edges to source edges.
        box_left, box_right = left * self.scale, right * self.scale
        box_top, box_bottom = top * self.scale, bottom * self.scale

        # 2. The whole-pixel region to read, with a margin for the Lanczos filter (3 lobes of the larger of one
        #    source pixel and one output pixel).
        shrink = max(1.0, (box_right - box_left) / out_width, (box_bottom - box_top) / out_height)
        margin = math.ceil(3.0 * shrink) + 1
        read_left = math.floor(box_left) - margin
        read_top = math.floor(box_top) - margin
        read_right = math.ceil(box_right) + margin
        read_bottom = math.ceil(box_bottom) + margin

        # 3. Copy the part inside the image onto a white canvas.
        canvas = np.full((read_bottom - read_top, read_right - read_left, 3), WHITE, dtype=np.uint8)
        inside_left, inside_top = max(read_left, 0), max(read_top, 0)
        inside_right, inside_bottom = min(read_right, self._reader.width), min(read_bottom, self._reader.height)
        if inside_left < inside_right and inside_top < inside_bottom:
            rows = slice(inside_top - read_top, inside_bottom - read_top)
            columns = slice(inside_left - read_left, inside_right - read_left)
            canvas[rows, columns] = self._reader.read(inside_top, inside_left, inside_bottom, inside_right)

        # 4. Resample the exact (sub-pixel) box to the output size.
        box = (box_left - read_left, box_top - read_top, box_right - read_left, box_bottom - read_top)
        patch = Image.fromarray(canvas).resize((out_width, out_height), Image.Resampling.LANCZOS, box=box)
        return np.asarray(patch, dtype=np.uint8)


def _check_crop_arguments(*, size: float, out_size: int) -> None:
    if not (isinstance(size, (int, float, np.integer, np.floating)) and math.isfinite(size) and size > 0):
        raise ValueError(f"size must be a positive number of full-resolution pixels; got {size!r}.")
    if isinstance(out_size, bool) or not isinstance(out_size, (int, np.integer)) or out_size < 1:
        raise ValueError(f"out_size must be a positive integer number of pixels; got {out_size!r}.")


def _open_fullres(path: Path) -> _RegionReader:
    if not path.is_file():
        raise VisiumReadError(
            f"Full-resolution image {path} not found{broken_link_note(path)}. Pass fullres_image= to "
            "read_visium with the H&E image Space Ranger was run on, or remove the stale path.",
            path=path,
        )
    if is_tiff(path):
        return _TiffReader(path)
    return _PillowReader(path)


def _resolve_library_id(adata: ad.AnnData, library_id: str | None) -> tuple[str, dict]:
    spatial = adata.uns.get(SPATIAL_KEY)
    if not isinstance(spatial, dict) or not spatial:
        raise ValueError(
            f'adata.uns["{SPATIAL_KEY}"] is missing or empty; read the sample with stdiff.io.read_visium, which '
            "stores the images and scalefactors there."
        )
    if library_id is None:
        if len(spatial) > 1:
            raise ValueError(
                f"adata contains {len(spatial)} libraries {sorted(spatial)}; pass library_id= to choose one."
            )
        library_id = next(iter(spatial))
    if library_id not in spatial:
        raise ValueError(f"library_id {library_id!r} not found; adata contains {sorted(spatial)}.")
    return library_id, spatial[library_id]


def open_tissue_image(adata: ad.AnnData, library_id: str | None = None, *, stored_only: bool = False) -> TissueImage:
    """Open the sharpest image of a library for cropping patches.

    The full-resolution image recorded in ``uns["spatial"][library_id]["metadata"]["fullres_path"]`` is used
    when present. Otherwise the hires image in ``uns`` is used with ``tissue_hires_scalef``, and failing that
    the lowres image with ``tissue_lowres_scalef`` and a ``UserWarning``, because lowres patches are coarse.

    Parameters
    ----------
    adata
        AnnData read by :func:`stdiff.io.read_visium`.
    library_id
        Library in ``uns["spatial"]``; may be omitted when there is only one.
    stored_only
        Skip the full-resolution file and use the hires or lowres image in ``uns``, for example when the
        full-resolution file cannot be decoded.

    Returns
    -------
    TissueImage
        JPEG and PNG files are decoded on the first crop and kept; TIFF files are read lazily.

    Raises
    ------
    ValueError
        When ``uns["spatial"]`` is missing or ``library_id`` is unknown or ambiguous.
    VisiumReadError
        When the full-resolution file is missing or unreadable, a scalefactor is missing, or there is no
        image at all.
    """
    library_id, library = _resolve_library_id(adata, library_id)
    metadata = library.get(METADATA_KEY, {})
    images = library.get(IMAGES_KEY, {})
    scalefactors = library.get(SCALEFACTORS_KEY, {})
    source_dir = metadata.get("source_dir", f'adata.uns["{SPATIAL_KEY}"]["{library_id}"]')

    fullres_path = metadata.get("fullres_path")
    if fullres_path and not stored_only:
        path = Path(fullres_path)
        return TissueImage(_open_fullres(path), source="fullres", scale=1.0, path=path)

    for source, scalef_key in (("hires", HIRES_SCALEF), ("lowres", LOWRES_SCALEF)):
        if source not in images:
            continue
        if scalef_key not in scalefactors:
            raise VisiumReadError(
                f"The scalefactors of library {library_id!r} lack {scalef_key!r}, needed to use the {source} "
                f"image; found keys {sorted(scalefactors)}. Restore scalefactors_json.json from the Space "
                "Ranger output.",
                path=source_dir,
            )
        if source == "lowres":
            warnings.warn(
                f"Library {library_id!r} has no full-resolution or hires image; cropping patches from the "
                f"lowres image ({float(scalefactors[scalef_key]):.3g} lowres pixels per full-resolution pixel),"
                " so patches will be coarse. Pass fullres_image= to read_visium for sharp patches.",
                UserWarning,
                stacklevel=2,
            )
        logger.info("Library %r: cropping patches from the %s image.", library_id, source)
        return TissueImage(_ArrayReader(images[source]), source=source, scale=float(scalefactors[scalef_key]))

    raise VisiumReadError(
        f"Library {library_id!r} has no tissue image: no full-resolution file, and no hires or lowres image in "
        f"uns. Add tissue_hires_image.png to the spatial/ folder of {source_dir}, or pass fullres_image= to "
        "read_visium.",
        path=source_dir,
    )
