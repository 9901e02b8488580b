"""The sidebar shared by every page: data folder, sample and model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from stdiff import settings
from stdiff.io.geo import flat_folder_hint

from .loaders import list_sample_folders, load_pipeline, load_sample
from .upload import upload_sample_widget

logger = logging.getLogger(__name__)


@dataclass
class Selection:
    """The sample and model chosen in the sidebar."""

    sample_dir: str
    model_dir: str
    adata: object
    pipeline: object | None
    model_error: str | None


SIDEBAR_KEYS = ("sidebar_data_dir", "sidebar_sample", "sidebar_model_dir")
# The app's pages in menu order. Streamlit's own page list is hidden in .streamlit/config.toml because it
# would label the home page by its file name, "app".
PAGES = (
    ("app.py", "Tissue", ":material/biotech:"),
    ("pages/1_Heatmaps.py", "Heatmaps", ":material/map:"),
    ("pages/2_Metrics.py", "Metrics", ":material/monitoring:"),
    ("pages/3_Edit_expression.py", "Edit expression", ":material/tune:"),
    ("pages/4_Samples.py", "Samples", ":material/folder_open:"),
    ("pages/5_Export.py", "Export", ":material/download:"),
    ("pages/6_Train.py", "Train", ":material/model_training:"),
)


def choose_sample_and_model(page_title: str) -> Selection:
    """Set up the page, draw the sidebar and return the selection.

    Stops the page with a message when no sample can be read. Every page calls this first.
    """
    st.set_page_config(page_title=f"{page_title} · stdiff", page_icon="🔬", layout="wide")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Streamlit drops a widget's value when a page without that widget runs. Writing the values back keeps
    # the sidebar choices when the user moves between pages.
    for key in SIDEBAR_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    for path, label, icon in PAGES:
        st.sidebar.page_link(path, label=label, icon=icon)
    st.sidebar.header("Data")
    # Defaults go through session_state (not value=), so the write-back above never conflicts with them.
    st.session_state.setdefault("sidebar_data_dir", str(settings.data_dir()))
    st.session_state.setdefault("sidebar_model_dir", str(settings.model_dir()))
    data_dir = st.sidebar.text_input(
        "Data folder", key="sidebar_data_dir",
        help="Folder with one Space Ranger output folder per sample (default: STDIFF_DATA_DIR).",
    )
    uploaded = upload_sample_widget()
    folders = list_sample_folders(data_dir) if Path(data_dir).is_dir() else []
    if uploaded:
        folders = [uploaded, *[folder for folder in folders if folder != uploaded]]
    if not folders:
        st.title(page_title)
        if not Path(data_dir).exists():
            st.info(f"Data folder not found: `{data_dir}`. Enter an existing folder in the sidebar, or upload a "
                    "sample as a .zip or .tar.gz.")
        elif not Path(data_dir).is_dir():
            st.info(f"`{data_dir}` is a file, not a folder. Enter the folder that contains the sample folders.")
        else:
            st.info(f"No samples found in `{data_dir}`. Each sample folder needs a `spatial/` folder and a count "
                    "matrix. Enter another folder in the sidebar, or upload a sample as a .zip or .tar.gz."
                    + flat_folder_hint(data_dir))
        st.stop()
    names = [Path(folder).name for folder in folders]
    if uploaded and st.session_state.get("sidebar_last_upload") != uploaded:
        # A new upload is shown at once; later the user can pick other samples again.
        st.session_state["sidebar_last_upload"] = uploaded
        st.session_state["sidebar_sample"] = Path(uploaded).name
    name = st.sidebar.selectbox("Sample", names, key="sidebar_sample")
    sample_dir = folders[names.index(name)]

    st.sidebar.header("Model")
    model_dir = st.sidebar.text_input(
        "Model folder", key="sidebar_model_dir",
        help="A trained stdiff model (STDIFF_MODEL_DIR), for example models/demo or a run folder.",
    )
    try:
        adata = load_sample(sample_dir)
    except (ValueError, FileNotFoundError) as error:
        st.error(f"Could not read sample `{name}`: {error}")
        st.stop()
    except Exception as error:  # an unexpected reader failure must not leave the user with a traceback
        logger.exception("Reading %s failed", sample_dir)
        st.error(f"Could not read sample `{name}`: unexpected {type(error).__name__}: {error}. "
                 "The full error is in the server log; please report it with the sample's file list.")
        st.stop()
    library = next(iter(adata.uns["spatial"].values()), {})
    for message in library.get("metadata", {}).get("warnings", []):
        st.sidebar.warning(message)
    pipeline, model_error = None, None
    try:
        pipeline = load_pipeline(model_dir)
    except (ValueError, FileNotFoundError) as error:
        model_error = str(error)
        st.sidebar.warning(f"No model loaded: {error}")
    if pipeline is not None:
        card = pipeline.card
        st.sidebar.caption(
            f"{len(pipeline.genes)} genes · patches of {card['patch_size']} px at full resolution, "
            f"resized to {card['resolution']} px · trained on {', '.join(card.get('train_samples', []))}"
        )
    selection = Selection(sample_dir=sample_dir, model_dir=model_dir, adata=adata, pipeline=pipeline,
                          model_error=model_error)
    st.session_state["app_selection"] = selection
    return selection


def require_pipeline(selection: Selection, purpose: str):
    """Return the loaded model, or stop the page with a message saying it is needed to ``purpose``."""
    if selection.pipeline is None:
        st.info(f"Load a trained model to {purpose}. {selection.model_error or ''}")
        st.stop()
    return selection.pipeline


def model_expression(selection: Selection):
    """Return the sample's log1p expression of the model genes (n_spots, n_genes), or stop the page with a
    message when the model cannot read the sample (for example a mouse sample and a human model)."""
    from .loaders import sample_expression

    pipeline = selection.pipeline
    try:
        return sample_expression(selection.sample_dir, pipeline.genes, pipeline.gene_set.target_sum)
    except ValueError as error:
        st.error(f"This model cannot read the sample's expression: {error}")
        st.stop()
