"""The sidebar shared by every page: data folder, sample and model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from stdiff import settings

from .loaders import list_sample_folders, load_pipeline, load_sample


@dataclass
class Selection:
    """What the user picked in the sidebar."""

    sample_dir: str
    model_dir: str
    adata: object
    pipeline: object | None
    model_error: str | None


def choose_sample_and_model() -> Selection:
    """Draw the sidebar and return the selection, or stop the page with a message when nothing can load."""
    st.sidebar.header("Data")
    data_dir = st.sidebar.text_input(
        "Data folder", value=str(settings.data_dir()), key="sidebar_data_dir",
        help="Folder with one Space Ranger output folder per sample (STDIFF_DATA_DIR).",
    )
    folders = list_sample_folders(data_dir) if Path(data_dir).is_dir() else []
    if not folders:
        st.info(f"No samples found in `{data_dir}`. Each sample needs a `spatial/` folder and a count matrix. "
                "Set the data folder in the sidebar or the STDIFF_DATA_DIR environment variable.")
        st.stop()
    names = [Path(folder).name for folder in folders]
    name = st.sidebar.selectbox("Sample", names, key="sidebar_sample")
    sample_dir = folders[names.index(name)]

    st.sidebar.header("Model")
    model_dir = st.sidebar.text_input(
        "Model folder", value=str(settings.model_dir()), key="sidebar_model_dir",
        help="A trained stdiff model (STDIFF_MODEL_DIR), for example models/demo or a run folder.",
    )
    try:
        adata = load_sample(sample_dir)
    except (ValueError, FileNotFoundError) as error:
        st.error(f"Could not read sample `{name}`: {error}")
        st.stop()
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
    return Selection(sample_dir=sample_dir, model_dir=model_dir, adata=adata, pipeline=pipeline,
                     model_error=model_error)
