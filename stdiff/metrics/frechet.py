"""Frechet distance between Gaussians fitted to two feature sets (the formula behind FID)."""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
import torch

from stdiff.metrics._inputs import as_float_matrix

logger = logging.getLogger(__name__)

# Added to both covariance diagonals when their product has no finite square root.
COVARIANCE_EPS = 1e-6
# Largest imaginary part of sqrtm's diagonal accepted as round-off.
IMAGINARY_TOLERANCE = 1e-3


def frechet_distance(features_a: np.ndarray | torch.Tensor, features_b: np.ndarray | torch.Tensor) -> float:
    """Compute the Frechet distance between Gaussians fitted to two feature sets.

    With means ``mu_a, mu_b`` and sample covariances ``sigma_a, sigma_b`` of the rows,
    ``d = |mu_a - mu_b|**2 + tr(sigma_a) + tr(sigma_b) - 2 tr(sqrtm(sigma_a @ sigma_b))``.
    Lower is better, and 0 means equal mean and covariance. Round-off can make the result
    slightly negative when the two sets are the same.

    Parameters
    ----------
    features_a, features_b
        numpy arrays or torch tensors of shape ``(N_a, D)`` and ``(N_b, D)``, each with at least 2 rows.
        Covariances estimated from fewer rows than D are singular, and the distance is then biased.

    Returns
    -------
    float
        The squared Frechet (2-Wasserstein) distance, in squared feature units.

    Raises
    ------
    ValueError
        If the feature dimensions differ, a set has fewer than 2 rows or contains NaN or inf, or
        the matrix square root has an imaginary part larger than round-off.
    """
    a = as_float_matrix(features_a, name="features_a")
    b = as_float_matrix(features_b, name="features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: features_a {a.shape} and features_b {b.shape}")
    for name, features in (("features_a", a), ("features_b", b)):
        if len(features) < 2:
            raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got shape {features.shape}")
        if not np.all(np.isfinite(features)):
            raise ValueError(f"{name} contains NaN or inf values")

    # 1. Gaussian fits: mean and sample covariance (ddof=1) of each set.
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))

    # 2. Square root of the covariance product. A singular product can have no finite square root,
    #    so both covariances then get a small ridge on the diagonal.
    cov_sqrt = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(cov_sqrt)):
        logger.warning("sqrtm of the covariance product is not finite, so %g is added to the diagonals", COVARIANCE_EPS)
        ridge = np.eye(len(cov_a)) * COVARIANCE_EPS
        cov_sqrt = scipy.linalg.sqrtm((cov_a + ridge) @ (cov_b + ridge))

    # 3. The exact root of a product of two covariances has real eigenvalues. An imaginary part
    #    is round-off unless it is large.
    if np.iscomplexobj(cov_sqrt):
        largest_imaginary = np.max(np.abs(np.diagonal(cov_sqrt).imag))
        if largest_imaginary > IMAGINARY_TOLERANCE:
            raise ValueError(
                f"sqrtm of the covariance product has an imaginary diagonal component of {largest_imaginary:.3g}, "
                f"above the round-off tolerance {IMAGINARY_TOLERANCE}"
            )
        cov_sqrt = cov_sqrt.real

    # 4. Squared distance between means plus the covariance term.
    mean_difference = mean_a - mean_b
    return float(mean_difference @ mean_difference + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(cov_sqrt))
