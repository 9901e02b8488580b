"""Reconstruct a whole sample from the app, with a progress bar."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from stdiff.reconstruct import ReconstructConfig, reconstruct_to_file


def describe_settings(settings_json: str) -> str:
    """Say in words how a stored reconstruction was made, from its settings (JSON)."""
    import json

    settings = json.loads(str(settings_json))
    if settings.get("init") == "retrieved":
        by = "expression" if settings.get("retrieve_by") == "expression" else "CLIP space"
        start = f"from the training patch retrieved in {by}, noised to strength {settings.get('strength')}"
    else:
        start = "from noise"
    return (f"{settings.get('n_per_spot', 1)} patch per spot {start}, {settings.get('num_inference_steps')} DDIM "
            f"steps, guidance {settings.get('guidance_scale')}, seed {settings.get('seed')}")


def run_reconstruction(pipeline, adata, path: Path, *, num_inference_steps: int = 25, retrieved: bool = False,
                       real_patches=None) -> None:
    """Generate one patch per spot, predict expression from it and store the result at ``path``; with the spots'
    ``real_patches`` also per-spot metrics."""
    bar = st.progress(0.0, text="Generating patches…")

    def update(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Generating patches… {done} of {total} spots")

    config = ReconstructConfig(n_per_spot=1, num_inference_steps=num_inference_steps,
                               init="retrieved" if retrieved else "noise", strength=0.6 if retrieved else 1.0)
    reconstruct_to_file(pipeline, adata, path, config, callback=update, real_patches=real_patches)
    bar.empty()
