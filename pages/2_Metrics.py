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

columns = [name for name in METRICS] + ["expression_r_top_genes"]
labels = {name: f"{info.label} ({'↑' if info.higher_is_better else '↓'})" for name, info in METRICS.items()}
labels["expression_r_top_genes"] = "Expression r, model genes (↑)"
sample = st.selectbox("Held-out sample", list(results), key="metrics_sample")
rows = []
for method, summary in results[sample].items():
    row = {"method": method}
    for name in columns:
        entry = summary.get(name)
        if entry is None:
            row[labels[name]] = ""
        elif "ci_low" in entry:
            row[labels[name]] = f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
        else:
            row[labels[name]] = f"{entry['mean']:.3f}"
    rows.append(row)
st.dataframe(pd.DataFrame(rows), hide_index=True)
st.caption("↑ higher is better, ↓ lower is better. SSIM and PSNR reward blurry averages (see mean_train_patch), "
           "so read them together with LPIPS and the CLIP cosine.")

per_spot_path = evaluation / "per_spot.csv"
if per_spot_path.is_file():
    per_spot = pd.read_csv(per_spot_path)
    per_spot = per_spot[per_spot["sample"] == sample]
    metric = st.selectbox("Distribution of", list(METRICS), format_func=lambda name: METRICS[name].label,
                          key="metrics_distribution")
    figure = px.box(per_spot, x="method", y=metric, points=False, labels={metric: METRICS[metric].label})
    figure.update_layout(height=380, margin=dict(l=0, r=0, t=10, b=0))
    st.plotly_chart(figure, key="metrics_box")
