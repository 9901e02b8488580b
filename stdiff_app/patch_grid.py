"""The patch grid: every spot's real patch (and generated patch, when reconstructed) in a sortable table."""

from __future__ import annotations

import base64
import hashlib
import io

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from .loaders import sample_patches

PAGE_SIZE = 40
THUMBNAIL = 64


def _uri(patch: np.ndarray) -> str:
    image = Image.fromarray(np.asarray(patch))
    if image.width != THUMBNAIL:
        image = image.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@st.cache_data(show_spinner="Making thumbnails…", max_entries=8)
def real_thumbnails(sample_dir: str, patch_size: int, resolution: int) -> list[str]:
    return [_uri(patch) for patch in sample_patches(sample_dir, patch_size, resolution)]


@st.cache_data(show_spinner=False, max_entries=8)
def generated_thumbnails(thumbnails: np.ndarray) -> list[str]:
    return [_uri(patch) for patch in thumbnails]


def _number_format(values: pd.Series) -> str:
    finite = values[np.isfinite(values)]
    return "%d" if len(finite) and np.allclose(finite, np.round(finite)) else "%.3f"


def patch_grid(table: pd.DataFrame, real_uris: list[str], generated_uris: list[str] | None, *,
               key: str = "grid") -> str | None:
    """Draw sort, filter and page controls and the table; return the barcode of a row the user selected."""
    numeric = [column for column in table.columns if column not in ("barcode", "x", "y")]
    table = table.assign(real=real_uris)
    if generated_uris is not None:
        table = table.assign(generated=generated_uris)
    controls = st.columns([2, 1.4, 2, 3, 1.4], vertical_alignment="bottom")
    sort_column, order_column, filter_column, range_column, page_column = controls
    sort_by = sort_column.selectbox("Sort by", numeric, key=f"{key}_sort")
    descending = order_column.toggle("Descending", value=True, key=f"{key}_descending")
    filter_by = filter_column.selectbox("Filter by", numeric, key=f"{key}_filter")
    values = table[filter_by].to_numpy(dtype=np.float64)
    finite = values[np.isfinite(values)]
    kept = table
    if len(finite) and finite.min() < finite.max():
        whole = np.allclose(finite, np.round(finite))
        low, high = (int(finite.min()), int(finite.max())) if whole else (float(finite.min()), float(finite.max()))
        chosen = range_column.slider(f"{filter_by} between", low, high, (low, high), key=f"{key}_range_{filter_by}")
        kept = table[(values >= chosen[0]) & (values <= chosen[1])]
    kept = kept.sort_values(sort_by, ascending=not descending, na_position="last")
    pages = max(1, -(-len(kept) // PAGE_SIZE))
    page = page_column.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page") if pages > 1 else 1
    shown = kept.iloc[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    st.caption(f"{len(kept)} of {len(table)} spots pass the filter; showing {len(shown)}, sorted by {sort_by}. "
               "Select a row to show that spot in the Explore tab.")
    columns = ["real", *(["generated"] if generated_uris is not None else []), "barcode", *numeric]
    config = {
        "real": st.column_config.ImageColumn("Real", width="small"),
        "generated": st.column_config.ImageColumn("Generated", width="small"),
        **{name: st.column_config.NumberColumn(name, format=_number_format(table[name])) for name in numeric},
    }
    # The table's key names what it shows, so a selected row never carries over to other rows after a new sort,
    # filter or page (Streamlit keeps a selection by row position).
    view = hashlib.sha1(repr((sort_by, descending, filter_by, len(kept), page,
                              tuple(shown["barcode"]))).encode()).hexdigest()[:12]
    event = st.dataframe(shown[columns], column_config=config, hide_index=True, on_select="rerun",
                         selection_mode="single-row", key=f"{key}_table_{view}", row_height=70,
                         height=70 * len(shown) + 40)
    rows = event.selection.rows if event and event.selection else []
    return str(shown.iloc[rows[0]]["barcode"]) if rows else None
