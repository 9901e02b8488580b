"""Edit expression page: change a spot's expression profile and compare the patches generated from it.

Patches for the original and the edited profile use the same seeds, so every difference between them comes
from the edit. Expression is in log1p units: log1p(counts / total counts of the spot * target_sum).
"""

import csv
import math

import numpy as np
import pandas as pd
import streamlit as st

from stdiff.metrics import cosine_similarity
from stdiff_app.loaders import generate_for_spot
from stdiff_app.sidebar import choose_sample_and_model, model_expression, require_pipeline

SLIDER_MARGIN = 1.0  # log1p units a slider reaches above the gene's maximum over the sample
DEFAULT_EDIT_GENES = 6  # genes shown as sliders at first: the spot's most expressed ones
CHANGE_TOLERANCE = 1e-4  # log1p units below which a gene counts as unchanged
HEADER_NAMES = {"gene", "genes", "symbol", "gene_symbol", "name", "gene_name"}
PREFIX = "edit_expression_"


def parse_profile(text: str, genes: list[str], *, max_value: float) -> tuple[dict[str, float], list[str], list[str]]:
    """Parse a pasted expression profile.

    Accepts one ``gene,value`` pair per line (comma, tab, semicolon or spaces between them, an optional
    header line), or a wide CSV: a header line of gene names and one line of values. Lines starting with
    ``#`` are skipped. Gene names are matched case-insensitively.

    Returns
    -------
    values
        Model gene -> value for the genes found.
    unknown
        Names that are not model genes.
    errors
        One message per malformed line; when not empty, nothing should be applied.
    """
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not lines:
        return {}, [], ["The pasted profile is empty: paste gene,value lines or a CSV."]
    delimiter = next((d for d in (",", "\t", ";") if any(d in line for _, line in lines)), None)
    if delimiter is None:
        rows = [(number, line.split()) for number, line in lines]
    else:
        rows = [(number, [field.strip() for field in next(csv.reader([line], delimiter=delimiter))])
                for number, line in lines]

    # Wide CSV: gene names on the first line, their values on the second.
    if len(rows) == 2 and len(rows[0][1]) > 2 and len(rows[0][1]) == len(rows[1][1]):
        (_, names), (number, fields) = rows
        rows = [(number, [name, field]) for name, field in zip(names, fields)]

    by_lowercase = {gene.lower(): gene for gene in genes}
    values: dict[str, float] = {}
    first_line: dict[str, int] = {}
    unknown: list[str] = []
    errors: list[str] = []
    for position, (number, fields) in enumerate(rows):
        line_text = delimiter.join(fields) if delimiter else " ".join(fields)
        if len(fields) != 2:
            errors.append(f"Line {number}: expected gene,value, found {len(fields)} fields in '{line_text}'.")
            continue
        name, raw_value = fields
        try:
            value = float(raw_value)
        except ValueError:
            is_header = position == 0 and (name.lower() in HEADER_NAMES or name.lower() not in by_lowercase)
            if not is_header:
                errors.append(f"Line {number}: the value '{raw_value}' of {name} is not a number.")
            continue
        if not math.isfinite(value) or value < 0 or value > max_value:
            errors.append(f"Line {number}: the value {raw_value} of {name} is outside 0 to {max_value:.2f}, "
                          "the log1p range of normalised counts.")
            continue
        gene = by_lowercase.get(name.lower())
        if gene is None:
            unknown.append(name)
            continue
        if gene in first_line:
            errors.append(f"Line {number}: {gene} is listed again (first on line {first_line[gene]}).")
            continue
        first_line[gene] = number
        values[gene] = value
    return values, unknown, errors


def slider_key(gene: str) -> str:
    return f"{PREFIX}slider_{gene}"


def forget_sliders(genes: list[str]) -> None:
    """Drop the slider states so that each slider starts again from the edited profile."""
    for gene in genes:
        st.session_state.pop(slider_key(gene), None)


def show_genes(slider_genes: list[str]) -> None:
    """Choose the genes that get sliders.

    The list is kept apart from the multiselect's own state, which Streamlit drops while another page runs.
    """
    st.session_state[f"{PREFIX}slider_genes"] = slider_genes
    st.session_state[f"{PREFIX}genes"] = slider_genes


