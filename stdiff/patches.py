"""Square H&E patches centred on spots."""

from __future__ import annotations

import logging

import numpy as np
from anndata import AnnData

logger = logging.getLogger(__name__)


def extract_patches(
    adata: AnnData, *, image=None, patch_size: int = 256, resolution: int = 128, batch_size: int = 256
) -> np.ndarray:
    """Crop a ``patch_size`` x ``patch_size`` full-resolution square around every spot, resized to ``resolution``.

    Parameters
    ----------
    adata
        Spots with ``obsm["spatial"]`` in full-resolution pixels (x, y), as :func:`stdiff.io.read_visium` writes.
    image
        A :class:`stdiff.io.TissueImage`; opened from ``adata`` when omitted.
    patch_size
        Crop side in full-resolution pixels. Areas outside the slide are filled with white.
    resolution
        Output side in pixels.

    Returns
    -------
    numpy.ndarray
        uint8 (n_obs, resolution, resolution, 3), in ``adata.obs_names`` order.
    """
    from tqdm.auto import tqdm

    from .io import open_tissue_image

    if image is None:
        image = open_tissue_image(adata)
    if image.source != "fullres":
        logger.warning(
            "No full-resolution image: patches are cut from the %s image and upsampled, so they are coarse.",
            image.source,
        )
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    out = np.empty((len(xy), resolution, resolution, 3), dtype=np.uint8)
    # Spots are cut top to bottom, left to right, so neighbours reuse the image tiles that TissueImage decoded.
    order = np.lexsort((xy[:, 0], xy[:, 1]))
    for start in tqdm(range(0, len(xy), batch_size), desc="patches", unit="batch", leave=False):
        batch = order[start : start + batch_size]
        out[batch] = image.crop_many(xy[batch], size=patch_size, out_size=resolution)
    return out
