"""Cached loading for the app: models once per process, arrays once per input."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import streamlit as st

from stdiff import settings

logger = logging.getLogger(__name__)


@st.cache_resource(show_spinner="Loading the model…")
def load_pipeline(model_dir: str):
    from stdiff.pipeline import StdiffPipeline

    return StdiffPipeline.from_pretrained(model_dir)


@st.cache_resource(show_spinner="Loading LPIPS…")
def load_lpips_model():
    from stdiff.metrics import load_lpips

    return load_lpips()


@st.cache_data(show_spinner=False)
def list_sample_folders(data_dir: str) -> list[str]:
    from stdiff.io import list_samples

    folder = Path(data_dir)
    if not folder.is_dir():
        return []
    return [str(path) for path in list_samples(folder)]


@st.cache_resource(show_spinner="Reading the sample…", max_entries=8)
def load_sample(sample_dir: str):
    """Read a sample folder; cached per process (AnnData objects are shared read-only between sessions)."""
    from stdiff.io import read_visium

    return read_visium(sample_dir)


@st.cache_data(show_spinner="Cutting patches at spots…", max_entries=8)
def sample_patches(sample_dir: str, patch_size: int, resolution: int) -> np.ndarray:
    from stdiff.io import open_tissue_image
    from stdiff.patches import extract_patches

    adata = load_sample(sample_dir)
    return extract_patches(adata, image=open_tissue_image(adata), patch_size=patch_size, resolution=resolution)


@st.cache_data(show_spinner=False, max_entries=8)
def sample_expression(sample_dir: str, genes: tuple[str, ...], target_sum: float) -> np.ndarray:
    from stdiff.expression import GeneSet, expression_matrix

    return expression_matrix(load_sample(sample_dir), GeneSet(genes=genes, target_sum=target_sum))


@st.cache_data(show_spinner=False, max_entries=64)
def generate_for_spot(model_dir: str, expression: tuple[float, ...], n_patches: int, seed: int,
                      guidance_scale: float, steps: int, strength: float = 1.0, retrieve_by: str = "clip") -> np.ndarray:
    """Generated patches (n_patches, R, R, 3) for one expression vector.

    With ``strength`` below 1, sampling starts from the training patch retrieved for the expression, noised to
    that share of the schedule. ``retrieve_by`` is "clip" (nearest in CLIP space) or "expression" (the training
    spot nearest in measured expression).
    """
    pipeline = load_pipeline(model_dir)
    values = np.asarray(expression, dtype=np.float32)[None]
    init_latents = pipeline.retrieved_latents(values, by=retrieve_by) if strength < 1.0 else None
    return pipeline.generate(values, n_per_spot=n_patches, seed=seed, guidance_scale=guidance_scale,
                             num_inference_steps=steps, init_latents=init_latents, strength=strength)[0]


def reconstruction_path(model_dir: str, sample_dir: str) -> Path:
    """Return the path of a sample's reconstruction by a model: the file shipped with the model when there is one
    (``MODEL/reconstructions/SAMPLE.npz``), else a file in the stdiff cache folder."""
    shipped = Path(model_dir) / "reconstructions" / f"{Path(sample_dir).name}.npz"
    if shipped.is_file():
        return shipped
    key = hashlib.sha256(f"{Path(model_dir).resolve()}|{Path(sample_dir).resolve()}".encode()).hexdigest()[:16]
    return settings.reconstructions_dir() / f"{Path(sample_dir).name}-{key}.npz"


@st.cache_data(show_spinner=False, max_entries=16)
def load_reconstruction(path: str, mtime: float) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def stored_reconstruction(model_dir: str, sample_dir: str, barcodes: list[str]) -> tuple[dict | None, str]:
    """Return the sample's stored reconstruction by the model, or None and the reason there is none to show."""
    path = reconstruction_path(model_dir, sample_dir)
    if not path.is_file():
        return None, "This sample has no reconstruction by this model yet (Heatmaps page: Reconstruct this sample)."
    reconstruction = load_reconstruction(str(path), path.stat().st_mtime)
    if list(reconstruction["barcodes"]) != list(barcodes):
        return None, "The stored reconstruction was made for other spots of this sample; run it again."
    return reconstruction, ""


@st.cache_resource(show_spinner=False, max_entries=8)
def normalized_counts(sample_dir: str, target_sum: float):
    """log1p(counts per ``target_sum``) of every gene (CSC, for fast gene columns); shared read-only."""
    from stdiff.expression import normalize_log1p

    return normalize_log1p(load_sample(sample_dir), target_sum=target_sum).tocsc()


def gene_values(sample_dir: str, gene: str, target_sum: float = 1e4) -> np.ndarray:
    """Measured log1p expression of any gene of the sample (n_spots,)."""
    adata = load_sample(sample_dir)
    column = adata.var_names.get_loc(gene)
    return normalized_counts(sample_dir, target_sum)[:, column].toarray().ravel()
