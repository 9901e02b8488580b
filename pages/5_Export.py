"""Export page: download per-spot metrics, heatmap images, generated patches and the AnnData of a sample.

Heatmaps are drawn with matplotlib, because writing plotly figures to PNG needs kaleido, which stdiff does not
install. The reconstructed expression is the file the Heatmaps page stores for the sample and the model.
"""

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import streamlit as st
from matplotlib.figure import Figure
from PIL import Image

from stdiff.constants import HIRES_SCALEF, LOWRES_SCALEF, SPATIAL_KEY
from stdiff.evaluate import score_patches
from stdiff.expression import total_counts
from stdiff.metrics import METRICS
from stdiff_app.loaders import (
    load_pipeline,
    load_reconstruction,
    load_sample,
    reconstruction_path,
    sample_patches,
)
from stdiff_app.reconstruction import describe_settings
from stdiff_app.sidebar import choose_sample_and_model, model_expression, require_pipeline

PREFIX = "export_"
RECONSTRUCTED_LAYER = "stdiff_reconstructed"
CHUNK_SPOTS = 8  # spots generated per call, between progress bar updates
HEATMAP_DPI = 150


def tissue_background(adata) -> tuple[np.ndarray | None, float]:
    """Return the hires (else lowres) image and its pixels per full-resolution pixel."""
    library = next(iter(adata.uns[SPATIAL_KEY].values()))
    images, scalefactors = library.get("images", {}), library.get("scalefactors", {})
    for key, factor_key in (("hires", HIRES_SCALEF), ("lowres", LOWRES_SCALEF)):
        if key in images and factor_key in scalefactors:
            return np.asarray(images[key]), float(scalefactors[factor_key])
    return None, 1.0


@st.cache_data(show_spinner="Drawing the heatmap…", max_entries=32)
def heatmap_png(sample_dir: str, values: np.ndarray, title: str, vmin: float, vmax: float) -> bytes:
    """Draw the spots coloured by ``values`` over the tissue image and return the PNG bytes."""
    adata = load_sample(sample_dir)
    image, factor = tissue_background(adata)
    xy = np.asarray(adata.obsm[SPATIAL_KEY]) * factor
    # The object-oriented Figure needs no pyplot backend, so it draws safely in the server's threads.
    figure = Figure(figsize=(6, 6))
    axis = figure.subplots()
    if image is not None:
        axis.imshow(image)
    points = axis.scatter(xy[:, 0], xy[:, 1], c=values, cmap="viridis", vmin=vmin, vmax=vmax, s=18,
                          edgecolors="white", linewidths=0.3)
    if image is None:
        axis.invert_yaxis()
    axis.set_aspect("equal")
    axis.set_axis_off()
    axis.set_title(title)
    figure.colorbar(points, ax=axis, fraction=0.046, pad=0.04, label="log1p")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=HEATMAP_DPI, bbox_inches="tight")
    return buffer.getvalue()


