"""``stdiff reconstruct``: generate patches for every spot of a sample and predict expression back from them.

Writes ``RUN_DIR/reconstruct/SAMPLE/``:
``generated.npy`` uint8 (n_spots, n_per_spot, R, R, 3), ``reconstructed_expression.npy`` float32
(n_spots, n_genes) predicted from the generated patches, ``spots.csv`` and ``settings.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .checkpoint_io import write_json_atomically
from .prepare import load_samples, read_prepare_config

logger = logging.getLogger(__name__)

RECONSTRUCT_DIR = "reconstruct"
INIT_CHOICES = ("noise", "retrieved")
RETRIEVAL_CHOICES = ("clip", "expression")


@dataclass(frozen=True)
class ReconstructConfig:
    """Settings of ``stdiff reconstruct``."""

    n_per_spot: int = 2
    seed: int = 0
    guidance_scale: float = 2.0
    num_inference_steps: int = 25
    init: str = "noise"  # "noise", or "retrieved": start from a retrieved training patch
    strength: float = 1.0  # share of the noise schedule applied to the retrieved start patch
    retrieve_by: str = "clip"  # start patch nearest in CLIP space ("clip") or in measured expression ("expression")
    k_neighbors: int = 10  # training spots averaged to predict expression from a generated patch

    def __post_init__(self) -> None:
        if self.init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {self.init!r}.")
        if self.retrieve_by not in RETRIEVAL_CHOICES:
            raise ValueError(f"retrieve_by must be one of {RETRIEVAL_CHOICES}, got {self.retrieve_by!r}.")
        if self.init == "noise" and self.strength != 1.0:
            raise ValueError("strength applies only with init='retrieved'; leave it at 1.0 for init='noise'.")


def retrieve_training_patches(pipeline, expression: np.ndarray, train_patches: np.ndarray, *,
                              by: str = "clip") -> np.ndarray:
    """Return, for each expression vector, the training patch retrieved for it (uint8, (N, R, R, 3)); ``by`` as
    in :meth:`stdiff.pipeline.StdiffPipeline.retrieve_reference`."""
    return np.asarray(train_patches[pipeline.retrieve_reference(expression, by=by)])


def reconstruct_spots(
    pipeline, expression: np.ndarray, config: ReconstructConfig, *, train_patches: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate patches for each expression vector and predict expression back from them.

    Returns
    -------
    generated
        uint8 (n_spots, n_per_spot, R, R, 3).
    reconstructed
        float32 (n_spots, n_genes): expression predicted from each generated patch, averaged over a spot's
        patches.
    """
    init_patches, init_latents = None, None
    if config.init == "retrieved":
        if pipeline.has_reference_latents:
            init_latents = pipeline.retrieved_latents(expression, by=config.retrieve_by)
        elif train_patches is not None:
            init_patches = retrieve_training_patches(pipeline, expression, train_patches, by=config.retrieve_by)
        else:
            raise ValueError("init='retrieved' needs training latents in the model folder or train_patches.")
    generated = pipeline.generate(
        expression,
        n_per_spot=config.n_per_spot,
        seed=config.seed,
        guidance_scale=config.guidance_scale,
        num_inference_steps=config.num_inference_steps,
        init_patches=init_patches,
        init_latents=init_latents,
        strength=config.strength,
        progress=progress,
    )
    flat = generated.reshape(-1, *generated.shape[2:])
    predicted = pipeline.predict_expression(flat, k=config.k_neighbors)
    predicted = predicted.reshape(len(expression), config.n_per_spot, -1).mean(axis=1)
    return generated, predicted.astype(np.float32)


def reconstruction_folder(run_dir: str | Path, sample: str, name: str | None = None) -> Path:
    """Folder of a sample's reconstruction: ``RUN_DIR/reconstruct/SAMPLE``, or ``RUN_DIR/reconstruct-NAME/SAMPLE``
    for a named variant (for example other sampling settings evaluated beside the default)."""
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise ValueError(f"Invalid reconstruction name {name!r}: use letters, digits, '-' or '_'.")
    return Path(run_dir) / (RECONSTRUCT_DIR if name is None else f"{RECONSTRUCT_DIR}-{name}") / sample


