"""Samples page: what each sample in the data folder contains, and how much of the loaded model it covers."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from PIL import Image

from stdiff import settings
from stdiff.cache import cache_entries, clear_cache, summary_rows
from stdiff.constants import SPATIAL_KEY
from stdiff.expression import total_counts
from stdiff.io.images import read_image_size
from stdiff.units import format_bytes
from stdiff_app.loaders import list_sample_folders, load_sample
from stdiff_app.sidebar import choose_sample_and_model

PREFIX = "samples_"
THUMBNAIL_SIDE = 320  # pixels


def image_size_text(size: tuple[int, int] | None) -> str:
    return f"{size[0]} × {size[1]}" if size else "none"


@st.cache_data(show_spinner=False, max_entries=64)
def sample_summary(sample_dir: str, model_genes: tuple[str, ...] | None) -> dict:
    """Spots, genes, image sizes (width × height), UMIs per spot and model gene coverage of one sample."""
    adata = load_sample(sample_dir)
    library = next(iter(adata.uns[SPATIAL_KEY].values()))
    images = library.get("images", {})
    fullres_path = library.get("metadata", {}).get("fullres_path")
    sizes = {key: (int(images[key].shape[1]), int(images[key].shape[0])) if key in images else None
             for key in ("hires", "lowres")}
    sizes["fullres"] = read_image_size(Path(fullres_path)) if fullres_path else None
    thumbnail, thumbnail_source = None, None
    for key in ("lowres", "hires"):
        if key in images:
            image = Image.fromarray(np.asarray(images[key])).convert("RGB")
            image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            thumbnail, thumbnail_source = np.asarray(image), key
            break
    found = None
    if model_genes is not None:
        found = int(np.isin(np.asarray(model_genes), adata.var_names.to_numpy()).sum())
    return {
        "spots": adata.n_obs,
        "genes": adata.n_vars,
        "sizes": sizes,
        "counts": total_counts(adata),
        "thumbnail": thumbnail,
        "thumbnail_source": thumbnail_source,
        "model_genes_found": found,
        "warnings": list(library.get("metadata", {}).get("warnings", [])),
    }


selection = choose_sample_and_model("Samples")
pipeline = selection.pipeline
model_genes = tuple(pipeline.genes) if pipeline is not None else None
data_dir = Path(selection.sample_dir).parent
st.title("Samples")
st.caption(f"Samples in `{data_dir}`. Image sizes are width × height in pixels.")
if model_genes is None:
    st.info("No model is loaded, so model gene coverage is not shown.")

rows, details = [], {}
with st.spinner("Reading the samples…"):
    for folder in list_sample_folders(str(data_dir)):
        name = Path(folder).name
        try:
            summary = sample_summary(folder, model_genes)
        except (ValueError, FileNotFoundError, OSError) as error:
            rows.append({"sample": name, "error": str(error)})
            continue
        details[name] = summary
        row = {
            "sample": name,
            "spots": summary["spots"],
            "genes": summary["genes"],
            "full-res image": image_size_text(summary["sizes"]["fullres"]),
            "hires image": image_size_text(summary["sizes"]["hires"]),
            "lowres image": image_size_text(summary["sizes"]["lowres"]),
            "median UMIs per spot": float(np.median(summary["counts"])) if summary["spots"] else 0.0,
        }
        if model_genes is not None:
            row["model genes found"] = f"{summary['model_genes_found']} of {len(model_genes)}"
        rows.append(row)

table = pd.DataFrame(rows)
# Sample names are often long (visium-mouse-placenta-cytassist); keep them whole.
st.dataframe(table, hide_index=True, column_config={"sample": st.column_config.TextColumn(width="medium", pinned=True)})
failed = [row for row in rows if "error" in row]
for row in failed:
    st.error(f"Could not read `{row['sample']}`: {row['error']}")

if details:
    names = list(details)
    current = Path(selection.sample_dir).name
    name = st.selectbox("Sample", names, index=names.index(current) if current in names else 0, key=f"{PREFIX}sample")
    summary = details[name]
    left, right = st.columns([2, 1], gap="large")
    with left:
        counts = pd.DataFrame({"UMIs per spot": summary["counts"]})
        figure = px.histogram(counts, x="UMIs per spot", nbins=50, title=f"{name}: UMI counts per spot")
        figure.update_layout(height=340, margin=dict(l=0, r=0, t=40, b=0), yaxis_title="spots")
        st.plotly_chart(figure, key=f"{PREFIX}histogram")
    with right:
        if summary["thumbnail"] is not None:
            st.image(summary["thumbnail"], caption=f"{name} tissue ({summary['thumbnail_source']} image)")
        else:
            st.info("This sample has no hires or lowres image.")
    if model_genes is not None and summary["model_genes_found"] < len(model_genes):
        missing = len(model_genes) - summary["model_genes_found"]
        st.warning(f"{missing} of the model's {len(model_genes)} genes are not measured in {name}; the model "
                   "reads them as 0, so patches generated here are less reliable.")
    for warning in summary["warnings"]:
        st.warning(warning)


# Walking the tile folders takes a moment, so sizes may be up to 10 seconds old.
@st.cache_data(show_spinner=False, ttl=10)
def cache_usage(cache_dir: str) -> list[dict]:
    return summary_rows(cache_entries(root=cache_dir))


def clear_app_cache(cache_dir: str, sample_dir: str) -> None:
    """Clear uploads, tiles and reconstructions before the page reruns, so that the table shows the result."""
    try:
        removed, failed = clear_cache(root=cache_dir, keep=[sample_dir])
    except (OSError, ValueError) as error:
        message = ("error", f"Failed to clear `{cache_dir}`: {error}. Check the folder's permissions, or remove "
                            "its uploads, tiles and reconstructions folders by hand.")
    else:
        text = (f"Removed {len(removed)} entries ({format_bytes(sum(e.size_bytes for e in removed))}). "
                "The sample in use and downloaded weights were kept.")
        if failed:
            text += f" Failed to remove {len(failed)}: " + "; ".join(f"`{path}` ({error})" for path, error in failed.items())
        message = ("warning" if failed else "success", text)
    cache_usage.clear()
    st.session_state[f"{PREFIX}cache_message"] = message


cache_dir = str(settings.cache_dir())
try:
    usage = cache_usage(cache_dir)
except (OSError, ValueError) as error:
    st.warning(f"Cannot read the cache folder `{cache_dir}`: {error}")
    st.stop()
with st.expander(f"Cache folder: {format_bytes(sum(row['size_bytes'] for row in usage))}"):
    st.caption(f"`{cache_dir}` keeps unpacked uploads, image tiles and reconstructions so that they are not made "
               "again. Set `STDIFF_CACHE_DIR` to move it; `stdiff cache` lists and clears it from a terminal.")
    st.dataframe(pd.DataFrame([{"part": row["part"], "entries": row["entries"], "size": format_bytes(row["size_bytes"]),
                                "oldest (days)": row["oldest_days"], "contents": row["contents"]} for row in usage]),
                 hide_index=True, column_config={"oldest (days)": st.column_config.NumberColumn(format="%.0f")})
    st.button("Clear uploads, tiles and reconstructions", key=f"{PREFIX}clear_cache", on_click=clear_app_cache,
              args=(cache_dir, selection.sample_dir),
              help="Downloaded weights and the sample in use are kept. Everything removed is made again when needed.")
    if f"{PREFIX}cache_message" in st.session_state:
        kind, text = st.session_state.pop(f"{PREFIX}cache_message")
        getattr(st, kind)(text)
