"""Similarity metrics between real and generated H&E patches, and their summaries.

Image metrics take uint8 RGB patches of shape ``(N, H, W, 3)`` (or one ``(H, W, 3)`` patch) and return
one float64 value per patch pair, shape ``(N,)``. :data:`METRICS` records each metric's direction and range.
"""

from stdiff.metrics.embeddings import cosine_similarity, mismatched_cosine, random_derangement
from stdiff.metrics.frechet import frechet_distance
from stdiff.metrics.perceptual import load_lpips, lpips_backbone_path, lpips_distance, patches_to_lpips_input
from stdiff.metrics.pixel import PSNR_CAP_DB, psnr, ssim
from stdiff.metrics.summary import METRICS, MetricInfo, bootstrap_ci, summarize

__all__ = [
    "METRICS",
    "PSNR_CAP_DB",
    "MetricInfo",
    "bootstrap_ci",
    "cosine_similarity",
    "frechet_distance",
    "load_lpips",
    "lpips_backbone_path",
    "lpips_distance",
    "mismatched_cosine",
    "patches_to_lpips_input",
    "psnr",
    "random_derangement",
    "ssim",
    "summarize",
]
