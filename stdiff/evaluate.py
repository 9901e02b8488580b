"""``stdiff evaluate``: score generated patches against real ones, beside baselines on the same spots.

Writes ``RUN_DIR/evaluate/``: ``metrics.json`` (per sample and method: mean, bootstrap 95% interval),
``per_spot.csv`` and ``report.md``.

Methods compared on every evaluated spot:

``stdiff``
    Patches generated from the spot's expression (metrics averaged over the patches of a spot).
``random_train_patch``
    A training patch drawn at random (seeded).
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
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .checkpoint_io import write_json_atomically
from .prepare import load_samples, read_prepare_config
from .reconstruct import RECONSTRUCT_DIR

logger = logging.getLogger(__name__)

EVALUATE_DIR = "evaluate"
METHODS = ("stdiff", "random_train_patch", "nearest_expression_patch", "clip_retrieval", "mean_train_patch")
IMAGE_METRICS = ("clip_cosine", "clip_cosine_mismatched", "lpips", "ssim", "psnr")


def score_patches(pipeline, real: np.ndarray, candidates: np.ndarray, *, seed: int = 0,
                  real_embeds: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-spot image metrics of ``candidates`` (N, R, R, 3) against ``real`` (N, R, R, 3)."""
    from .metrics import cosine_similarity, lpips_distance, mismatched_cosine, psnr, ssim

    real_embeds = pipeline.embed_images(real) if real_embeds is None else real_embeds
    candidate_embeds = pipeline.embed_images(candidates)
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
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (p * m).sum(axis=0) / denominator, np.nan)


def baseline_patches(pipeline, data, train, *, seed: int = 0) -> dict[str, np.ndarray]:
    """The baseline patches for every spot of ``data``, keyed by method name."""
    rng = np.random.default_rng(seed)
    train_patches = np.asarray(train.patches)
    distances = ((data.expression[:, None, :] - train.expression[None, :, :]) ** 2).sum(axis=-1)
    retrieval = pipeline.embed_expression(data.expression) @ pipeline.reference["image_embeds"].numpy().T
    mean_patch = train_patches.astype(np.float64).mean(axis=0).round().astype(np.uint8)
    return {
        "random_train_patch": train_patches[rng.integers(len(train_patches), size=len(data))],
        "nearest_expression_patch": train_patches[np.argmin(distances, axis=1)],
        "clip_retrieval": train_patches[np.argmax(retrieval, axis=1)],
        "mean_train_patch": np.broadcast_to(mean_patch, (len(data), *mean_patch.shape)).copy(),
    }


def evaluate(run_dir: str | Path, *, samples: Sequence[str] | None = None, seed: int = 0, pipeline=None,
             k_neighbors: int = 10) -> dict:
    """Evaluate reconstructed samples of ``run_dir`` and write ``RUN_DIR/evaluate``.

    Returns
    -------
    dict
        ``{sample: {method: {metric: summary}}}``, summaries as :func:`stdiff.metrics.summarize` returns them,
        plus ``expression_r_top_genes``: the mean over genes of the per-gene Pearson r between expression
        predicted from the method's patches and the measured expression, within the sample.
    """
    from .metrics import METRICS, summarize
    from .pipeline import StdiffPipeline

    run_dir = Path(run_dir)
    prepare_config, prepare_summary = read_prepare_config(run_dir)
    samples = list(samples) if samples else list(prepare_config.eval_samples)
    pipeline = pipeline or StdiffPipeline.from_pretrained(run_dir)
    train = load_samples(run_dir, prepare_config.train_samples)
    results: dict = {}
    frames = []
    for name in samples:
        folder = run_dir / RECONSTRUCT_DIR / name
        if not (folder / "settings.json").is_file():
            raise FileNotFoundError(f"{name} is not reconstructed in {run_dir}. Run `stdiff reconstruct {run_dir}` first.")
        data = load_samples(run_dir, [name])
        real = np.asarray(data.patches)
        generated = np.load(folder / "generated.npy")
        real_embeds = pipeline.embed_images(real)
        candidates = {"stdiff": None, **baseline_patches(pipeline, data, train, seed=seed)}
        sample_results = {}
        for method, patches in candidates.items():
            logger.info("Scoring %s on %s", method, name)
            if patches is None:
                copies = [score_patches(pipeline, real, generated[:, j], seed=seed, real_embeds=real_embeds)
                          for j in range(generated.shape[1])]
                scores = {key: np.mean([c[key] for c in copies], axis=0) for key in copies[0]}
                predicted = np.load(folder / "reconstructed_expression.npy")
            else:
                scores = score_patches(pipeline, real, patches, seed=seed, real_embeds=real_embeds)
                predicted = pipeline.predict_expression(patches, k=k_neighbors)
            summary = summarize(scores, seed=seed)
            r = per_gene_pearson(predicted, data.expression)
            summary["expression_r_top_genes"] = {"mean": float(np.nanmean(r)), "n": int(np.isfinite(r).sum())}
            sample_results[method] = summary
            frame = pd.DataFrame(scores)
            frame.insert(0, "method", method)
            frame.insert(0, "barcode", data.spots["barcode"].to_numpy())
            frame.insert(0, "sample", name)
            frames.append(frame)
        r_real = per_gene_pearson(pipeline.predict_from_embeddings(real_embeds, k=k_neighbors), data.expression)
        sample_results["real_patch"] = {"expression_r_top_genes": {"mean": float(np.nanmean(r_real)),
                                                                    "n": int(np.isfinite(r_real).sum())}}
        results[name] = sample_results

    out = run_dir / EVALUATE_DIR
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"samples": samples, "train_samples": list(prepare_config.train_samples), "seed": seed,
                "prepare": prepare_summary, "metrics": {k: vars(v) for k, v in METRICS.items()}}
    write_json_atomically(out / "metrics.json", {"results": results, "metadata": metadata})
    pd.concat(frames, ignore_index=True).to_csv(out / "per_spot.csv", index=False)
    (out / "report.md").write_text(format_report(results))
    return results


def format_report(results: dict) -> str:
    """Markdown tables: one per sample, methods as rows, metrics with direction as columns."""
    from .metrics import METRICS

    lines = ["# stdiff evaluation", ""]
    columns = [*IMAGE_METRICS, "expression_r_top_genes"]
    header = []
    for key in columns:
        if key in METRICS:
            arrow = "higher better" if METRICS[key].higher_is_better else "lower better"
            header.append(f"{METRICS[key].label} ({arrow})")
        else:
            header.append("Expression r, top genes (higher better)")
    for sample, methods in results.items():
        lines += [f"## {sample}", "", "| method | " + " | ".join(header) + " |",
                  "|---|" + "---|" * len(columns)]
        for method, summary in methods.items():
            cells = []
            for key in columns:
                entry = summary.get(key)
                if entry is None:
                    cells.append("")
                elif "ci_low" in entry:
                    cells.append(f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")
                else:
                    cells.append(f"{entry['mean']:.3f}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Brackets: bootstrap 95% interval of the mean over spots. SSIM and PSNR favour blurry averages "
                 "(see mean_train_patch); read them with LPIPS and the CLIP cosine.")
    return "\n".join(lines) + "\n"
