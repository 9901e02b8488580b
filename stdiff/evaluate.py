"""``stdiff evaluate``: score generated patches against real ones, beside baselines on the same spots.

Writes ``RUN_DIR/evaluate/``: ``metrics.json`` (per sample and method: mean, bootstrap 95% interval),
``per_spot.csv`` and ``report.md``.

Methods compared on every evaluated spot:

``stdiff``
    Patches generated from the spot's expression (metrics averaged over the patches of a spot).
``random_train_patch``
    A training patch drawn at random, with :data:`RANDOM_DRAWS` seeded draws per spot. Metrics are averaged over
    the draws as they are over the generated patches of a spot.
``nearest_expression_patch``
    The training patch whose log1p expression is nearest (Euclidean) to the spot's.
``clip_retrieval``
    The training patch whose CLIP image embedding is nearest to the spot's CLIP expression embedding.
``mean_train_patch``
    The pixel-wise mean of all training patches. It tends to win on SSIM and PSNR while losing on perceptual
    metrics, which is why no metric is read alone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .checkpoint_io import write_json_atomically
from .constants import VARIABLE_GENES_NAME
from .expression import GeneSet
from .prepare import TRAIN_PART_SUFFIX, load_samples, read_prepare_config
from .split import SPLIT_FILE
from .reconstruct import reconstruction_folder

logger = logging.getLogger(__name__)

EVALUATE_DIR = "evaluate"
RANDOM_DRAWS = 5  # random training patches scored per spot
METHODS = ("stdiff", "random_train_patch", "nearest_expression_patch", "clip_retrieval", "mean_train_patch")
IMAGE_METRICS = ("clip_cosine", "clip_cosine_mismatched", "lpips", "ssim", "psnr")


# Figures reported by the publication this project started from, on its own data and protocol. The report shows
# them beside ours computed on this protocol.
SEED_PAPER_FIGURES = {"clip_cosine": 0.933, "lpips": 1.095, "ssim": 0.102}


def score_patches(pipeline, real: np.ndarray, candidates: np.ndarray, *, seed: int = 0,
                  real_embeds: np.ndarray | None = None,
                  candidate_embeds: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-spot image metrics of ``candidates`` (N, R, R, 3) against ``real`` (N, R, R, 3)."""
    from .metrics import cosine_similarity, lpips_distance, mismatched_cosine, psnr, ssim

    real_embeds = pipeline.embed_images(real) if real_embeds is None else real_embeds
    candidate_embeds = pipeline.embed_images(candidates) if candidate_embeds is None else candidate_embeds
    scores = {
        "clip_cosine": cosine_similarity(real_embeds, candidate_embeds),
        "lpips": lpips_distance(real, candidates, device=pipeline.device),
        "ssim": ssim(real, candidates),
        "psnr": psnr(real, candidates),
    }
    if len(real) >= 2:
        scores["clip_cosine_mismatched"] = mismatched_cosine(real_embeds, candidate_embeds, seed=seed)
    else:
        scores["clip_cosine_mismatched"] = np.full(len(real), np.nan)
    return scores


