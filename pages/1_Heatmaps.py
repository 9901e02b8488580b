"""Heatmaps page: a gene's measured expression beside the expression reconstructed from generated patches."""

import numpy as np
import streamlit as st

from stdiff_app.figures import background_image, tissue_figure
from stdiff_app.loaders import reconstruction_path, sample_patches, stored_reconstruction
from stdiff_app.reconstruction import describe_settings, run_reconstruction
from stdiff_app.sidebar import choose_sample_and_model, model_expression, require_pipeline
from stdiff_app.spot_values import metric_columns

selection = choose_sample_and_model("Heatmaps")
adata = selection.adata
st.title("Heatmaps")
pipeline = require_pipeline(selection, "reconstruct expression")

genes = list(pipeline.genes)
gene = st.selectbox("Gene", genes, key="heatmaps_gene",
                    help="The model's genes: the most expressed genes of its training samples.")
measured = model_expression(selection)

path = reconstruction_path(selection.model_dir, selection.sample_dir)
reconstruction, note = stored_reconstruction(selection.model_dir, selection.sample_dir, adata.obs_names.to_list())
if reconstruction is None:
    if path.is_file():
        st.warning(note)
    st.info("This sample has no reconstruction yet: one patch is generated for every spot, expression is "
            "predicted back from it, and the patch is scored against the real one.")
    steps = st.slider("Sampling steps (DDIM)", 5, 50, 25, 5, key="heatmaps_steps",
                      help="Fewer steps run faster and give coarser patches.")
    start_options = ["Retrieved training patch", "Noise"] if pipeline.has_reference_latents else ["Noise"]
    start = st.radio("Start from", start_options, key="heatmaps_start", horizontal=True,
                     help="Retrieved: the training patch nearest to each spot's expression in CLIP space, noised to "
                          "60% of the schedule and denoised under the spot's expression. This is how the demo "
                          "model's stored reconstructions were made, so maps of different samples compare.")
    if st.button("Reconstruct this sample", key="heatmaps_run", type="primary"):
        try:
            real = sample_patches(selection.sample_dir, pipeline.patch_size, pipeline.resolution)
        except ValueError as error:
            st.error(f"Could not cut patches from the sample's image: {error}")
            st.stop()
        run_reconstruction(pipeline, adata, path, num_inference_steps=steps, retrieved=start != "Noise",
                           real_patches=real)
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
    st.subheader("Reconstructed", help="Expression predicted back from a patch generated for each spot.")
    st.plotly_chart(tissue_figure(adata, background=background, values=reconstructed_values, colorbar_title="log1p",
                                  cmin=cmin, cmax=cmax, height=480), key="heatmaps_reconstructed")
st.caption(f"Same colour scale on both maps ({cmin:.2f} to {cmax:.2f}, log1p of counts per 10,000). "
           f"Reconstruction: {describe_settings(reconstruction['settings'])}.")

st.subheader("Per-spot metrics of the generated patches")
metric_maps = metric_columns(reconstruction)
if not metric_maps:
    st.info("This reconstruction stores no per-spot metrics (it was made by an older stdiff); reconstruct the "
            "sample again to see them.")
else:
    metric = st.selectbox("Metric", list(metric_maps), key="heatmaps_metric",
                          help="Each spot's first generated patch against its real patch.")
    metric_values = metric_maps[metric]
    figure = tissue_figure(adata, background=background, values=metric_values, colorbar_title=metric.split(" (")[0],
                           height=480)
    st.plotly_chart(figure, key="heatmaps_metric_map")
    st.caption(f"Mean over {len(metric_values)} spots: {np.nanmean(metric_values):.3f}. The Metrics page puts the "
               "same metrics beside the baselines for the held-out sections.")
