"""Pixel-level image similarity: SSIM and PSNR on uint8 RGB patches."""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from stdiff.metrics._inputs import as_patch_batches

UINT8_DATA_RANGE = 255.0

# Reported for identical patches, where PSNR is infinite. Patches of up to 226x226 pixels that differ by
# one grey level in a single channel of a single pixel still score below it (99.98 dB at 226x226).
PSNR_CAP_DB = 100.0

# SSIM settings of Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5 and population covariances.
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11


def ssim(real: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Compute the structural similarity index between each real and generated patch.

    Higher is better: 1 for identical patches, and the value lies in [-1, 1]. Uses scikit-image's
    ``structural_similarity`` with ``data_range=255``, ``channel_axis=-1`` (mean over the RGB channels),
    ``gaussian_weights=True``, ``sigma=1.5`` and ``use_sample_covariance=False``.

    Parameters
    ----------
    real, generated
        uint8 RGB patches of shape ``(N, H, W, 3)``, or ``(H, W, 3)`` for one patch, with H and W at
        least 11 pixels (the Gaussian window size).

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(N,)``.

    Raises
    ------
    ValueError
        If the inputs are not matching uint8 patch arrays or are smaller than the window.
    """
    real, generated = as_patch_batches(real, generated)
    height, width = real.shape[1:3]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs patches of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (the Gaussian window), "
            f"got {height}x{width}"
        )
    scores = [
        structural_similarity(
            real_patch,
            generated_patch,
            data_range=UINT8_DATA_RANGE,
            channel_axis=-1,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
        )
        for real_patch, generated_patch in zip(real, generated)
    ]
    return np.asarray(scores, dtype=np.float64)


def psnr(real: np.ndarray, generated: np.ndarray, *, cap_db: float | None = PSNR_CAP_DB) -> np.ndarray:
    """Compute the peak signal-to-noise ratio in dB between each real and generated patch.

    Higher is better. ``PSNR = 10 * log10(255**2 / MSE)``, with the MSE taken over all pixels and
    channels of one patch, so the value is at least 0 dB for uint8 data. Identical patches (MSE 0)
    have infinite PSNR. By default every value is capped at ``PSNR_CAP_DB`` (100 dB) so that means
    and confidence intervals stay finite. Pass ``cap_db=None`` to keep ``inf``.

    Parameters
    ----------
    real, generated
        uint8 RGB patches of shape ``(N, H, W, 3)``, or ``(H, W, 3)`` for one patch.
    cap_db
        Maximum value returned, in dB, or None for no cap.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(N,)``.

    Raises
    ------
    ValueError
        If the inputs are not matching uint8 patch arrays, or ``cap_db`` is not positive.
    """
    real, generated = as_patch_batches(real, generated)
    if cap_db is not None and not cap_db > 0:
        raise ValueError(f"cap_db must be a positive number of dB or None, got {cap_db}")

    difference = real.astype(np.float64) - generated.astype(np.float64)
    mse = np.mean(difference**2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        scores = 10.0 * np.log10(UINT8_DATA_RANGE**2 / mse)
    if cap_db is not None:
        scores = np.minimum(scores, cap_db)
    return scores