def per_gene_pearson(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Pearson r between predicted and measured expression for each gene over spots (n_genes,).

    Genes constant in either array give NaN.
    """
    p = predicted - predicted.mean(axis=0)
    m = measured - measured.mean(axis=0)
    denominator = np.sqrt((p**2).sum(axis=0) * (m**2).sum(axis=0))
    # Predictions from identical patches differ only by float rounding; such a gene counts as constant.
    varies = (predicted.std(axis=0) > 1e-6) & (measured.std(axis=0) > 1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(varies & (denominator > 0), (p * m).sum(axis=0) / denominator, np.nan)


def random_patch_indices(n_spots: int, n_train: int, *, seed: int = 0, draws: int = RANDOM_DRAWS) -> np.ndarray:
    """Return the training patches drawn for the random baseline: int (n_spots, draws), seeded."""
    return np.random.default_rng(seed).integers(n_train, size=(n_spots, draws))


def baseline_patches(pipeline, data, train, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Return the baseline patches for every spot of ``data``, keyed by method name.

    Each value is uint8 (n_spots, R, R, 3), or (n_spots, draws, R, R, 3) for the random baseline.
    """
    train_patches = np.asarray(train.patches)
    distances = ((data.expression[:, None, :] - train.expression[None, :, :]) ** 2).sum(axis=-1)
    retrieval = pipeline.embed_expression(data.expression) @ pipeline.reference["image_embeds"].numpy().T
    mean_patch = train_patches.astype(np.float64).mean(axis=0).round().astype(np.uint8)
    return {
        "random_train_patch": train_patches[random_patch_indices(len(data), len(train_patches), seed=seed)],
        "nearest_expression_patch": train_patches[np.argmin(distances, axis=1)],
        "clip_retrieval": train_patches[np.argmax(retrieval, axis=1)],
        "mean_train_patch": np.broadcast_to(mean_patch, (len(data), *mean_patch.shape)).copy(),
    }


def retrieval_ranks(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of ``targets[i]`` among all targets by cosine similarity to ``queries[i]`` (N,).

    Both arrays are L2-normalised embeddings (N, D); ties count against the true target.
    """
    similarity = queries @ targets.T
    return (similarity >= np.diag(similarity)[:, None]).sum(axis=1) - 1


def retrieval_summary(ranks: np.ndarray, n_targets: int | None = None) -> dict:
    """Return top-1 and top-5 accuracy and median rank, with the chance level of top-5 for comparison.

    ``n_targets`` is the number of patches each query ranks. It defaults to one per rank, as when every spot
    queries once. Ranks of several queries per spot are pooled.
    """
    n = len(ranks) if n_targets is None else n_targets
    return {"top1": float((ranks == 0).mean()), "top5": float((ranks < 5).mean()),
            "median_rank": float(np.median(ranks)), "n": n, "chance_top5": min(1.0, 5 / max(n, 1))}


def _method_patches(run_dir: Path, name: str, variants: Sequence[str]) -> dict[str, Path]:
    folders = {"stdiff": reconstruction_folder(run_dir, name)}
    for variant in variants:
        folders[f"stdiff_{variant}"] = reconstruction_folder(run_dir, name, variant)
    for method, folder in folders.items():
        if not (folder / "settings.json").is_file():
            suffix = "" if method == "stdiff" else f" --name {method[len('stdiff_'):]}"
            raise FileNotFoundError(
                f"{name} has no reconstruction in {folder}. Run `stdiff reconstruct {run_dir}{suffix}` first."
            )
    return folders


def evaluate(run_dir: str | Path, *, samples: Sequence[str] | None = None, seed: int = 0, pipeline=None,
             k_neighbors: int = 10, variants: Sequence[str] = ()) -> dict:
    """Evaluate reconstructed samples of ``run_dir`` and write ``RUN_DIR/evaluate``.

    ``variants`` names extra reconstructions (``stdiff reconstruct --name NAME``), scored as methods
    ``stdiff_NAME``.

    Returns
    -------
    dict
        ``{sample: {method: {metric: summary}}}``. Per-spot metrics are summarised as
        :func:`stdiff.metrics.summarize` does. Each method also gets three sample-level entries.
        ``expression_r_top_genes`` is the mean over genes of the Pearson r between expression predicted from
        the method's patches and the measured expression, within the sample. ``retrieval`` ranks the spot's
        real patch among all real patches of the sample, queried with the method's patch in CLIP image space.
        ``frechet_distance`` compares real and method patches on the EfficientNet-Lite0 features of the CLIP
        image tower. ``clip_model`` contains the
        retrieval of real patches from expression by the CLIP model itself, ``real_patch`` the expression
        predicted from the real patches, and ``nearest_training_expression`` the r of the measured expression of
        the training spot nearest in expression (no image involved).
    """
    from .metrics import METRICS, frechet_distance, summarize
    from .pipeline import StdiffPipeline

    run_dir = Path(run_dir)
    prepare_config, prepare_summary = read_prepare_config(run_dir)
    samples = list(samples) if samples else list(prepare_config.evaluation_parts)
    pipeline = pipeline or StdiffPipeline.from_pretrained(run_dir)
    train = load_samples(run_dir, prepare_config.training_parts)
    variable = train.variable_expression
    if variable is None or len(variable) != len(pipeline.reference["image_embeds"]):
        logger.warning("No most-variable-gene expression for the training spots of %s (prepared with an older "
                       "stdiff); the round trip covers the model genes only. Run `stdiff prepare` again on the "
                       "run to add it.", run_dir)
        variable = None
    results: dict = {}
    frames = []
    for name in samples:
        folders = _method_patches(run_dir, name, variants)
        data = load_samples(run_dir, [name])
        if variable is not None and data.variable_expression is None:
            variable = None
        real = np.asarray(data.patches)
        real_embeds = pipeline.embed_images(real)
        real_features = backbone_features(pipeline, real)
        candidates = {method: None for method in folders}
        candidates.update(baseline_patches(pipeline, data, train, seed=seed))
        sample_results = {}
        for method, patches in candidates.items():
            logger.info("Scoring %s on %s", method, name)
            # Every method is scored as (n_spots, copies, R, R, 3): several generated patches or random draws per
            # spot, one patch for the other baselines. Metrics are averaged over a spot's copies.
            copies = np.load(folders[method] / "generated.npy") if patches is None else patches
            copies = copies if copies.ndim == 5 else copies[:, None]
            embeds = [pipeline.embed_images(copies[:, j]) for j in range(copies.shape[1])]
            per_copy = [score_patches(pipeline, real, copies[:, j], seed=seed, real_embeds=real_embeds,
                                      candidate_embeds=embeds[j]) for j in range(copies.shape[1])]
            scores = {key: np.mean([c[key] for c in per_copy], axis=0) for key in per_copy[0]}
            if patches is None:
                predicted = np.load(folders[method] / "reconstructed_expression.npy")
            else:
                predicted = np.mean([pipeline.predict_from_embeddings(e, k=k_neighbors) for e in embeds], axis=0)
            ranks = np.stack([retrieval_ranks(e, real_embeds) for e in embeds], axis=1)  # (n_spots, copies)
            summary = summarize(scores, seed=seed)
            r = per_gene_pearson(predicted, data.expression)
            summary["expression_r_top_genes"] = {"mean": _nanmean(r), "n": int(np.isfinite(r).sum())}
            if variable is not None:
                predicted = np.mean([pipeline.predict_from_embeddings(e, k=k_neighbors, values=variable)
                                     for e in embeds], axis=0)
                r = per_gene_pearson(predicted, data.variable_expression)
                summary["expression_r_variable_genes"] = {"mean": _nanmean(r), "n": int(np.isfinite(r).sum())}
            summary["retrieval"] = retrieval_summary(ranks.ravel(), n_targets=len(real))
            distances = [frechet_distance(real_features, backbone_features(pipeline, copies[:, j]))
                         for j in range(copies.shape[1])]
            summary["frechet_distance"] = {"mean": float(np.mean(distances)), "copies": len(distances)}
            sample_results[method] = summary
            frame = pd.DataFrame({**scores, "retrieval_rank": ranks.mean(axis=1)})
            frame.insert(0, "method", method)
            frame.insert(0, "barcode", data.spots["barcode"].to_numpy())
            frame.insert(0, "sample", name)
            frames.append(frame)
        r_real = per_gene_pearson(pipeline.predict_from_embeddings(real_embeds, k=k_neighbors), data.expression)
        sample_results["real_patch"] = {"expression_r_top_genes": {"mean": _nanmean(r_real),
                                                                    "n": int(np.isfinite(r_real).sum())}}
        if variable is not None:
            r_real = per_gene_pearson(pipeline.predict_from_embeddings(real_embeds, k=k_neighbors, values=variable),
                                      data.variable_expression)
            sample_results["real_patch"]["expression_r_variable_genes"] = {"mean": _nanmean(r_real),
                                                                            "n": int(np.isfinite(r_real).sum())}
        # The measured expression of the nearest training spot, with no image at all: the value that the round trip
        # of baseline 2 nearly reproduces, because its patch maps back to its own training spot.
        distances = ((data.expression[:, None, :] - train.expression[None, :, :]) ** 2).sum(axis=-1)
        nearest = np.argmin(distances, axis=1)
        r_nearest = per_gene_pearson(train.expression[nearest], data.expression)
        sample_results["nearest_training_expression"] = {
            "expression_r_top_genes": {"mean": _nanmean(r_nearest), "n": int(np.isfinite(r_nearest).sum())}}
        if variable is not None:
            r_nearest = per_gene_pearson(train.variable_expression[nearest], data.variable_expression)
            sample_results["nearest_training_expression"]["expression_r_variable_genes"] = {
                "mean": _nanmean(r_nearest), "n": int(np.isfinite(r_nearest).sum())}
        clip_ranks = retrieval_ranks(pipeline.embed_expression(data.expression), real_embeds)
        sample_results["clip_model"] = {"retrieval": retrieval_summary(clip_ranks)}
        results[name] = sample_results

    out = run_dir / EVALUATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"samples": samples, "train_samples": list(prepare_config.training_parts), "seed": seed,
                "random_draws": RANDOM_DRAWS,
                "variants": list(variants), "prepare": prepare_summary, "k_neighbors": k_neighbors,
                "split": describe_split(prepare_config, prepare_summary), "seed_paper": SEED_PAPER_FIGURES,
                "metrics": {k: vars(v) for k, v in METRICS.items()}}
    if (run_dir / VARIABLE_GENES_NAME).is_file() and variable is not None:
        metadata["variable_genes"] = list(GeneSet.load(run_dir, VARIABLE_GENES_NAME).genes)
    write_json_atomically(out / "metrics.json", {"results": results, "metadata": metadata})
    pd.concat(frames, ignore_index=True).to_csv(out / "per_spot.csv", index=False)
    if (run_dir / SPLIT_FILE).is_file():
        shutil.copy2(run_dir / SPLIT_FILE, out / SPLIT_FILE)
    (out / "report.md").write_text(format_report(results, k_neighbors=k_neighbors, split=metadata["split"]))
    return results


def describe_split(config, summary: dict) -> str:
    """Say in one paragraph which spots trained the models and which were evaluated."""
    parts = []
    if config.train_samples:
        parts.append(f"Whole sections for training: {', '.join(config.train_samples)}.")
    if config.eval_samples:
        parts.append(f"Whole sections held out: {', '.join(config.eval_samples)}.")
    for sample in config.blocked_samples:
        counts = summary.get(sample + TRAIN_PART_SUFFIX, {}).get("split", {})
        parts.append(
            f"{sample} is split in spatial blocks ({config.block_grid} x {config.block_grid} grid, blocks held out "
            f"until {config.eval_block_fraction:.0%} of its spots, seed {config.split_seed}): "
            f"{counts.get('train', '?')} training spots, {counts.get('eval', '?')} evaluated spots and "
            f"{counts.get('gap', '?')} gap spots used for neither, so that every evaluated patch stays at least "
            f"{config.gap} full-resolution pixels from every training patch ({SPLIT_FILE} lists each spot)."
        )
    parts.append(f"Spots with fewer than {config.min_counts} UMIs were dropped before the split.")
    return " ".join(parts)


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN when there are none (every gene constant)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def backbone_features(pipeline, patches: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
    """Pooled EfficientNet-Lite0 (or open_clip) backbone features (N, width) of uint8 patches."""
    import torch

    from .training.common import patches_to_tensor

    chunks = []
    with torch.no_grad():
        for start in range(0, len(patches), batch_size):
            images = patches_to_tensor(np.asarray(patches[start : start + batch_size])).to(pipeline.device)
            chunks.append(pipeline.clip.image.features(images).cpu().numpy())
    return np.concatenate(chunks).astype(np.float64)


def format_report(results: dict, *, k_neighbors: int = 10, split: str = "") -> str:
    """Markdown tables: one per sample, methods as rows, metrics with their direction as columns.

    ``split`` is a paragraph describing how training and evaluated spots were separated.
    """
    from .metrics import METRICS

    lines = ["# stdiff evaluation", ""]
    header = []
    for key in IMAGE_METRICS:
        arrow = "higher better" if METRICS[key].higher_is_better else "lower better"
        header.append(f"{METRICS[key].label} ({arrow})")
    header += ["Expression r, model genes (higher better)", "Expression r, most variable genes (higher better)",
               "Retrieval top-5 (higher better)",
               "Retrieval median rank (lower better)", "Frechet distance, EfficientNet-Lite0 (lower better)"]
    for sample, methods in results.items():
        lines += [f"## {sample}", "", "| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for method, summary in methods.items():
            cells = []
            for key in IMAGE_METRICS:
                entry = summary.get(key)
                cells.append("" if entry is None else
                             f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")
            for key in ("expression_r_top_genes", "expression_r_variable_genes"):
                r = summary.get(key)
                cells.append("" if r is None else f"{r['mean']:.3f}")
            retrieval = summary.get("retrieval")
            cells.append("" if retrieval is None else f"{retrieval['top5']:.3f} (chance {retrieval['chance_top5']:.3f})")
            cells.append("" if retrieval is None else f"{retrieval['median_rank']:.0f} of {retrieval['n']}")
            frechet = summary.get("frechet_distance")
            cells.append("" if frechet is None else f"{frechet['mean']:.1f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Brackets: bootstrap 95% interval of the mean over spots. Retrieval: the method's patch (for clip_model, "
        "the spot's expression) queries the real patches of the sample in CLIP space; the rank of the spot's own "
        "real patch is reported. Methods with several patches per spot (stdiff's generated patches, "
        f"{RANDOM_DRAWS} draws of random_train_patch) are averaged over them: per-spot metrics, predicted "
        "expression and Frechet distance by mean, retrieval ranks pooled. SSIM and PSNR favour blurry averages "
        "(see mean_train_patch), so read them with LPIPS, the CLIP cosine and the Frechet distance.",
        "",
        "Expression r: expression is predicted from a patch as the similarity-weighted mean over the "
        f"{k_neighbors} training spots nearest in CLIP image space; Pearson r between predicted and measured "
        "log1p expression is taken over the sample's spots for each gene, then averaged over the model genes "
        "(the top expressed ones) and over the most variable training genes (scanpy, Seurat flavour). "
        "real_patch is the round trip of the spot's own real patch, the score of a generator that reproduced "
        "the tissue exactly. nearest_training_expression is no image at all: the measured expression of the "
        "training spot nearest in expression. A copied training patch (nearest_expression_patch) maps back to "
        "about that value, which is why it can score above the real patch.",
        "",
        "## Beside the published figures",
        "",
        "The publication this project started from reported, on its own data and protocol: mean cosine "
        f"{SEED_PAPER_FIGURES['clip_cosine']}, LPIPS {SEED_PAPER_FIGURES['lpips']}, "
        f"SSIM {SEED_PAPER_FIGURES['ssim']}. The same three figures on this protocol:",
        "",
        "| sample | method | CLIP cosine | LPIPS | SSIM |",
        "|---|---|---|---|---|",
    ]
    for sample, methods in results.items():
        for method, summary in methods.items():
            if method.startswith("stdiff") and "lpips" in summary:
                lines.append(f"| {sample} | {method} | {summary['clip_cosine']['mean']:.3f} | "
                             f"{summary['lpips']['mean']:.3f} | {summary['ssim']['mean']:.3f} |")
    lines += [
        "",
        "LPIPS (AlexNet) averages unit-normalised feature distances and stays well below 1 for natural images, "
        "so an LPIPS above 1 cannot come from the same definition; a cosine also depends on the embedding it "
        "is taken in. Read the rows above against the baselines of the same table, not against the paper.",
    ]
    if split:
        lines += ["", "## Split", "", split]
    return "\n".join(lines) + "\n"
