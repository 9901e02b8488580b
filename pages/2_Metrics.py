"""Metrics page: the model's evaluation on held-out samples, every method beside the baselines."""

import json
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from stdiff.metrics import METRICS
from stdiff_app.sidebar import choose_sample_and_model

selection = choose_sample_and_model("Metrics")
st.title("Metrics")
evaluation = Path(selection.model_dir) / "evaluation"
if not (evaluation / "metrics.json").is_file():
    st.info(f"No evaluation in `{evaluation}`. Run `stdiff evaluate RUN_DIR`, then `stdiff export RUN_DIR "
            f"{selection.model_dir}`.")
    st.stop()

payload = json.loads((evaluation / "metrics.json").read_text())
results = payload["results"]
st.caption(f"Trained on {', '.join(payload['metadata']['train_samples'])}; evaluated on held-out "
           f"{', '.join(results)}. Bracketed: bootstrap 95% interval of the mean over spots.")

labels = {name: f"{info.label} ({'↑' if info.higher_is_better else '↓'})" for name, info in METRICS.items()}
sample = st.selectbox("Held-out sample", list(results), key="metrics_sample")


def format_row(method: str, summary: dict) -> dict:
    row = {"method": method}
    for name, label in labels.items():
        entry = summary.get(name)
        row[label] = "" if entry is None else f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
    expression = summary.get("expression_r_top_genes")
    row["Expression r, model genes (↑)"] = "" if expression is None else f"{expression['mean']:.3f}"
    retrieval = summary.get("retrieval")
    row["Retrieval top-5 (↑)"] = "" if retrieval is None else f"{retrieval['top5']:.3f}"
    row["Retrieval median rank (↓)"] = "" if retrieval is None else f"{retrieval['median_rank']:.0f} of {retrieval['n']}"
    frechet = summary.get("frechet_distance")
    row["Fréchet distance (↓)"] = "" if frechet is None else f"{frechet['mean']:.1f}"
    return row


rows = [format_row(method, summary) for method, summary in results[sample].items()]
st.dataframe(pd.DataFrame(rows), hide_index=True)
st.caption("↑ higher is better, ↓ lower is better. Retrieval: the method's patch (for clip_model, the spot's "
           "expression) looks up the real patches of the sample in CLIP space; chance top-5 is 5 / spots. Fréchet "
           "distance: real vs method patches on EfficientNet-Lite0 features. SSIM and PSNR reward blurry averages "
           "(see mean_train_patch), so read them together with LPIPS, the CLIP cosine and the Fréchet distance.")

per_spot_path = evaluation / "per_spot.csv"
if per_spot_path.is_file():
    per_spot = pd.read_csv(per_spot_path)
    per_spot = per_spot[per_spot["sample"] == sample]
    metric = st.selectbox("Distribution of", list(METRICS), format_func=lambda name: METRICS[name].label,
                          key="metrics_distribution")
    figure = px.box(per_spot, x="method", y=metric, points=False, labels={metric: METRICS[metric].label})
    figure.update_layout(height=380, margin=dict(l=0, r=0, t=10, b=0))
    st.plotly_chart(figure, key="metrics_box")

    # Per-spot map: the evaluated spots of the sample selected in the sidebar, coloured by the chosen metric.
    adata = selection.adata
    sidebar_sample = Path(selection.sample_dir).name
    if sample == sidebar_sample:
        from stdiff_app.figures import background_image, tissue_figure

        stdiff_rows = per_spot[per_spot["method"] == "stdiff"].set_index("barcode")
        evaluated = adata[adata.obs_names.isin(stdiff_rows.index)]
        values = stdiff_rows.loc[evaluated.obs_names, metric].to_numpy()
        st.subheader(f"{METRICS[metric].label} of generated patches per spot")
        st.plotly_chart(tissue_figure(evaluated, background=background_image(adata), values=values,
                                      colorbar_title=METRICS[metric].label, height=520), key="metrics_map")
    else:
        st.caption(f"Select {sample} in the sidebar to see this metric on the tissue.")
