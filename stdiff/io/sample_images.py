"""The images of one Space Ranger sample: finding them and checking them against the scalefactors.

Sizes are (width, height) in pixels. A hires or lowres image of ``w`` pixels implies a full-resolution width
of ``w / tissue_<source>_scalef``; every check here compares such implied full-resolution sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from stdiff.constants import (
    CYTASSIST_IMAGE,
    FULLRES_NAME_HINT,
    HIRES_IMAGE,
    HIRES_SCALEF,
    LOWRES_IMAGE,
    LOWRES_SCALEF,
    SPATIAL_DIR,
    SPATIAL_QC_IMAGES,
)
from stdiff.io.errors import VisiumReadError, warn
from stdiff.io.files import find_named, has_space_ranger_name
from stdiff.io.images import TIFF_SUFFIXES, read_image_size

logger = logging.getLogger(__name__)

FULLRES_SUFFIXES = (*TIFF_SUFFIXES, ".jpg", ".jpeg")
FULLRES_NAME_SUFFIXES = (*FULLRES_SUFFIXES, ".png")
SCALEF_KEYS = {"hires": HIRES_SCALEF, "lowres": LOWRES_SCALEF}
IMAGE_NAMES = {"hires": HIRES_IMAGE, "lowres": LOWRES_IMAGE}
# The full-resolution size implied by hires size / tissue_hires_scalef differs from the real one by rounding.
# A larger gap means the image is not the one Space Ranger was run on.
SIZE_MISMATCH_TOLERANCE = 0.02
SPOTS_OUTSIDE_TOLERANCE = 0.01


def find_scaled_images(spatial_dir: Path) -> dict[str, Path]:
    """Return the hires and lowres PNG files present in ``spatial_dir``, keyed "hires" and "lowres"."""
    found = {source: find_named(spatial_dir, name) for source, name in IMAGE_NAMES.items()}
    return {source: path for source, path in found.items() if path is not None}


def find_fullres_image(sample_dir: Path, *, notes: list[str] | None = None) -> Path | None:
    """Find the full-resolution H&E image in ``spatial/`` or the sample folder, or return None.

    A file qualifies when its name contains "fullres" (any image suffix), or it ends in .tif, .tiff, .jpg or
    .jpeg and is not a Space Ranger hires, lowres, quality-control or CytAssist image (also with a name
    prefix). Names with "fullres" win; among several other candidates the largest file is used, with a
    :class:`VisiumReadWarning`.
    """
    excluded = (HIRES_IMAGE, LOWRES_IMAGE, *SPATIAL_QC_IMAGES)
    for folder in (sample_dir / SPATIAL_DIR, sample_dir):
        files = [
            child
            for child in sorted(folder.iterdir())
            if child.is_file()
            and not child.name.startswith(".")
            and not any(has_space_ranger_name(child, name) for name in excluded)
        ]
        named = [f for f in files if FULLRES_NAME_HINT in f.name.lower() and f.suffix.lower() in FULLRES_NAME_SUFFIXES]
        others = [f for f in files if f.suffix.lower() in FULLRES_SUFFIXES and f not in named]
        for candidates in (named, others):
            if not candidates:
                continue
            chosen = max(candidates, key=lambda f: f.stat().st_size)
            if len(candidates) > 1:
                warn(
                    f"Several full-resolution image candidates in {folder}: {[f.name for f in candidates]}; using "
                    f"the largest, {chosen.name}. Pass fullres_image= to choose another.",
                    notes=notes,
                )
            return chosen
    return None


def implied_fullres_sizes(images: dict[str, np.ndarray], scalefactors: dict) -> dict[str, tuple[float, float]]:
    """Return the full-resolution (width, height) implied by each hires or lowres image and its scalefactor."""
    sizes = {}
    for source, image in images.items():
        scale = scalefactors.get(SCALEF_KEYS[source])
        if scale:
            sizes[source] = (image.shape[1] / scale, image.shape[0] / scale)
    return sizes


def _differs(size: tuple[float, float], expected: tuple[float, float]) -> bool:
    return any(abs(value - reference) > SIZE_MISMATCH_TOLERANCE * reference for value, reference in zip(size, expected))


def check_scaled_images(images: dict[str, np.ndarray], *, image_paths: dict[str, Path], scalefactors: dict,
                        scalefactors_path: Path, notes: list[str]) -> None:
    """Check that hires and lowres imply the same full-resolution size.

    Raises
    ------
    VisiumReadError
        When the hires image is smaller than the lowres image: the two files were swapped or renamed.
    """
    if "hires" in images and "lowres" in images:
        hires_height, hires_width = images["hires"].shape[:2]
        lowres_height, lowres_width = images["lowres"].shape[:2]
        if hires_width * hires_height < lowres_width * lowres_height:
            raise VisiumReadError(
                f"{image_paths['hires']} ({hires_width} x {hires_height} pixels) is smaller than "
                f"{image_paths['lowres']} ({lowres_width} x {lowres_height}); the two files look swapped. Rename "
                f"them so that {HIRES_IMAGE} is the larger one, as Space Ranger writes them.",
                path=image_paths["hires"],
            )
    sizes = implied_fullres_sizes(images, scalefactors)
    if "hires" in sizes and "lowres" in sizes and _differs(sizes["lowres"], sizes["hires"]):
        warn(
            f"{image_paths['hires']} and {image_paths['lowres']} disagree with {scalefactors_path}: "
            f"they imply full-resolution sizes of {sizes['hires'][0]:.0f} x {sizes['hires'][1]:.0f} and "
            f"{sizes['lowres'][0]:.0f} x {sizes['lowres'][1]:.0f} pixels. One image or a scalefactor does not "
            "belong to this sample; patches are cut from the hires image.",
            notes=notes,
        )


def find_cytassist_fullres(spatial_dir: Path, *, implied_sizes: dict[str, tuple[float, float]]) -> Path | None:
    """Return ``cytassist_image.tiff`` when spot coordinates refer to it, else None.

    Space Ranger runs with only a CytAssist image express spot positions in CytAssist image pixels; runs with a
    microscope image express them in microscope image pixels. The CytAssist image is used only when its size
    matches the full-resolution size implied by the hires or lowres image, so the second case never crops
    the wrong image.
    """
    path = find_named(spatial_dir, CYTASSIST_IMAGE)
    if path is None:
        return None
    if not implied_sizes:
        logger.info("Not using %s as the full-resolution image: no hires or lowres image to check its size.", path)
        return None
    width, height = read_image_size(path)
    source, expected = next(iter(implied_sizes.items()))
    if _differs((width, height), expected):
        logger.info(
            "Not using %s (%d x %d) as the full-resolution image: the %s image implies %.0f x %.0f, so spot "
            "coordinates refer to another image.",
            path,
            width,
            height,
            source,
            *expected,
        )
        return None
    logger.info("Using the CytAssist image %s as the full-resolution image.", path)
    return path


def check_fullres_size(fullres_path: Path, *, implied_sizes: dict[str, tuple[float, float]],
                       notes: list[str]) -> tuple[int, int]:
    """Read the full-res image size from its header; warn when it disagrees with the hires (else lowres) image."""
    width, height = read_image_size(fullres_path)
    for source, expected in list(implied_sizes.items())[:1]:
        if _differs((width, height), expected):
            warn(
                f"{fullres_path} is {width} x {height} pixels, but the {source} image and "
                f"{SCALEF_KEYS[source]} imply {expected[0]:.0f} x {expected[1]:.0f}. It may not be the image Space "
                "Ranger was run on, and patches would miss their spots; pass fullres_image= with the right image.",
                notes=notes,
            )
    return width, height


def warn_spots_outside(xy: np.ndarray, *, width: float, height: float, image_path: Path,
                       notes: list[str]) -> None:
    """Warn when more than 1 % of spot centres (full-resolution (x, y)) fall outside a width x height image."""
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= width) | (xy[:, 1] < 0) | (xy[:, 1] >= height)
    if outside.mean() > SPOTS_OUTSIDE_TOLERANCE:
        warn(
            f"{int(outside.sum())} of {len(xy)} spot centres lie outside {image_path} ({width:.0f} x {height:.0f} "
            "full-resolution pixels); their patches will be partly or wholly white. Check that the image and the "
            "position table come from the same Space Ranger run.",
            notes=notes,
        )
