"""Metrics page: the model's evaluation on held-out samples, every method beside the baselines."""

import json
from pathlib import Path

import pandas as pd
import plotly.express as px
import streamlit as st

from stdiff.evaluate import SEED_PAPER_FIGURES
from stdiff.metrics import METRICS
from stdiff.prepare import EVAL_PART_SUFFIX
from stdiff.split import SPLIT_FILE
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
metadata = payload["metadata"]
st.caption(f"Trained on {', '.join(metadata['train_samples'])}; evaluated on held-out "
           f"{', '.join(results)}. Bracketed: bootstrap 95% interval of the mean over spots.")
split_path = evaluation / SPLIT_FILE
with st.expander("How training and evaluated spots were split", expanded=split_path.is_file()):
    st.write(metadata.get("split", "This evaluation was written by an older stdiff and does not record its split."))
    if split_path.is_file():
        split = pd.read_csv(split_path, dtype={"barcode": str})
        for section, spots in split.groupby("sample"):
            figure = px.scatter(spots, x="x", y="y", color="split", symbol="split",
                                color_discrete_map={"train": "#1f77b4", "eval": "#d62728", "gap": "#bbbbbb"},
                                hover_data=["barcode", "block"], title=f"{section}: spatial blocks")
            figure.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, visible=False)
            figure.update_xaxes(visible=False)
            figure.update_layout(height=420, margin=dict(l=0, r=0, t=40, b=0))
            st.plotly_chart(figure, key=f"metrics_split_{section}")
        st.caption("Red spots were evaluated, blue spots trained the models, grey spots lie too close to an "
                   "evaluated patch and were used for neither.")

labels = {name: f"{info.label} ({'↑' if info.higher_is_better else '↓'})" for name, info in METRICS.items()}
held_out = list(results)
sidebar_section = Path(selection.sample_dir).name
# Start on the section picked in the sidebar when it was evaluated (a blocked section under its part name).
if st.session_state.get("metrics_sample") not in held_out:
    for name in held_out:
        if name.removesuffix(EVAL_PART_SUFFIX) == sidebar_section:
            st.session_state["metrics_sample"] = name
sample = st.selectbox("Held-out sample", held_out, key="metrics_sample")


def format_row(method: str, summary: dict) -> dict:
    row = {"method": method}
    for name, label in labels.items():
        entry = summary.get(name)
        row[label] = "" if entry is None else f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
    for key, label in (("expression_r_top_genes", "Expression r, model genes (↑)"),
                       ("expression_r_variable_genes", "Expression r, most variable genes (↑)")):
        expression = summary.get(key)
        row[label] = "" if expression is None else f"{expression['mean']:.3f}"
    retrieval = summary.get("retrieval")
    row["Retrieval top-5 (↑)"] = "" if retrieval is None else f"{retrieval['top5']:.3f}"
    rank = "" if retrieval is None else f"{retrieval['median_rank']:.0f} of {retrieval['n']}"
    row["Retrieval median rank (↓)"] = rank
    frechet = summary.get("frechet_distance")
    row["Fréchet distance (↓)"] = "" if frechet is None else f"{frechet['mean']:.1f}"
    return row


rows = [format_row(method, summary) for method, summary in results[sample].items()]
st.dataframe(pd.DataFrame(rows), hide_index=True)
st.caption("Rows: `stdiff` generates from noise; `stdiff_NAME` is a variant stored with `stdiff reconstruct --name "
           "NAME` (for example `retrieved`: start from the CLIP-retrieved training patch; `nearest-s03`: start from "
           "the nearest-expression training patch at strength 0.3; `unconditional`: guidance 0). The other "
           "image rows are the baselines. `clip_model` (retrieval only) ranks real patches by the CLIP model itself; "
           "`real_patch` and `nearest_training_expression` (expression r only) are the round trip of the spot's "
           "real patch and the measured expression of the nearest training spot, the references the round trip "
           "is read against.")
st.caption("↑ higher is better, ↓ lower is better. Retrieval: the method's patch (for clip_model, the spot's "
           "expression) looks up the real patches of the sample in CLIP space; chance top-5 is 5 / spots. Fréchet "
           "distance: real vs method patches on EfficientNet-Lite0 features. SSIM and PSNR reward blurry averages "
           "(see mean_train_patch), so read them together with LPIPS, the CLIP cosine and the Fréchet distance.")

paper = metadata.get("seed_paper", SEED_PAPER_FIGURES)
ours = [{"method": method, "CLIP cosine": summary["clip_cosine"]["mean"], "LPIPS": summary["lpips"]["mean"],
         "SSIM": summary["ssim"]["mean"]} for method, summary in results[sample].items() if "lpips" in summary]
st.subheader("Beside the published figures")
st.dataframe(pd.DataFrame([{"method": "published (its own data and protocol)", "CLIP cosine": paper["clip_cosine"],
                            "LPIPS": paper["lpips"], "SSIM": paper["ssim"]}, *ours]),
             hide_index=True, column_config={name: st.column_config.NumberColumn(format="%.3f")
                                             for name in ("CLIP cosine", "LPIPS", "SSIM")})
st.caption("The paper's figures come from its own data, embedding and LPIPS scaling; an LPIPS above 1 cannot come "
           "from the AlexNet LPIPS used here, which stays below 1 for natural images. Compare our rows with the "
           "baselines above, not with the paper.")

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
    section = sample.removesuffix(EVAL_PART_SUFFIX)  # a blocked section's evaluated part is named after it
    if section == sidebar_sample:
        from stdiff_app.figures import background_image, tissue_figure

        stdiff_rows = per_spot[per_spot["method"] == "stdiff"].set_index("barcode")
        evaluated = adata[adata.obs_names.isin(stdiff_rows.index)]
        values = stdiff_rows.loc[evaluated.obs_names, metric].to_numpy()
        st.subheader(f"{METRICS[metric].label} of generated patches per spot")
        st.plotly_chart(tissue_figure(evaluated, background=background_image(adata), values=values,
                                      colorbar_title=METRICS[metric].label, height=520), key="metrics_map")
    else:
        st.caption(f"Select {section} in the sidebar to see this metric on the tissue.")
