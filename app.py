"""stdiff app: browse a Visium sample, click a spot, and compare its real H&E patch with generated ones.

Run with ``streamlit run app.py``. Samples are listed from STDIFF_DATA_DIR and the model is read from
STDIFF_MODEL_DIR (default ``models/demo``); see the README.
"""

import logging

import streamlit as st

from stdiff_app.sidebar import choose_sample_and_model

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
st.set_page_config(page_title="stdiff", page_icon="🔬", layout="wide")

pages = [
    st.Page("pages/tissue.py", title="Tissue", icon="🔬", default=True),
    st.Page("pages/heatmaps.py", title="Heatmaps", icon="🗺️"),
    st.Page("pages/metrics.py", title="Metrics", icon="📊"),
]
page = st.navigation(pages)
st.session_state["app_selection"] = choose_sample_and_model()
page.run()
