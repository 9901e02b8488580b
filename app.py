"""stdiff app: browse a Visium sample, click a spot, and compare its real H&E patch with generated ones.

This file is the Tissue page, the app's home; the other pages are in ``pages/``. Run with
``streamlit run app.py``. Samples are listed from STDIFF_DATA_DIR and the model is read from
STDIFF_MODEL_DIR (default ``models/demo``); see the README.
"""

from pathlib import Path

import streamlit as st

# The first start of a server imports PyTorch, scanpy and the model code, which takes a while on a slow disk. A
# spinner explains the wait instead of a blank page.
with st.spinner("Starting stdiff: loading PyTorch and scanpy (first start only)…"):
    import numpy as np
    import pandas as pd

    from stdiff.metrics import METRICS
    from stdiff_app.loaders import (
        gene_values,
        generate_for_spot,
        sample_expression,
        sample_patches,
        stored_reconstruction,
    )
    from stdiff_app.patch_grid import generated_thumbnails, patch_grid, real_thumbnails
    from stdiff_app.sidebar import choose_sample_and_model
    from stdiff_app.spot_metrics import spot_metrics_table
    from stdiff_app.spot_values import metric_columns, quality_columns, spot_table
    from stdiff_app.viewer import (
        make_window,
        selected_spots,
        spot_diameter,
        tile_pyramid,
        viewer_figure,
        window_image_uri,
        zoom_steps,
    )

MAX_GROUP = 8  # spots of a lasso selection that get generated patches
DEFAULT_PATCH = (256, 128)  # patch size and resolution for thumbnails when no model is loaded

selection = choose_sample_and_model("Tissue")
adata = selection.adata
pipeline = selection.pipeline
st.title("Tissue")

barcodes = adata.obs_names.to_list()
state = st.session_state
if state.get("tissue_sample") != selection.sample_dir:
    # A new sample starts at the whole-section view with its first spot selected.
    state["tissue_sample"] = selection.sample_dir
    state["tissue_centre"] = None
    state["tissue_group"] = []
    state["tissue_zoom"] = 1
# The selected spot lives in a plain key, so that it survives runs in which the barcode box is not drawn.
if state.get("tissue_focus") not in barcodes:
    state["tissue_focus"] = barcodes[0]
patch_size, resolution = (pipeline.patch_size, pipeline.resolution) if pipeline else DEFAULT_PATCH
reconstruction, reconstruction_note = (
    stored_reconstruction(selection.model_dir, selection.sample_dir, barcodes) if pipeline else (None, "")
)
expression, expression_error = None, ""
if pipeline is not None:
    try:
        expression = sample_expression(selection.sample_dir, pipeline.genes, pipeline.gene_set.target_sum)
    except ValueError as error:  # for example a mouse sample and a human model; the viewer and grid still work
        expression_error = f"This model cannot read the sample's expression: {error}"

