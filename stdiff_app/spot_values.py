"""Per-spot values the Tissue page colours spots by and the patch grid sorts by."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stdiff.expression import total_counts
from stdiff.metrics import METRICS
from stdiff.reconstruct import SPOT_METRICS


def quality_columns(adata) -> dict[str, np.ndarray]:
    """Counting metrics every sample has."""
    detected = np.asarray((adata.X > 0).sum(axis=1)).ravel()
    return {"UMIs": total_counts(adata), "genes detected": detected.astype(np.float64)}


def metric_columns(reconstruction: dict | None) -> dict[str, np.ndarray]:
    """Generated-versus-real metrics of each spot stored with the reconstruction, labelled for people."""
    if reconstruction is None:
        return {}
    columns = {}
    for name in SPOT_METRICS:
        key = f"metric_{name}"
        if key in reconstruction:
            info = METRICS[name]
            columns[f"{info.label} ({'higher' if info.higher_is_better else 'lower'} better)"] = reconstruction[key]
    return columns


def spot_table(adata, reconstruction: dict | None, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Return one row per spot: barcode, position, counting metrics, stored metrics and ``extra`` columns."""
    xy = np.asarray(adata.obsm["spatial"])
    table = pd.DataFrame({"barcode": adata.obs_names.to_numpy(), "x": xy[:, 0], "y": xy[:, 1]})
    for name, values in {**quality_columns(adata), **metric_columns(reconstruction), **(extra or {})}.items():
        table[name] = np.asarray(values, dtype=np.float64)
    return table
