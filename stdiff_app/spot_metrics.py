"""Metrics of one spot's generated patches against its real patch, as a table for the app."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stdiff.metrics import METRICS, cosine_similarity, lpips_distance, psnr, ssim


def spot_metrics_table(pipeline, real: np.ndarray, generated: np.ndarray) -> pd.DataFrame:
    """Return one row per metric with the value for each generated patch and the metric's direction."""
    real_batch = np.broadcast_to(real, generated.shape).copy()
    embeds = pipeline.embed_images(np.concatenate([real[None], generated]))
    values = {
        "clip_cosine": cosine_similarity(np.repeat(embeds[:1], len(generated), axis=0), embeds[1:]),
        "lpips": lpips_distance(real_batch, generated, device=pipeline.device),
        "ssim": ssim(real_batch, generated),
        "psnr": psnr(real_batch, generated),
    }
    rows = []
    for name, per_patch in values.items():
        info = METRICS[name]
        row = {"metric": info.label, "better": "higher" if info.higher_is_better else "lower"}
        row.update({f"generated {i + 1}": round(float(v), 3) for i, v in enumerate(per_patch)})
        rows.append(row)
    return pd.DataFrame(rows)