def reset_profile(context: tuple, original: np.ndarray, genes: list[str]) -> None:
    st.session_state[f"{PREFIX}context"] = context
    st.session_state[f"{PREFIX}edited"] = {gene: float(v) for gene, v in zip(genes, original)}
    top = np.argsort(-original, kind="stable")[:DEFAULT_EDIT_GENES]
    show_genes([genes[i] for i in top])
    st.session_state.pop(f"{PREFIX}paste_result", None)
    st.session_state.pop(f"{PREFIX}request", None)
    forget_sliders(genes)


def apply_paste(genes: list[str], max_value: float) -> None:
    values, unknown, errors = parse_profile(st.session_state.get(f"{PREFIX}paste", ""), genes, max_value=max_value)
    st.session_state[f"{PREFIX}paste_result"] = {"errors": errors, "unknown": unknown,
                                                 "applied": [] if errors else sorted(values)}
    if errors:
        return
    st.session_state[f"{PREFIX}edited"].update(values)
    slider_genes = st.session_state[f"{PREFIX}slider_genes"]
    show_genes(slider_genes + [gene for gene in genes if gene in values and gene not in slider_genes])
    forget_sliders(genes)


selection = choose_sample_and_model("Edit expression")
adata = selection.adata
st.title("Edit expression")
pipeline = require_pipeline(selection, "generate patches")

genes = list(pipeline.genes)
barcodes = adata.obs_names.to_list()
measured = model_expression(selection)
max_log1p = float(np.log1p(pipeline.gene_set.target_sum))
slider_max = np.minimum(np.ceil((measured.max(axis=0) + SLIDER_MARGIN) * 10) / 10, max_log1p)

if st.session_state.get(f"{PREFIX}spot") not in barcodes:
    tissue_spot = st.session_state.get("tissue_selected_spot")
    st.session_state[f"{PREFIX}spot"] = tissue_spot if tissue_spot in barcodes else barcodes[0]
barcode = st.selectbox("Spot (barcode)", barcodes, key=f"{PREFIX}spot",
                       help="The spot whose measured expression is the starting profile.")
original = measured[barcodes.index(barcode)]
context = (selection.sample_dir, selection.model_dir, barcode)
if st.session_state.get(f"{PREFIX}context") != context:
    reset_profile(context, original, genes)
edited_values: dict[str, float] = st.session_state[f"{PREFIX}edited"]

# Full width, so that the chosen genes stay readable.
if f"{PREFIX}genes" not in st.session_state:
    st.session_state[f"{PREFIX}genes"] = st.session_state[f"{PREFIX}slider_genes"]
slider_genes = st.multiselect("Genes to edit", genes, key=f"{PREFIX}genes",
                              help="Each chosen gene gets a slider. Genes you do not edit keep their value.")
st.session_state[f"{PREFIX}slider_genes"] = slider_genes

controls, results = st.columns([2, 3], gap="large")
with controls:
    st.subheader("Profile")
    for gene in slider_genes:
        column = genes.index(gene)
        upper = float(max(slider_max[column], edited_values[gene]))
        if slider_key(gene) not in st.session_state:
            st.session_state[slider_key(gene)] = min(edited_values[gene], upper)
        edited_values[gene] = st.slider(
            gene, 0.0, upper, step=0.01, key=slider_key(gene),
            help=f"log1p expression; measured at this spot: {original[column]:.2f}, "
                 f"maximum over the sample: {measured[:, column].max():.2f}.",
        )
    st.button("Reset to the measured profile", key=f"{PREFIX}reset", on_click=reset_profile,
              args=(context, original, genes))

    with st.expander("Paste a profile"):
        st.text_area("gene,value lines or a CSV", key=f"{PREFIX}paste", height=140,
                     placeholder="ERBB2,4.5\nKRT19,3.0",
                     help=f"log1p values between 0 and {max_log1p:.2f}. Genes not listed keep their current value.")
        st.button("Apply profile", key=f"{PREFIX}apply", on_click=apply_paste, args=(genes, max_log1p))
    paste_result = st.session_state.get(f"{PREFIX}paste_result")
    if paste_result:
        if paste_result["errors"]:
            st.error("The pasted profile was not applied:\n\n" + "\n".join(f"- {e}" for e in paste_result["errors"]))
        if paste_result["unknown"]:
            st.warning(f"{len(paste_result['unknown'])} genes are not model genes and were ignored: "
                       f"{', '.join(paste_result['unknown'])}.")
        if paste_result["applied"]:
            st.success(f"Applied {len(paste_result['applied'])} genes.")

    st.subheader("Generation")
    n_patches = st.slider("Patches per profile", 1, 4, 1, key=f"{PREFIX}n_patches")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key=f"{PREFIX}seed",
                           help="The same seeds are used for both profiles.")
    guidance = st.slider("Guidance scale", 0.0, 6.0, 2.0, 0.5, key=f"{PREFIX}guidance",
                         help="0 ignores the expression, 1 uses it without guidance, higher pushes harder.")
    steps = st.slider("Sampling steps (DDIM)", 5, 50, 25, 5, key=f"{PREFIX}steps")
    edited = np.asarray([edited_values[gene] for gene in genes], dtype=np.float32)
    if st.button("Generate", key=f"{PREFIX}generate", type="primary"):
        st.session_state[f"{PREFIX}request"] = {
            "edited": tuple(float(v) for v in edited), "n_patches": int(n_patches), "seed": int(seed),
            "guidance": float(guidance), "steps": int(steps),
        }