with st.sidebar:
    st.header("Spots")
    colour_modes = ["Nothing", "Measured gene", "Reconstructed model gene", "Spot metric"]
    colour_mode = st.selectbox("Colour spots by", colour_modes, key="tissue_colour_mode")
    values, colour_title = None, ""
    if colour_mode == "Measured gene":
        genes = sorted(adata.var_names)
        default = pipeline.genes[0] if pipeline and pipeline.genes[0] in genes else genes[0]
        state.setdefault("tissue_gene", default)
        if state["tissue_gene"] not in genes:
            state["tissue_gene"] = default
        gene = st.selectbox("Gene", genes, key="tissue_gene", help="Any gene of the sample; type to search.")
        values, colour_title = gene_values(selection.sample_dir, gene), f"{gene} log1p"
    elif colour_mode == "Reconstructed model gene":
        if reconstruction is None:
            st.info(reconstruction_note or "Load a model to see reconstructed expression.")
        else:
            gene = st.selectbox("Model gene", list(reconstruction["genes"]), key="tissue_model_gene")
            column = list(reconstruction["genes"]).index(gene)
            values, colour_title = reconstruction["reconstructed"][:, column], f"{gene} reconstructed"
    elif colour_mode == "Spot metric":
        options = {**quality_columns(adata), **metric_columns(reconstruction)}
        name = st.selectbox("Metric", list(options), key="tissue_metric")
        values, colour_title = options[name], name
        if pipeline is None:
            st.caption("Load a model to add generated-versus-real metrics per spot.")
        elif reconstruction is None:
            st.caption("Generated-versus-real metrics per spot appear here once the sample is reconstructed "
                       "(Heatmaps page).")
        elif not metric_columns(reconstruction):
            st.caption("The stored reconstruction of this sample has no per-spot metrics (an older stdiff made "
                       "it); reconstruct the sample again on the Heatmaps page to add them.")
    # Plain spots are a light tint over the tissue; coloured spots need more ink to read.
    coloured = values is not None
    opacity = st.slider("Spot opacity", 0.0, 1.0, 0.85 if coloured else 0.35, 0.05,
                        key="tissue_opacity_coloured" if coloured else "tissue_opacity",
                        help="Fill of the spots; coloured spots are drawn at least at 0.2.")
    if pipeline is not None:
        st.header("Generation")
        n_patches = st.slider("Generated patches", 1, 6, 2, key="tissue_n_patches")
        seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="tissue_seed")
        guidance = st.slider("Guidance scale", 0.0, 6.0, 2.0, 0.5, key="tissue_guidance",
                             help="0 ignores the expression, 1 uses it without guidance, higher pushes harder.")
        steps = st.slider("Sampling steps (DDIM)", 5, 50, 25, 5, key="tissue_steps")
        start_options = {"Noise": None}
        if pipeline.has_reference_latents:
            start_options["Training patch nearest in CLIP space"] = "clip"
            start_options["Training patch nearest in expression"] = "expression"
        start = st.radio("Start from", list(start_options), key="tissue_start",
                         help="A training patch is retrieved for the spot's expression, noised and then denoised "
                              "under that expression, so that its texture stays real. On spots of a training "
                              "sample it can be the spot's own patch.")
        retrieve_by = start_options[start]
        strength = 1.0
        if retrieve_by is not None:
            strength = st.slider("Strength", 0.1, 1.0, 0.3, 0.1, key="tissue_strength",
                                 help="Share of the noise schedule added to the retrieved patch; 1 ignores it. "
                                      "Of the two values evaluated (0.3 and 0.6), 0.3 scored better on the held-out "
                                      "sections in docs/results.md.")
            from stdiff.prepare import TRAIN_PART_SUFFIX

            sample_name = Path(selection.sample_dir).name
            if {sample_name, sample_name + TRAIN_PART_SUFFIX} & set(pipeline.card.get("train_samples", [])):
                st.warning(f"{sample_name} was used to train this model, so the retrieved patch can be the spot's "
                           "own and the generated patch close to a copy of the real one.")

finite = np.asarray(values, dtype=np.float64)[np.isfinite(values)] if values is not None else np.zeros(0)
cmin, cmax = (float(finite.min()), float(finite.max())) if len(finite) else (None, None)
try:
    pyramid = tile_pyramid(selection.sample_dir)
except (ValueError, OSError) as error:
    st.error(f"Could not open the sample's image: {error}")
    st.stop()
xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)


def _move(dx: float, dy: float) -> None:
    """Pan by a share of the window (button callback)."""
    window = state["tissue_window"]
    x, y = state["tissue_centre"] or window.centre
    state["tissue_centre"] = (x + dx * (window.right - window.left), y + dy * (window.bottom - window.top))


def _centre_on_spot() -> None:
    state["tissue_centre"] = tuple(xy[barcodes.index(state["tissue_focus"])] + 0.5)