def reconstruct(
    run_dir: str | Path,
    config: ReconstructConfig = ReconstructConfig(),
    *,
    samples: Sequence[str] | None = None,
    pipeline=None,
    overwrite: bool = False,
    name: str | None = None,
) -> dict[str, Path]:
    """Generate patches and reconstructed expression for ``samples`` (default: the run's evaluation samples).

    ``name`` stores a variant beside the default reconstruction (see :func:`reconstruction_folder`).
    Resumable: a sample already reconstructed with the same settings is skipped.
    """
    from .pipeline import StdiffPipeline

    run_dir = Path(run_dir)
    prepare_config, _ = read_prepare_config(run_dir)
    samples = list(samples) if samples else list(prepare_config.evaluation_parts)
    if not samples:
        raise ValueError("No samples to reconstruct: pass --samples or prepare the run with --eval-samples.")
    pipeline = pipeline or StdiffPipeline.from_pretrained(run_dir)
    train_patches = None
    written = {}
    for sample in samples:
        out = reconstruction_folder(run_dir, sample, name)
        settings_path = out / "settings.json"
        if settings_path.is_file() and not overwrite:
            if json.loads(settings_path.read_text()) == dataclasses.asdict(config):
                logger.info("%s already reconstructed, skipping", sample)
                written[sample] = out
                continue
        data = load_samples(run_dir, [sample])
        if config.init == "retrieved" and train_patches is None and not pipeline.has_reference_latents:
            train_patches = load_samples(run_dir, prepare_config.training_parts).patches
        generated, predicted = reconstruct_spots(pipeline, data.expression, config, train_patches=train_patches)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "generated.npy", generated)
        np.save(out / "reconstructed_expression.npy", predicted)
        data.spots.to_csv(out / "spots.csv", index=False)
        # settings.json is written last: its presence marks the sample as complete.
        write_json_atomically(settings_path, dataclasses.asdict(config))
        written[sample] = out
    return written


SPOT_METRICS = ("clip_cosine", "lpips", "ssim", "psnr")  # per-spot metrics stored by reconstruct_to_file
THUMBNAIL_SIZE = 64


def reconstruct_to_file(
    pipeline,
    adata,
    path: str | Path,
    config: ReconstructConfig = ReconstructConfig(n_per_spot=1),
    *,
    chunk_size: int = 16,
    callback=None,
    real_patches: np.ndarray | None = None,
) -> Path:
    """Reconstruct every spot of ``adata`` and write ``path`` (npz) for the app's heatmaps, maps and patch grid.

    The file contains ``barcodes``, ``reconstructed`` (float32 (n_spots, n_genes), in ``pipeline.genes`` order),
    ``genes``, ``settings`` (JSON) and ``thumbnails`` (uint8 (n_spots, 64, 64, 3), each spot's first generated
    patch). With ``real_patches`` (uint8 (n_spots, R, R, 3), the spots' real patches at the model's resolution)
    it also holds ``metric_NAME`` (float32 (n_spots,)) for each name in :data:`SPOT_METRICS`, comparing the
    first generated patch with the real one. ``callback(done, total)`` is called after each chunk of spots; the
    result equals a single call because patch seeds depend only on the spot's position.
    """
    import os

    from PIL import Image

    from .expression import expression_matrix
    from .metrics import cosine_similarity, lpips_distance, psnr, ssim

    path = Path(path)
    expression = expression_matrix(adata, pipeline.gene_set)
    if real_patches is not None and len(real_patches) != len(expression):
        raise ValueError(f"real_patches contains {len(real_patches)} patches for {len(expression)} spots.")
    predicted, thumbnails = [], []
    metrics: dict[str, list] = {name: [] for name in SPOT_METRICS}
    for start in range(0, len(expression), chunk_size):
        chunk = expression[start : start + chunk_size]
        chunk_config = dataclasses.replace(config, seed=config.seed + start * config.n_per_spot)
        generated, chunk_predicted = reconstruct_spots(pipeline, chunk, chunk_config, progress=False)
        predicted.append(chunk_predicted)
        first = generated[:, 0]
        thumbnails.append(np.stack([
            np.asarray(Image.fromarray(patch).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS))
            for patch in first
        ]))
        if real_patches is not None:
            real = np.asarray(real_patches[start : start + chunk_size])
            embeds = pipeline.embed_images(np.concatenate([real, first]))
            metrics["clip_cosine"].append(cosine_similarity(embeds[: len(real)], embeds[len(real) :]))
            metrics["lpips"].append(lpips_distance(real, first, device=pipeline.device))
            metrics["ssim"].append(ssim(real, first))
            metrics["psnr"].append(psnr(real, first))
        if callback is not None:
            callback(min(start + chunk_size, len(expression)), len(expression))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    resolution = THUMBNAIL_SIZE
    arrays = dict(
        barcodes=adata.obs_names.to_numpy().astype(str),
        reconstructed=np.concatenate(predicted) if predicted else np.zeros((0, len(pipeline.genes)), np.float32),
        genes=np.asarray(pipeline.genes),
        settings=json.dumps(dataclasses.asdict(config)),
        thumbnails=np.concatenate(thumbnails) if thumbnails else np.zeros((0, resolution, resolution, 3), np.uint8),
    )
    if real_patches is not None:
        for name, values in metrics.items():
            arrays[f"metric_{name}"] = (np.concatenate(values) if values else np.zeros(0)).astype(np.float32)
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path
