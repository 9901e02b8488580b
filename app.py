"""stdiff app: browse a Visium sample, click a spot, and compare its real H&E patch with generated ones.

This file is the Tissue page, the app's home; the other pages are in ``pages/``. Run with
``streamlit run app.py``. Samples are listed from STDIFF_DATA_DIR and the model is read from
STDIFF_MODEL_DIR (default ``models/demo``); see the README.
"""

import numpy as np
import pandas as pd
import streamlit as st

from stdiff_app.figures import background_image, tissue_figure
from stdiff_app.sidebar import choose_sample_and_model, model_expression, require_pipeline
from stdiff_app.loaders import generate_for_spot, sample_patches
from stdiff_app.spot_metrics import spot_metrics_table

selection = choose_sample_and_model("Tissue")
adata = selection.adata
st.title("Tissue")
pipeline = require_pipeline(selection, "generate patches")

barcodes = adata.obs_names.to_list()
if "tissue_spot" not in st.session_state or st.session_state["tissue_spot"] not in barcodes:
    st.session_state["tissue_spot"] = barcodes[0]

with st.sidebar:
    st.header("Generation")
    n_patches = st.slider("Generated patches", 1, 6, 2, key="tissue_n_patches")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="tissue_seed")
    guidance = st.slider("Guidance scale", 0.0, 6.0, 2.0, 0.5, key="tissue_guidance",
                         help="0 ignores the expression, 1 uses it without guidance, higher pushes harder.")
    steps = st.slider("Sampling steps (DDIM)", 5, 50, 25, 5, key="tissue_steps")
    start_options = ["Noise", "Retrieved training patch"] if pipeline.has_reference_latents else ["Noise"]
    start = st.radio("Start from", start_options, key="tissue_start",
                     help="Retrieved: the training patch nearest to the spot's expression in CLIP space, noised "
                          "and then denoised under the spot's expression.")
    strength = 1.0
    if start != "Noise":
        strength = st.slider("Strength", 0.1, 1.0, 0.6, 0.1, key="tissue_strength",
                             help="Share of the noise schedule added to the retrieved patch; 1 ignores it.")

left, right = st.columns([3, 2], gap="large")
with left:
    st.caption(f"{adata.n_obs} spots · click a spot to select it")
    figure = tissue_figure(adata, background=background_image(adata), selected=st.session_state["tissue_spot"])
    event = st.plotly_chart(figure, on_select="rerun", selection_mode="points", key="tissue_plot",
                            config={"scrollZoom": True, "displaylogo": False})
    points = event.selection.points if event and event.selection else []
    if points:
        clicked = points[0].get("customdata")
        if isinstance(clicked, list):
            clicked = clicked[0]
        if clicked in barcodes and clicked != st.session_state.get("tissue_last_click"):
            st.session_state["tissue_last_click"] = clicked
            st.session_state["tissue_spot"] = clicked
            st.rerun()

with right:
    barcode = st.selectbox("Spot (barcode)", barcodes, key="tissue_spot")
    # A plain key (not a widget key) survives page changes, so other pages can start from this spot.
    st.session_state["tissue_selected_spot"] = barcode
    index = barcodes.index(barcode)
    expression = model_expression(selection)
    try:
        patches = sample_patches(selection.sample_dir, pipeline.patch_size, pipeline.resolution)
    except ValueError as error:
        st.error(f"Could not cut patches from the sample's image: {error}")
        st.stop()
    with st.spinner("Generating patches…"):
        generated = generate_for_spot(selection.model_dir, tuple(float(v) for v in expression[index]), n_patches,
                                      int(seed), float(guidance), int(steps), float(strength))
    images = [patches[index], *generated]
    captions = ["Real"] + [f"Generated {i + 1}" for i in range(len(generated))]
    st.image(images, caption=captions, width=150, output_format="PNG")

    st.subheader("Metrics")
    st.dataframe(spot_metrics_table(pipeline, patches[index], generated), hide_index=True)

    st.subheader("Top genes")
    profile = pd.DataFrame({"gene": pipeline.genes, "log1p expression": expression[index]})
    profile = profile.sort_values("log1p expression", ascending=False).head(10)
    st.bar_chart(profile, x="gene", y="log1p expression", horizontal=True, sort=False)
    total = float(np.asarray(adata.X[index].sum()))
    st.caption(f"{barcode}: {total:.0f} UMIs; expression normalised to 10,000 counts per spot, then log1p.")
