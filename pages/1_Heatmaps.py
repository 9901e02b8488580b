"""Heatmaps page: a gene's measured expression beside the expression reconstructed from generated patches."""

import numpy as np
import streamlit as st

from stdiff_app.figures import background_image, tissue_figure
from stdiff_app.loaders import load_reconstruction, reconstruction_path
from stdiff_app.reconstruction import run_reconstruction
from stdiff_app.sidebar import choose_sample_and_model, model_expression, require_pipeline

selection = choose_sample_and_model("Heatmaps")
adata = selection.adata
st.title("Heatmaps")
pipeline = require_pipeline(selection, "reconstruct expression")

genes = list(pipeline.genes)
gene = st.selectbox("Gene", genes, key="heatmaps_gene",
                    help="The model's genes: the most expressed genes of its training samples.")
measured = model_expression(selection)

path = reconstruction_path(selection.model_dir, selection.sample_dir)
reconstruction = load_reconstruction(str(path), path.stat().st_mtime) if path.is_file() else None
if reconstruction is not None and list(reconstruction["barcodes"]) != adata.obs_names.to_list():
    st.warning("The stored reconstruction was made for other spots of this sample; run it again.")
    reconstruction = None
if reconstruction is None:
    st.info("This sample has no reconstruction yet: one patch is generated for every spot and expression is "
            "predicted back from it.")
    steps = st.slider("Sampling steps (DDIM)", 5, 50, 25, 5, key="heatmaps_steps",
                      help="Fewer steps run faster and give coarser patches.")
    start_options = ["Retrieved training patch", "Noise"] if pipeline.has_reference_latents else ["Noise"]
    start = st.radio("Start from", start_options, key="heatmaps_start", horizontal=True,
                     help="Retrieved: the training patch nearest to each spot's expression in CLIP space, noised to "
                          "60% of the schedule and denoised under the spot's expression.")
    if st.button("Reconstruct this sample", key="heatmaps_run", type="primary"):
        run_reconstruction(pipeline, adata, path, num_inference_steps=steps, retrieved=start != "Noise")
        st.rerun()
    st.stop()

column = genes.index(gene)
real_values = measured[:, column]
reconstructed_values = reconstruction["reconstructed"][:, column]
cmin = float(min(real_values.min(), reconstructed_values.min()))
cmax = float(max(real_values.max(), reconstructed_values.max()))
if np.std(real_values) > 0 and np.std(reconstructed_values) > 0:
    r = float(np.corrcoef(real_values, reconstructed_values)[0, 1])
    st.metric(f"Pearson r over spots, {gene}", f"{r:.3f}", help="Higher is better; 0 means no spatial agreement.")
else:
    st.metric(f"Pearson r over spots, {gene}", "n/a", help="Undefined: the gene is constant in one of the maps.")

background = background_image(adata)
left, right = st.columns(2)
with left:
    st.subheader("Measured")
    st.plotly_chart(tissue_figure(adata, background=background, values=real_values, colorbar_title="log1p",
                                  cmin=cmin, cmax=cmax, height=480), key="heatmaps_real")
with right:
    st.subheader("Reconstructed from generated patches")
    st.plotly_chart(tissue_figure(adata, background=background, values=reconstructed_values, colorbar_title="log1p",
                                  cmin=cmin, cmax=cmax, height=480), key="heatmaps_reconstructed")
st.caption(f"Same colour scale on both maps ({cmin:.2f} to {cmax:.2f}, log1p of counts per 10,000). "
           f"Reconstruction settings: {reconstruction['settings']}.")
