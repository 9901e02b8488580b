"""Metric descriptions and per-metric summaries (mean, spread and bootstrap confidence interval)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Bootstrap resamples evaluated together, so memory stays near this many int64 indices times the sample size.
_RESAMPLES_PER_CHUNK = 256


@dataclass(frozen=True)
class MetricInfo:
    """Description of one metric for reports and the app.

    Attributes
    ----------
    name
        Key of the metric in result tables, for example ``"lpips"``.
    label
        Short human-readable name for tables and plots.
    higher_is_better
        True when a larger value means the generated patch is closer to the real one.
    value_range
        Range of possible values and their unit, as text.
    description
        One or two sentences on what is compared and how.
    """

    name: str
    label: str
    higher_is_better: bool
    value_range: str
    description: str


METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo(
            name="clip_cosine",
            label="CLIP cosine",
            higher_is_better=True,
            value_range="[-1, 1]",
            description="Cosine similarity between the CLIP image embeddings of the real and the generated "
            "patch of the same spot.",
        ),
        MetricInfo(
            name="clip_cosine_mismatched",
            label="CLIP cosine, mismatched spots",
            higher_is_better=True,
            value_range="[-1, 1]",
            description="Baseline for CLIP cosine: each real patch against the generated patch of another, "
            "randomly paired spot. The gap to CLIP cosine shows how spot-specific the generated patches are.",
        ),
        MetricInfo(
            name="lpips",
            label="LPIPS",
            higher_is_better=False,
            value_range=">= 0, 0 for identical patches",
            description="Learned perceptual distance (LPIPS v0.1, AlexNet features) between the real and the "
            "generated patch, with inputs scaled to [-1, 1].",
        ),
        MetricInfo(
            name="ssim",
            label="SSIM",
            higher_is_better=True,
            value_range="[-1, 1], 1 for identical patches",
            description="Structural similarity on RGB values 0-255, with an 11x11 Gaussian window "
            "(sigma 1.5), averaged over the three channels.",
        ),
        MetricInfo(
            name="psnr",
            label="PSNR (dB)",
            higher_is_better=True,
            value_range=">= 0 dB, capped at 100 dB for identical patches",
            description="Peak signal-to-noise ratio of the generated patch against the real one, with a peak "
            "value of 255.",
        ),
    )
}


def bootstrap_ci(
    values: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Compute a percentile bootstrap confidence interval of the mean, ignoring NaN values.

    Parameters
    ----------
    values
        1-D array of per-spot values. NaN entries are dropped before resampling.
    n_resamples
        Number of bootstrap resamples.
    confidence
        Coverage of the interval, strictly between 0 and 1.
    seed
        Seed of the resampling generator.

    Returns
    -------
    tuple of float
        ``(low, high)``. Both are NaN when no value remains after dropping NaN, and both equal the
        value when exactly one remains.

    Raises
    ------
    ValueError
        If ``values`` is not 1-D or contains inf, or ``n_resamples`` or ``confidence`` is out of range.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"values must be a 1-D array, got shape {values.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    values = values[~np.isnan(values)]
    if np.any(np.isinf(values)):
        raise ValueError(
            f"values contain {int(np.isinf(values).sum())} infinite entries, which have no finite mean. "
            "Drop them first or cap them (for example psnr(..., cap_db=100))"
        )
    if len(values) == 0:
        return float("nan"), float("nan")

    rng = np.random.default_rng(seed)
    resampled_means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _RESAMPLES_PER_CHUNK):
        stop = min(start + _RESAMPLES_PER_CHUNK, n_resamples)
        indices = rng.integers(0, len(values), size=(stop - start, len(values)))
        resampled_means[start:stop] = values[indices].mean(axis=1)

    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(resampled_means, [tail, 100.0 - tail])
    return float(low), float(high)


def summarize(
    per_spot: dict[str, np.ndarray],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict]:
    """Summarize per-spot metric values with their mean, spread and bootstrap confidence interval.

    NaN and infinite values (for example PSNR of identical patches with ``cap_db=None``) are left
    out of every statistic and counted in ``n_nan`` and ``n_inf``.

    Parameters
    ----------
    per_spot
        Metric name to 1-D array of per-spot values, for example ``{"lpips": lpips_distance(real, generated)}``.
    n_resamples, confidence, seed
        Passed to :func:`bootstrap_ci`.

    Returns
    -------
    dict
        Metric name to ``{"mean", "std", "n", "ci_low", "ci_high", "n_nan", "n_inf"}``. ``std`` is the
        sample standard deviation (ddof=1), NaN when fewer than 2 values remain. ``n`` counts the
        finite values used. ``mean``, ``ci_low`` and ``ci_high`` are NaN when ``n`` is 0.

    Raises
    ------
    ValueError
        If an array is not 1-D.
    """
    summaries = {}
    for name, values in per_spot.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1:
            raise ValueError(f"values of metric {name!r} must be a 1-D array, got shape {values.shape}")
        finite = values[np.isfinite(values)]
        n_nan = int(np.isnan(values).sum())
        n_inf = int(np.isinf(values).sum())
        if n_nan or n_inf:
            logger.info("Metric %s: leaving out %d NaN and %d infinite values of %d", name, n_nan, n_inf, len(values))

        ci_low, ci_high = bootstrap_ci(finite, n_resamples=n_resamples, confidence=confidence, seed=seed)
        summaries[name] = {
            "mean": float(finite.mean()) if len(finite) else float("nan"),
            "std": float(finite.std(ddof=1)) if len(finite) >= 2 else float("nan"),
            "n": len(finite),
            "ci_low": ci_low,
            "ci_high": ci_high,
            "n_nan": n_nan,
            "n_inf": n_inf,
        }
    return summaries