@st.cache_data(show_spinner="Writing the h5ad file…", max_entries=4)
def h5ad_bytes(sample_dir: str, model_dir: str, reconstruction_file: str, mtime: float) -> bytes:
    """Write the sample's AnnData, with the reconstructed expression of the model genes in a layer, to h5ad bytes."""
    pipeline = load_pipeline(model_dir)
    reconstruction = load_reconstruction(reconstruction_file, mtime)
    adata = load_sample(sample_dir).copy()  # the cached AnnData is shared between sessions: never change it

    columns = adata.var_names.get_indexer(list(pipeline.genes))
    present = np.flatnonzero(columns >= 0)
    layer = np.zeros(adata.shape, dtype=np.float32)
    layer[:, columns[present]] = reconstruction["reconstructed"][:, present]
    adata.layers[RECONSTRUCTED_LAYER] = sp.csr_matrix(layer)
    card = pipeline.card
    adata.uns["stdiff"] = {
        "layer": RECONSTRUCTED_LAYER,
        "model_dir": str(model_dir),
        "model_genes": list(pipeline.genes),
        "genes_in_layer": [pipeline.genes[i] for i in present],
        "genes_not_in_sample": [pipeline.genes[i] for i in np.flatnonzero(columns < 0)],
        "units": f"log1p(counts / total counts of the spot * {pipeline.gene_set.target_sum:g}); "
                 "genes outside the model are 0",
        "patch_size": int(card["patch_size"]),
        "resolution": int(card["resolution"]),
        "train_samples": list(card.get("train_samples", [])),
        "reconstruction_settings": str(reconstruction["settings"]),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sample.h5ad"
        adata.write_h5ad(path, compression="gzip")
        return path.read_bytes()


def patches_zip(barcodes: list[str], generated: np.ndarray, table: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for barcode, patch in zip(barcodes, generated):
            image = io.BytesIO()
            Image.fromarray(patch).save(image, format="PNG")
            archive.writestr(f"generated/{barcode}.png", image.getvalue())
        archive.writestr("spots.csv", table.to_csv(index=False))
    return buffer.getvalue()


def score_spots(pipeline, expression: np.ndarray, real: np.ndarray, *, seed: int, steps: int,
                guidance: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Generate one patch per spot with a progress bar, then score it against the real patch."""
    bar = st.progress(0.0, text="Generating patches…")
    chunks = []
    for start in range(0, len(expression), CHUNK_SPOTS):
        chunk = expression[start : start + CHUNK_SPOTS]
        # Seeds follow the spot's position in the list, so a spot's patch does not depend on the chunking.
        chunks.append(pipeline.generate(chunk, n_per_spot=1, seed=seed + start, guidance_scale=guidance,
                                        num_inference_steps=steps)[:, 0])
        done = start + len(chunk)
        bar.progress(done / len(expression), text=f"Generating patches… {done} of {len(expression)} spots")
    bar.progress(1.0, text="Scoring patches…")
    generated = np.concatenate(chunks)
    scores = score_patches(pipeline, real, generated, seed=seed)
    bar.empty()
    return generated, scores


selection = choose_sample_and_model("Export")
adata = selection.adata
sample_name = Path(selection.sample_dir).name
st.title("Export")
pipeline = require_pipeline(selection, "export generated data")
barcodes = adata.obs_names.to_list()
genes = list(pipeline.genes)
measured = model_expression(selection)
path = reconstruction_path(selection.model_dir, selection.sample_dir)
reconstruction = load_reconstruction(str(path), path.stat().st_mtime) if path.is_file() else None
if reconstruction is not None and list(reconstruction["barcodes"]) != barcodes:
    reconstruction = None
missing_reconstruction = ("This sample has no reconstruction by this model yet. Open the Heatmaps page and press "
                          "**Reconstruct this sample**, then come back.")

st.header("Per-spot metrics and generated patches")
first, second, third = st.columns(3)
n_spots = first.number_input("Spots", 1, len(barcodes), min(16, len(barcodes)), key=f"{PREFIX}n_spots",
                             help="Spots drawn at random (with the seed) from the sample; one patch each.")
seed = second.number_input("Seed", 0, 2**31 - 1, 0, key=f"{PREFIX}seed",
                           help="Chooses the spots and the generation noise.")
steps = third.slider("Sampling steps (DDIM)", 5, 50, 25, 5, key=f"{PREFIX}steps")
guidance = 2.0
request = (selection.sample_dir, selection.model_dir, int(n_spots), int(seed), int(steps), guidance)
if st.button("Generate and score", key=f"{PREFIX}score", type="primary"):
    rng = np.random.default_rng(int(seed))
    chosen = np.sort(rng.choice(len(barcodes), size=int(n_spots), replace=False))
    real = sample_patches(selection.sample_dir, pipeline.patch_size, pipeline.resolution)[chosen]
    try:
        generated, scores = score_spots(pipeline, measured[chosen], real, seed=int(seed), steps=int(steps),
                                        guidance=guidance)
    except (ValueError, FileNotFoundError) as error:
        st.error(f"Scoring failed: {error}")
        st.stop()
    xy = np.asarray(adata.obsm[SPATIAL_KEY])[chosen]
    table = pd.DataFrame({"sample": sample_name, "barcode": [barcodes[i] for i in chosen],
                          "x_fullres": xy[:, 0], "y_fullres": xy[:, 1],
                          "total_counts": total_counts(adata)[chosen], "seed": int(seed) + np.arange(len(chosen))})
    for name, values in scores.items():
        table[name] = values
    st.session_state[f"{PREFIX}result"] = {
        "request": request,
        "table": table,
        "zip": patches_zip(table["barcode"].to_list(), generated, table[["sample", "barcode", "x_fullres",
                                                                        "y_fullres", "seed"]]),
    }

result = st.session_state.get(f"{PREFIX}result")
if result is not None and result["request"] == request:
    table = result["table"]
    means = {METRICS[name].label if name in METRICS else name: float(np.nanmean(table[name]))
             for name in table.columns if name in METRICS or name == "clip_cosine_mismatched"}
    st.dataframe(pd.DataFrame({"metric": list(means), f"mean over {len(table)} spots": list(means.values())}),
                 hide_index=True)
    st.caption("Higher is better for CLIP cosine, SSIM and PSNR; lower is better for LPIPS. "
               "clip_cosine_mismatched pairs each real patch with another spot's patch: the chance level.")
    left, right = st.columns(2)
    left.download_button("Metrics CSV", table.to_csv(index=False).encode(), f"{sample_name}_metrics.csv",
                         "text/csv", key=f"{PREFIX}csv_download")
    right.download_button("Generated patches (zip)", result["zip"], f"{sample_name}_generated.zip",
                          "application/zip", key=f"{PREFIX}zip_download")
else:
    st.info("Press Generate and score to generate one patch per chosen spot and compare it with the real one.")

st.header("Heatmap images")
gene = st.selectbox("Gene", genes, key=f"{PREFIX}gene")
column = genes.index(gene)
real_values = measured[:, column]
if reconstruction is None:
    vmin, vmax = float(real_values.min()), float(real_values.max())
    st.download_button(f"Measured {gene} (PNG)",
                       heatmap_png(selection.sample_dir, real_values, f"{sample_name}: measured {gene}", vmin, vmax),
                       f"{sample_name}_{gene}_measured.png", "image/png", key=f"{PREFIX}real_png")
    st.info(missing_reconstruction)
else:
    reconstructed_values = reconstruction["reconstructed"][:, column]
    vmin = float(min(real_values.min(), reconstructed_values.min()))
    vmax = float(max(real_values.max(), reconstructed_values.max()))
    left, right = st.columns(2)
    left.download_button(f"Measured {gene} (PNG)",
                         heatmap_png(selection.sample_dir, real_values, f"{sample_name}: measured {gene}", vmin, vmax),
                         f"{sample_name}_{gene}_measured.png", "image/png", key=f"{PREFIX}real_png")
    right.download_button(f"Reconstructed {gene} (PNG)",
                          heatmap_png(selection.sample_dir, reconstructed_values,
                                      f"{sample_name}: reconstructed {gene}", vmin, vmax),
                          f"{sample_name}_{gene}_reconstructed.png", "image/png", key=f"{PREFIX}reconstructed_png")
    st.caption(f"Both images share one colour scale ({vmin:.2f} to {vmax:.2f}, log1p).")

st.header("AnnData (h5ad)")
if reconstruction is None:
    st.info(missing_reconstruction)
else:
    st.caption(f'The sample\'s counts with the reconstructed expression in `layers["{RECONSTRUCTED_LAYER}"]` '
               f"(log1p, the {len(genes)} model genes; other genes 0) and the model settings in "
               '`uns["stdiff"]`.')
    data = h5ad_bytes(selection.sample_dir, selection.model_dir, str(path), path.stat().st_mtime)
    st.download_button("AnnData with reconstruction (h5ad)", data, f"{sample_name}_stdiff.h5ad",
                       "application/octet-stream", key=f"{PREFIX}h5ad_download")
    st.caption(f"Reconstruction: {describe_settings(reconstruction['settings'])}.")