with results:
    request = st.session_state.get(f"{PREFIX}request")
    if request is None:
        st.info("Edit the profile, then press Generate to see patches for the measured and the edited profile.")
        st.stop()
    if not np.allclose(request["edited"], edited):
        st.warning("The profile changed since these patches were generated; press Generate to update them.")
    requested = np.asarray(request["edited"], dtype=np.float32)
    settings = (request["n_patches"], request["seed"], request["guidance"], request["steps"])
    with st.spinner("Generating patches…"):
        try:
            before = generate_for_spot(selection.model_dir, tuple(float(v) for v in original), *settings)
            after = generate_for_spot(selection.model_dir, request["edited"], *settings)
        except ValueError as error:
            st.error(f"Generation failed: {error}")
            st.stop()

    left, right = st.columns(2)
    seeds = [request["seed"] + j for j in range(request["n_patches"])]
    with left:
        st.markdown("**Measured profile**")
        st.image(list(before), caption=[f"Original {j + 1} (seed {s})" for j, s in enumerate(seeds)], width=180,
                 output_format="PNG")
    with right:
        st.markdown("**Edited profile**")
        st.image(list(after), caption=[f"Edited {j + 1} (seed {s})" for j, s in enumerate(seeds)], width=180,
                 output_format="PNG")

    embeddings = pipeline.embed_images(np.concatenate([before, after]))
    cosine = cosine_similarity(embeddings[: len(before)], embeddings[len(before):])
    pixel_difference = float(np.abs(before.astype(np.int16) - after.astype(np.int16)).mean())
    first, second = st.columns(2)
    first.metric("CLIP cosine, original vs edited", f"{float(np.mean(cosine)):.3f}",
                 help="Cosine of the CLIP image embeddings of patches with the same seed, averaged over patches. "
                      "1 means the model sees the same tissue; lower means the edit changed the patch more.")
    second.metric("Mean absolute pixel difference", f"{pixel_difference:.2f}",
                  help="Mean over pixels and RGB channels, on the 0 to 255 scale; 0 means identical patches.")

    changed = np.flatnonzero(np.abs(requested - original) > CHANGE_TOLERANCE)
    if len(changed) == 0:
        st.info("No gene differs from the measured profile, so both profiles give the same patches.")
        st.stop()
    predicted_before = pipeline.predict_expression(before).mean(axis=0)
    predicted_after = pipeline.predict_expression(after).mean(axis=0)
    table = pd.DataFrame({
        "gene": [genes[i] for i in changed],
        "measured": original[changed],
        "edited": requested[changed],
        "predicted from original patch": predicted_before[changed],
        "predicted from edited patch": predicted_after[changed],
    })
    table["edit"] = table["edited"] - table["measured"]
    table["predicted change"] = table["predicted from edited patch"] - table["predicted from original patch"]
    st.subheader("Changed genes")
    st.dataframe(table.round(3), hide_index=True)
    st.caption("Expression is predicted back from each patch as the similarity-weighted mean of the nearest "
               "training spots in CLIP image space. A predicted change with the sign of the edit means the patch "
               "carries the edit; all values are log1p of counts per "
               f"{pipeline.gene_set.target_sum:,.0f}.")