def _zoom_changed() -> None:
    # Zooming in centres on the selected spot, the place the user is looking at.
    _centre_on_spot()


explore, grid = st.tabs(["Explore", "Patch grid"])
with explore:
    left, right = st.columns([3, 2], gap="large")
    with left:
        # Zoom stops where the source image has no more detail: full resolution, or the hires image's own pixels.
        scale = pyramid.image.scale
        steps_available = zoom_steps(pyramid.width * scale, pyramid.height * scale)
        if state.get("tissue_zoom") not in steps_available:
            state["tissue_zoom"] = 1
        zoom_column, *pan_columns = st.columns([4, 1, 1, 1, 1, 2], vertical_alignment="bottom")
        if len(steps_available) > 1:
            zoom = zoom_column.select_slider(
                "Zoom", steps_available, key="tissue_zoom", on_change=_zoom_changed,
                format_func=lambda z: "whole section" if z == 1 else f"{z}x",
                help="The image is drawn again from a tiled pyramid at each zoom; the last step shows every "
                     f"pixel of the {pyramid.image.source} image.",
            )
        else:
            zoom = 1
            zoom_column.caption("This sample has no tissue image; spots are drawn on white."
                                if pyramid.image.source == "blank" else
                                f"The {pyramid.image.source} image has no more detail than this view.")
        for column, (label, dx, dy) in zip(pan_columns, (("←", -0.5, 0), ("→", 0.5, 0), ("↑", 0, -0.5),
                                                          ("↓", 0, 0.5))):
            column.button(label, key=f"tissue_pan_{label}", on_click=_move, args=(dx, dy), disabled=zoom == 1,
                          help="Move half a view")
        pan_columns[-1].button("Centre", key="tissue_centre_spot", on_click=_centre_on_spot, disabled=zoom == 1,
                               help="Centre the view on the selected spot")
        window = make_window(pyramid, zoom, state.get("tissue_centre"))
        state["tissue_window"] = window
        if zoom > 1:
            state["tissue_centre"] = window.centre  # kept inside the image
        diameter, diameter_source = spot_diameter(adata)
        edges = (window.left, window.top, window.right, window.bottom, window.width, window.height)
        try:
            image_uri = window_image_uri(selection.sample_dir, *edges)
        except ValueError as error:
            # An undecodable full-resolution file: show the tissue from the image Space Ranger stored instead.
            st.warning(f"{error} The viewer shows the hires (or lowres) image instead.")
            try:
                image_uri = window_image_uri(selection.sample_dir, *edges, stored_only=True)
            except ValueError as stored_error:
                st.error(f"Could not draw the sample's image: {stored_error}")
                st.stop()
        figure = viewer_figure(
            adata, window, image_uri,
            diameter=diameter, values=values, colour_title=colour_title, cmin=cmin, cmax=cmax,
            focus=state["tissue_focus"], group=state["tissue_group"], opacity=opacity,
        )
        event = st.plotly_chart(figure, on_select="rerun", selection_mode=("points", "box", "lasso"),
                                key="tissue_plot", width="content",
                                config={"displaylogo": False, "scrollZoom": False,
                                        "modeBarButtonsToRemove": ["zoom2d", "pan2d", "zoomIn2d", "zoomOut2d",
                                                                   "autoScale2d", "resetScale2d"]})
        chosen, by_area = selected_spots(event)
        signature = (tuple(chosen), by_area)
        if chosen and signature != state.get("tissue_last_event"):
            state["tissue_last_event"] = signature
            if by_area:
                state["tissue_group"] = chosen
            else:
                state["tissue_focus"] = chosen[0]
                state["tissue_group"] = []
            st.rerun()
        st.caption(
            f"{adata.n_obs} spots · click a spot to select it, or pick the lasso in the chart's toolbar and draw "
            "around several · "
            f"{window.downsample:.2f} full-resolution pixels per screen pixel, from pyramid level {window.level} · "
            f"spots drawn {diameter:.0f} full-resolution pixels wide ({diameter_source})."
        )

    with right:
        group = [barcode for barcode in state["tissue_group"] if barcode in barcodes]
        if group:
            st.subheader(f"{len(group)} spots in the lasso")
            if st.button("Clear the lasso selection", key="tissue_clear_group"):
                state["tissue_group"] = []
                st.rerun()
            indices = [barcodes.index(barcode) for barcode in group]
            table = spot_table(adata, reconstruction, {colour_title: values} if values is not None else None)
            st.dataframe(table.iloc[indices].drop(columns=["x", "y"]), hide_index=True, height=200)
            if expression_error:
                st.error(expression_error)
            elif pipeline is not None:
                patches = sample_patches(selection.sample_dir, patch_size, resolution)
                shown = indices[:MAX_GROUP]
                with st.spinner(f"Generating one patch for each of {len(shown)} spots…"):
                    generated = [generate_for_spot(selection.model_dir, tuple(float(v) for v in expression[i]), 1,
                                                   int(seed), float(guidance), int(steps), float(strength),
                                                   retrieve_by or "clip")[0]
                                 for i in shown]
                # Real and generated patch of each spot side by side, two spots to a row.
                for first in range(0, len(shown), 2):
                    for column, i, patch in zip(st.columns(2), shown[first : first + 2], generated[first : first + 2]):
                        column.image([patches[i], patch], caption=[f"Real {barcodes[i]}", f"Generated {barcodes[i]}"],
                                     width=84)
                if len(indices) > MAX_GROUP:
                    st.caption(f"Patches of the first {MAX_GROUP} spots; the table lists all {len(indices)}.")
                mean = pd.DataFrame({"gene": pipeline.genes, "mean log1p": expression[indices].mean(axis=0)})
                st.bar_chart(mean.sort_values("mean log1p", ascending=False).head(10), x="gene", y="mean log1p",
                             horizontal=True, sort=False)
                st.caption("Mean expression of the model genes over the lasso selection.")
        else:
            state["tissue_spot"] = state["tissue_focus"]
            barcode = st.selectbox("Spot (barcode)", barcodes, key="tissue_spot",
                                   on_change=lambda: state.update(tissue_focus=state["tissue_spot"]))
            # A plain key (not a widget key) survives page changes, so other pages can start from this spot.
            state["tissue_selected_spot"] = barcode
            index = barcodes.index(barcode)
            if pipeline is None:
                st.info(f"Load a trained model to generate patches. {selection.model_error or ''}")
            elif expression_error:
                st.error(expression_error)
            else:
                try:
                    patches = sample_patches(selection.sample_dir, patch_size, resolution)
                except ValueError as error:
                    st.error(f"Could not cut patches from the sample's image: {error}")
                    st.stop()
                with st.spinner("Generating patches…"):
                    generated = generate_for_spot(selection.model_dir, tuple(float(v) for v in expression[index]),
                                                  n_patches, int(seed), float(guidance), int(steps), float(strength),
                                                  retrieve_by or "clip")
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

with grid:
    try:
        real_uris = real_thumbnails(selection.sample_dir, patch_size, resolution)
    except ValueError as error:
        st.error(f"Could not cut patches from the sample's image: {error}")
        st.stop()
    generated_uris = None
    if reconstruction is not None and "thumbnails" in reconstruction:
        generated_uris = generated_thumbnails(reconstruction["thumbnails"])
    elif pipeline is not None:
        st.caption(reconstruction_note or "This reconstruction stores no generated patches; run it again.")
    table = spot_table(adata, reconstruction, {colour_title: values} if values is not None else None)
    picked = patch_grid(table, real_uris, generated_uris, key="tissue_grid")
    if picked and picked != state.get("tissue_grid_last"):
        state["tissue_grid_last"] = picked
        state["tissue_focus"] = picked
        state["tissue_group"] = []
        st.rerun()
