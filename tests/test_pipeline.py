"""Tests for inference, reconstruction, evaluation and the command line on a small trained run."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest

from _helpers import (
    EVAL_SAMPLE,
    N_GENES,
    RESOLUTION,
    TRAIN_SAMPLE,
    copy_run,
    file_times,
    offline_env,
    train_min_counts,
    trained_run,
)
from stdiff.cli import main
from stdiff.evaluate import (
    EVALUATE_DIR,
    IMAGE_METRICS,
    METHODS,
    RANDOM_DRAWS,
    evaluate,
    format_report,
    per_gene_pearson,
    random_patch_indices,
    retrieval_ranks,
    retrieval_summary,
)
from stdiff.pipeline import MODEL_CARD, StdiffPipeline, read_model_card
from stdiff.prepare import PREPARE_NAME, PrepareConfig, load_samples
from stdiff.reconstruct import (
    RECONSTRUCT_DIR,
    SPOT_METRICS,
    THUMBNAIL_SIZE,
    ReconstructConfig,
    reconstruct,
    reconstruct_spots,
    reconstruct_to_file,
    retrieve_training_patches,
)

EVAL_CONFIG = ReconstructConfig(n_per_spot=2, num_inference_steps=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data_dir, shared_weights_dir):
    return trained_run(tmp_path_factory, shared_data_dir, shared_weights_dir)


@pytest.fixture(scope="module")
def pipeline(run, shared_weights_dir) -> StdiffPipeline:
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline_env(monkeypatch, shared_weights_dir)
        return StdiffPipeline.from_pretrained(run, device="cpu")


@pytest.fixture(scope="module")
def train_data(run):
    return load_samples(run, [TRAIN_SAMPLE])


@pytest.fixture(scope="module")
def eval_data(run):
    return load_samples(run, [EVAL_SAMPLE])


@pytest.fixture(scope="module")
def evaluated(run, pipeline, shared_weights_dir):
    """The run after `reconstruct` and `evaluate` of its evaluation sample; returns evaluate's results."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline_env(monkeypatch, shared_weights_dir)
        reconstruct(run, EVAL_CONFIG, pipeline=pipeline)
        return evaluate(run, pipeline=pipeline)


def generate(pipeline, expression, **kwargs) -> np.ndarray:
    values = dict(n_per_spot=2, seed=0, num_inference_steps=3)
    values.update(kwargs)
    return pipeline.generate(expression, **values)


# --- StdiffPipeline -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_properties(pipeline, run):
    assert len(pipeline.genes) == N_GENES
    assert pipeline.resolution == RESOLUTION
    assert pipeline.patch_size == 256
    assert pipeline.card["train_samples"] == [TRAIN_SAMPLE]
    assert read_model_card(run) == pipeline.card


@pytest.mark.slow
def test_generate_shape_and_dtype(pipeline, eval_data):
    patches = generate(pipeline, eval_data.expression[:3])

    assert patches.shape == (3, 2, RESOLUTION, RESOLUTION, 3)
    assert patches.dtype == np.uint8
    assert patches.std() > 0


@pytest.mark.slow
def test_generate_same_seed_same_patches(pipeline, eval_data):
    first = generate(pipeline, eval_data.expression[:2], seed=7)
    second = generate(pipeline, eval_data.expression[:2], seed=7)
    other = generate(pipeline, eval_data.expression[:2], seed=8)

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)
    # The two patches of one spot use different seeds.
    assert not np.array_equal(first[0, 0], first[0, 1])


@pytest.mark.slow
def test_generate_spot_independent_of_batch(pipeline, eval_data):
    expression = eval_data.expression[:3]

    together = generate(pipeline, expression, batch_size=64)
    one_by_one = generate(pipeline, expression, batch_size=1)
    # Spot 1 alone, with the seed it had as the second spot of the call.
    alone = generate(pipeline, expression[1:2], seed=2)
    changed_neighbours = expression.copy()
    changed_neighbours[[0, 2]] = eval_data.expression[-1]
    with_other_neighbours = generate(pipeline, changed_neighbours)

    assert np.abs(together.astype(int) - one_by_one.astype(int)).max() <= 1
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert np.abs(together[1].astype(int) - with_other_neighbours[1].astype(int)).max() <= 1


@pytest.mark.slow
def test_generate_guidance_scale(pipeline, eval_data):
    expression = eval_data.expression[:2]

    conditional_only = generate(pipeline, expression, guidance_scale=1.0)
    guided = generate(pipeline, expression, guidance_scale=4.0)

    assert conditional_only.shape == guided.shape
    assert not np.array_equal(conditional_only, guided)


@pytest.mark.slow
def test_generate_from_init_patches(pipeline, eval_data):
    expression = eval_data.expression[:3]
    init = np.asarray(eval_data.patches[:3])

    light = generate(pipeline, expression, init_patches=init, strength=0.2, num_inference_steps=10)
    full = generate(pipeline, expression, init_patches=init, strength=1.0, num_inference_steps=10)

    assert light.shape == (3, 2, RESOLUTION, RESOLUTION, 3)
    distance_light = np.abs(light.astype(float) - init[:, None].astype(float)).mean()
    distance_full = np.abs(full.astype(float) - init[:, None].astype(float)).mean()
    assert distance_light < distance_full


@pytest.mark.slow
def test_generate_rejects_init_patches_of_other_shape(pipeline, eval_data):
    with pytest.raises(ValueError, match=rf"init_patches must have shape \(2, {RESOLUTION}, {RESOLUTION}, 3\)"):
        generate(pipeline, eval_data.expression[:2], init_patches=np.asarray(eval_data.patches[:3]), strength=0.5)


@pytest.mark.slow
def test_generate_rejects_wrong_expression_width(pipeline):
    with pytest.raises(ValueError, match=rf"\(n_spots, {N_GENES}\).*got \(2, {N_GENES + 1}\)"):
        pipeline.generate(np.zeros((2, N_GENES + 1), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"\(n_spots, {N_GENES}\).*got \({N_GENES},\)"):
        pipeline.generate(np.zeros(N_GENES, dtype=np.float32))


@pytest.mark.slow
def test_generate_rejects_zero_patches_per_spot(pipeline, eval_data):
    with pytest.raises(ValueError, match="n_per_spot must be at least 1, got 0"):
        pipeline.generate(eval_data.expression[:1], n_per_spot=0)


@pytest.mark.slow
def test_embed_images_shapes(pipeline, eval_data):
    embeds = pipeline.embed_images(np.asarray(eval_data.patches[:3]))
    empty = pipeline.embed_images(np.zeros((0, RESOLUTION, RESOLUTION, 3), dtype=np.uint8))

    assert embeds.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1.0, rtol=1e-5)
    assert empty.shape == (0, 32)


@pytest.mark.slow
def test_predict_expression_shape_and_range(pipeline, eval_data):
    reference = pipeline.reference["expression"].numpy()

    predicted = pipeline.predict_expression(np.asarray(eval_data.patches), k=5)

    assert predicted.shape == (len(eval_data), N_GENES)
    assert predicted.dtype == np.float32
    # Each prediction is a weighted mean of training spots, so it stays within their range gene by gene.
    assert np.all(predicted >= reference.min(axis=0) - 1e-5)
    assert np.all(predicted <= reference.max(axis=0) + 1e-5)


@pytest.mark.slow
def test_predict_expression_of_training_patch_is_its_own(pipeline, train_data):
    predicted = pipeline.predict_expression(np.asarray(train_data.patches[:5]), k=1)

    np.testing.assert_allclose(predicted, train_data.expression[:5], rtol=1e-6)


def test_from_pretrained_missing_folder(tmp_path):
    missing = tmp_path / "no_model"

    with pytest.raises(FileNotFoundError, match=f"Model folder not found: {missing}"):
        StdiffPipeline.from_pretrained(missing)


@pytest.mark.slow
def test_from_pretrained_without_reference(run, tmp_path, offline):
    copy = copy_run(run, tmp_path)
    (copy / "reference.safetensors").unlink()

    with pytest.raises(FileNotFoundError, match="No reference.safetensors in"):
        StdiffPipeline.from_pretrained(copy)


def test_read_model_card_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"Neither {MODEL_CARD} nor prepare.json in {tmp_path}"):
        read_model_card(tmp_path)


# --- reconstruct ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reconstruct_writes_files(run, evaluated, eval_data, pipeline):
    folder = run / RECONSTRUCT_DIR / EVAL_SAMPLE

    generated = np.load(folder / "generated.npy")
    predicted = np.load(folder / "reconstructed_expression.npy")
    spots = pd.read_csv(folder / "spots.csv", dtype={"barcode": str})

    assert generated.shape == (len(eval_data), EVAL_CONFIG.n_per_spot, RESOLUTION, RESOLUTION, 3)
    assert generated.dtype == np.uint8
    assert predicted.shape == (len(eval_data), N_GENES)
    assert predicted.dtype == np.float32
    assert spots["barcode"].tolist() == eval_data.spots["barcode"].tolist()
    assert json.loads((folder / "settings.json").read_text()) == dataclasses.asdict(EVAL_CONFIG)
    expected = generate(pipeline, eval_data.expression[:2], num_inference_steps=EVAL_CONFIG.num_inference_steps)
    assert np.abs(generated[:2].astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.slow
def test_reconstructed_expression_from_generated_patches(run, evaluated, pipeline):
    folder = run / RECONSTRUCT_DIR / EVAL_SAMPLE
    generated = np.load(folder / "generated.npy")

    flat = generated.reshape(-1, RESOLUTION, RESOLUTION, 3)
    expected = pipeline.predict_expression(flat, k=EVAL_CONFIG.k_neighbors)
    expected = expected.reshape(len(generated), EVAL_CONFIG.n_per_spot, N_GENES).mean(axis=1)

    np.testing.assert_allclose(np.load(folder / "reconstructed_expression.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_reconstruct_again_is_noop(run, evaluated, pipeline, caplog):
    folder = run / RECONSTRUCT_DIR / EVAL_SAMPLE
    before = file_times(folder)

    with caplog.at_level(logging.INFO, logger="stdiff.reconstruct"):
        written = reconstruct(run, EVAL_CONFIG, pipeline=pipeline)

    assert written == {EVAL_SAMPLE: folder}
    assert file_times(folder) == before
    assert f"{EVAL_SAMPLE} already reconstructed" in caplog.text


@pytest.mark.slow
def test_reconstruct_retrieved_start(run, tmp_path, pipeline, eval_data):
    copy = copy_run(run, tmp_path)
    config = ReconstructConfig(n_per_spot=1, num_inference_steps=2, init="retrieved", strength=0.5)

    written = reconstruct(copy, config, samples=[EVAL_SAMPLE], pipeline=pipeline, overwrite=True)

    generated = np.load(written[EVAL_SAMPLE] / "generated.npy")
    assert generated.shape == (len(eval_data), 1, RESOLUTION, RESOLUTION, 3)
    assert json.loads((written[EVAL_SAMPLE] / "settings.json").read_text())["init"] == "retrieved"


@pytest.mark.slow
def test_retrieve_training_patches(pipeline, train_data, eval_data):
    train_patches = np.asarray(train_data.patches)

    retrieved = retrieve_training_patches(pipeline, eval_data.expression[:4], train_patches)

    assert retrieved.shape == (4, RESOLUTION, RESOLUTION, 3)
    for patch in retrieved:
        assert any(np.array_equal(patch, candidate) for candidate in train_patches)


def test_retrieve_reference_by_expression(pipeline, train_data, eval_data):
    """A training spot's own expression retrieves that spot; an evaluated spot gets the nearest training spot."""
    picked = pipeline.retrieve_reference(train_data.expression[:5], by="expression")
    nearest = pipeline.retrieve_reference(eval_data.expression[:3], by="expression")

    distances = ((eval_data.expression[:3, None] - train_data.expression[None]) ** 2).sum(axis=-1)
    np.testing.assert_array_equal(picked, np.arange(5))
    np.testing.assert_array_equal(nearest, distances.argmin(axis=1))
    with pytest.raises(ValueError, match="'clip' or 'expression'"):
        pipeline.retrieve_reference(eval_data.expression[:1], by="genes")


def test_reconstruct_retrieved_by_expression_differs_from_clip(pipeline, eval_data):
    common = dict(n_per_spot=1, num_inference_steps=2, init="retrieved", strength=0.3)
    by_clip, _ = reconstruct_spots(pipeline, eval_data.expression[:4], ReconstructConfig(**common), progress=False)
    by_expression, _ = reconstruct_spots(pipeline, eval_data.expression[:4],
                                         ReconstructConfig(**common, retrieve_by="expression"), progress=False)
    clip_index = pipeline.retrieve_reference(eval_data.expression[:4], by="clip")
    expression_index = pipeline.retrieve_reference(eval_data.expression[:4], by="expression")

    assert (clip_index != expression_index).any()
    assert not np.array_equal(by_clip, by_expression)


@pytest.mark.slow
def test_reconstruct_spots_shapes(pipeline, eval_data, train_data):
    config = ReconstructConfig(n_per_spot=2, num_inference_steps=2)

    generated, predicted = reconstruct_spots(pipeline, eval_data.expression[:3], config, progress=False)

    assert generated.shape == (3, 2, RESOLUTION, RESOLUTION, 3)
    assert predicted.shape == (3, N_GENES)
    assert predicted.dtype == np.float32


@pytest.mark.slow
def test_reconstruct_spots_retrieved_needs_training_patches(pipeline, eval_data, monkeypatch):
    """A model folder without stored latents can start from retrieved patches only when given them."""
    config = ReconstructConfig(n_per_spot=1, num_inference_steps=2, init="retrieved", strength=0.5)
    monkeypatch.setattr(pipeline, "reference", {k: v for k, v in pipeline.reference.items() if k != "latents"})

    with pytest.raises(ValueError, match="needs training latents in the model folder or train_patches"):
        reconstruct_spots(pipeline, eval_data.expression[:2], config, progress=False)


def test_retrieved_start_uses_stored_latents(pipeline, eval_data):
    assert pipeline.has_reference_latents
    config = ReconstructConfig(n_per_spot=1, num_inference_steps=4, init="retrieved", strength=0.5)
    noise_config = ReconstructConfig(n_per_spot=1, num_inference_steps=4)

    retrieved, _ = reconstruct_spots(pipeline, eval_data.expression[:2], config, progress=False)
    from_noise, _ = reconstruct_spots(pipeline, eval_data.expression[:2], noise_config, progress=False)

    assert retrieved.shape == from_noise.shape
    assert not np.array_equal(retrieved, from_noise)
    assert len(pipeline.reference["latents"]) == len(pipeline.reference["expression"])


@pytest.mark.slow
def test_reconstruct_to_file_chunks_match(pipeline, shared_data_dir, tmp_path):
    from stdiff.io import read_visium

    adata = read_visium(shared_data_dir / EVAL_SAMPLE)[:5].copy()
    config = ReconstructConfig(n_per_spot=1, num_inference_steps=2)
    progress = []

    chunked = reconstruct_to_file(pipeline, adata, tmp_path / "chunked.npz", config, chunk_size=2,
                                  callback=lambda done, total: progress.append((done, total)))
    whole = reconstruct_to_file(pipeline, adata, tmp_path / "whole.npz", config, chunk_size=16)

    assert progress == [(2, 5), (4, 5), (5, 5)]
    with np.load(chunked) as first, np.load(whole) as second:
        assert first["barcodes"].tolist() == adata.obs_names.tolist()
        assert first["genes"].tolist() == list(pipeline.genes)
        assert first["reconstructed"].shape == (5, N_GENES)
        assert json.loads(str(first["settings"])) == dataclasses.asdict(config)
        # Chunks only change the batch size of the sampler, which moves pixels by at most one grey level.
        np.testing.assert_allclose(first["reconstructed"], second["reconstructed"], atol=1e-3)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chunked.npz", "whole.npz"]


@pytest.mark.slow
def test_reconstruct_to_file_spot_metrics(pipeline, shared_data_dir, tmp_path):
    from stdiff.expression import expression_matrix
    from stdiff.io import open_tissue_image, read_visium
    from stdiff.metrics import lpips_distance, ssim
    from stdiff.patches import extract_patches

    adata = read_visium(shared_data_dir / EVAL_SAMPLE)[:3].copy()
    real = extract_patches(adata, image=open_tissue_image(adata), patch_size=pipeline.patch_size,
                           resolution=pipeline.resolution)
    config = ReconstructConfig(n_per_spot=1, num_inference_steps=2)

    path = reconstruct_to_file(pipeline, adata, tmp_path / "out.npz", config, real_patches=real)
    generated, _ = reconstruct_spots(pipeline, expression_matrix(adata, pipeline.gene_set), config, progress=False)

    with np.load(path) as stored:
        assert stored["thumbnails"].shape == (3, THUMBNAIL_SIZE, THUMBNAIL_SIZE, 3)
        assert {f"metric_{name}" for name in SPOT_METRICS} <= set(stored.files)
        np.testing.assert_allclose(stored["metric_ssim"], ssim(real, generated[:, 0]), atol=1e-4)
        np.testing.assert_allclose(stored["metric_lpips"], lpips_distance(real, generated[:, 0]), atol=1e-4)
    with pytest.raises(ValueError, match="real_patches contains 2 patches for 3 spots"):
        reconstruct_to_file(pipeline, adata, tmp_path / "bad.npz", config, real_patches=real[:2])


@pytest.mark.slow
def test_reconstruct_to_file_retrieved_start(pipeline, shared_data_dir, tmp_path):
    from stdiff.io import read_visium

    adata = read_visium(shared_data_dir / EVAL_SAMPLE)[:2].copy()
    config = ReconstructConfig(n_per_spot=1, init="retrieved", strength=0.5, num_inference_steps=2)

    path = reconstruct_to_file(pipeline, adata, tmp_path / "out.npz", config)

    with np.load(path) as stored:
        assert stored["reconstructed"].shape == (2, len(pipeline.genes))
        assert json.loads(str(stored["settings"]))["init"] == "retrieved"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(init="bogus"), "init must be one of"),
        (dict(strength=0.5), "strength applies only with init='retrieved'"),
        (dict(retrieve_by="genes"), "retrieve_by must be one of"),
    ],
)
def test_reconstruct_config_rejects_invalid(changes, message):
    with pytest.raises(ValueError, match=message):
        ReconstructConfig(**changes)


@pytest.mark.slow
def test_reconstruct_without_samples(run, tmp_path, pipeline):
    copy = copy_run(run, tmp_path)
    path = copy / PREPARE_NAME
    payload = json.loads(path.read_text())
    payload["config"]["eval_samples"] = []
    path.write_text(json.dumps(payload))

    with pytest.raises(ValueError, match="No samples to reconstruct"):
        reconstruct(copy, EVAL_CONFIG, pipeline=pipeline)


# --- evaluate -------------------------------------------------------------------------------------------------


def test_per_gene_pearson_known_values():
    measured = np.array([[1.0, 0.0, 2.0], [2.0, 1.0, 2.0], [4.0, 0.0, 2.0], [3.0, 5.0, 2.0]])
    predicted = np.stack([2 * measured[:, 0] + 1, -measured[:, 1], np.array([1.0, 2.0, 3.0, 4.0])], axis=1)

    r = per_gene_pearson(predicted, measured)

    np.testing.assert_allclose(r[:2], [1.0, -1.0])
    assert np.isnan(r[2]), "a gene constant in one array has no correlation"


def test_retrieval_ranks_known_embeddings():
    targets = np.eye(4)
    queries = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 0], [0.6, 0, 0, 0.8]])

    ranks = retrieval_ranks(queries, targets)

    np.testing.assert_array_equal(ranks, [0, 3, 0, 0])  # query 1 ties with every target at 0, ties count against
    summary = retrieval_summary(ranks)
    assert summary["top1"] == 0.75
    assert summary["top5"] == 1.0
    assert summary["median_rank"] == 0.0


def test_per_gene_pearson_rounding_noise_is_constant():
    measured = np.random.default_rng(0).normal(size=(20, 3))
    predicted = np.ones((20, 3)) + np.random.default_rng(1).normal(scale=1e-9, size=(20, 3))

    r = per_gene_pearson(predicted, measured)

    assert np.isnan(r).all(), "identical predictions up to rounding have no correlation"


def test_per_gene_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    measured = rng.normal(size=(30, 4))
    predicted = measured + rng.normal(size=(30, 4))

    r = per_gene_pearson(predicted, measured)

    expected = [np.corrcoef(predicted[:, gene], measured[:, gene])[0, 1] for gene in range(4)]
    np.testing.assert_allclose(r, expected)


@pytest.mark.slow
def test_evaluate_writes_metrics_for_every_method(run, evaluated):
    payload = json.loads((run / EVALUATE_DIR / "metrics.json").read_text())

    results = payload["results"][EVAL_SAMPLE]
    assert set(results) == {*METHODS, "real_patch", "clip_model", "nearest_training_expression"}
    for method in METHODS:
        for metric in IMAGE_METRICS:
            summary = results[method][metric]
            assert np.isfinite(summary["mean"]), (method, metric)
            assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"], (method, metric)
        assert results[method]["expression_r_top_genes"]["n"] <= N_GENES
        variable = results[method]["expression_r_variable_genes"]
        assert variable["n"] <= PrepareConfig.n_variable_genes, method
        if method != "mean_train_patch":  # one patch for every spot: every gene's prediction is constant
            assert -1 <= variable["mean"] <= 1, method
        retrieval = results[method]["retrieval"]
        assert 0 <= retrieval["top1"] <= retrieval["top5"] <= 1, method
        assert 0 <= retrieval["median_rank"] < retrieval["n"], method
        assert np.isfinite(results[method]["frechet_distance"]["mean"]), method
    assert 0 <= results["clip_model"]["retrieval"]["top5"] <= 1
    assert payload["metadata"]["samples"] == [EVAL_SAMPLE]
    assert payload["metadata"]["train_samples"] == [TRAIN_SAMPLE]
    assert len(payload["metadata"]["variable_genes"]) == PrepareConfig.n_variable_genes
    assert "expression_r_variable_genes" in results["real_patch"]
    # Baseline 2's patch maps back close to its own training spot's expression.
    nearest = results["nearest_training_expression"]["expression_r_top_genes"]["mean"]
    assert -1 <= nearest <= 1
    assert evaluated[EVAL_SAMPLE].keys() == results.keys()


@pytest.mark.slow
def test_evaluate_per_spot_table(run, evaluated, eval_data):
    table = pd.read_csv(run / EVALUATE_DIR / "per_spot.csv", dtype={"barcode": str})
    payload = json.loads((run / EVALUATE_DIR / "metrics.json").read_text())

    assert len(table) == len(eval_data) * len(METHODS)
    assert set(table["method"]) == set(METHODS)
    assert set(IMAGE_METRICS) <= set(table.columns)
    for method in METHODS:
        rows = table[table["method"] == method]
        assert rows["barcode"].tolist() == eval_data.spots["barcode"].tolist()
        for metric in IMAGE_METRICS:
            assert rows[metric].mean() == pytest.approx(payload["results"][EVAL_SAMPLE][method][metric]["mean"])


@pytest.mark.slow
def test_evaluate_report_lists_methods(run, evaluated):
    report = (run / EVALUATE_DIR / "report.md").read_text()

    assert f"## {EVAL_SAMPLE}" in report
    payload = json.loads((run / EVALUATE_DIR / "metrics.json").read_text())
    for method in (*METHODS, "real_patch"):
        assert f"| {method} |" in report
    assert "most variable genes" in report
    assert "## Beside the published figures" in report
    assert "LPIPS 1.095" in report
    assert f"| {EVAL_SAMPLE} | stdiff |" in report
    assert f"Whole sections held out: {EVAL_SAMPLE}." in report
    assert report == format_report(evaluated, split=payload["metadata"]["split"])


@pytest.mark.slow
def test_evaluate_mean_patch_scores(run, evaluated, train_data, eval_data):
    from stdiff.metrics import psnr, ssim

    table = pd.read_csv(run / EVALUATE_DIR / "per_spot.csv")
    rows = table[table["method"] == "mean_train_patch"]
    real = np.asarray(eval_data.patches)
    mean_patch = np.asarray(train_data.patches).astype(np.float64).mean(axis=0).round().astype(np.uint8)
    candidates = np.broadcast_to(mean_patch, real.shape).copy()

    np.testing.assert_allclose(rows["psnr"].to_numpy(), psnr(real, candidates))
    np.testing.assert_allclose(rows["ssim"].to_numpy(), ssim(real, candidates))


@pytest.mark.slow
def test_evaluate_random_baseline_averages_draws(run, evaluated, train_data, eval_data):
    """The random baseline's per-spot LPIPS is the mean over its seeded draws, not one draw."""
    from stdiff.metrics import lpips_distance

    table = pd.read_csv(run / EVALUATE_DIR / "per_spot.csv")
    rows = table[table["method"] == "random_train_patch"]
    real = np.asarray(eval_data.patches)
    draws = random_patch_indices(len(real), len(train_data), seed=0)
    per_draw = [lpips_distance(real, np.asarray(train_data.patches)[draws[:, j]]) for j in range(RANDOM_DRAWS)]

    assert draws.shape == (len(real), RANDOM_DRAWS)
    np.testing.assert_allclose(rows["lpips"].to_numpy(), np.mean(per_draw, axis=0), rtol=1e-5)
    assert not np.allclose(rows["lpips"].to_numpy(), per_draw[0])
    payload = json.loads((run / EVALUATE_DIR / "metrics.json").read_text())
    assert payload["metadata"]["random_draws"] == RANDOM_DRAWS
    assert payload["results"][EVAL_SAMPLE]["random_train_patch"]["retrieval"]["n"] == len(real)


@pytest.mark.slow
def test_evaluate_needs_reconstruction(run, evaluated, pipeline):
    with pytest.raises(FileNotFoundError, match=f"{TRAIN_SAMPLE} has no reconstruction"):
        evaluate(run, samples=[TRAIN_SAMPLE], pipeline=pipeline)


# --- command line ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, shared_data_dir, shared_weights_dir):
    """A run made end to end through `stdiff.cli.main`; returns the run folder, export folder and exit codes."""
    from _helpers import require_samples

    require_samples(shared_data_dir, TRAIN_SAMPLE, EVAL_SAMPLE)
    root = tmp_path_factory.mktemp("cli")
    run_dir, model_dir = root / "run", root / "model"
    commands = {
        "prepare": ["prepare", "--run-dir", str(run_dir), "--data-dir", str(shared_data_dir), "--train",
                    TRAIN_SAMPLE, "--eval", EVAL_SAMPLE, "--resolution", str(RESOLUTION), "--n-genes", "8",
                    "--min-counts", str(train_min_counts(shared_data_dir))],
        "train-clip": ["train-clip", str(run_dir), "--steps", "3", "--batch-size", "16", "--embed-dim", "16",
                       "--hidden-dim", "32"],
        "train-ldm": ["train-ldm", str(run_dir), "--steps", "2", "--batch-size", "8", "--warmup-steps", "1",
                      "--block-out-channels", "32", "64"],
        "reconstruct": ["reconstruct", str(run_dir), "--n-per-spot", "1", "--num-inference-steps", "2"],
        "evaluate": ["evaluate", str(run_dir)],
        "export": ["export", str(run_dir), str(model_dir)],
    }
    codes = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline_env(monkeypatch, shared_weights_dir)
        for name, argv in commands.items():
            codes[name] = main(argv)
            if codes[name] != 0:
                break
    return run_dir, model_dir, codes


@pytest.mark.slow
def test_cli_runs_every_step(cli_run):
    run_dir, model_dir, codes = cli_run

    assert codes == {"prepare": 0, "train-clip": 0, "train-ldm": 0, "reconstruct": 0, "evaluate": 0, "export": 0}
    assert (run_dir / EVALUATE_DIR / "report.md").is_file()
    clip_config = json.loads((run_dir / "clip" / "config.json").read_text())
    assert clip_config["config"]["embed_dim"] == 16
    assert clip_config["extra"]["step"] == 3
    ldm_config = json.loads((run_dir / "ldm" / "config.json").read_text())
    assert ldm_config["config"]["block_out_channels"] == [32, 64]
    assert ldm_config["extra"]["step"] == 2


@pytest.mark.slow
def test_cli_export_loads(cli_run, offline):
    run_dir, model_dir, codes = cli_run
    assert codes.get("export") == 0

    exported = StdiffPipeline.from_pretrained(model_dir, device="cpu")

    card = json.loads((model_dir / MODEL_CARD).read_text())
    assert card["resolution"] == RESOLUTION
    assert card["train_samples"] == [TRAIN_SAMPLE]
    assert not (model_dir / PREPARE_NAME).exists()
    assert len(exported.genes) == 8
    patches = exported.generate(np.zeros((1, 8), dtype=np.float32), n_per_spot=1, num_inference_steps=2)
    assert patches.shape == (1, 1, RESOLUTION, RESOLUTION, 3)
    for name in ("metrics.json", "per_spot.csv", "report.md"):
        assert (model_dir / "evaluation" / name).is_file(), name


@pytest.mark.slow
def test_cli_reconstruct_sample(cli_run, shared_data_dir, tmp_path, offline):
    run_dir, model_dir, codes = cli_run
    assert codes.get("export") == 0

    code = main(["reconstruct-sample", str(shared_data_dir / TRAIN_SAMPLE), "--model-dir", str(model_dir),
                 "--out-dir", str(tmp_path), "--num-inference-steps", "1"])

    assert code == 0
    with np.load(tmp_path / f"{TRAIN_SAMPLE}.npz") as result:
        assert result["reconstructed"].shape == (len(result["barcodes"]), 8)
        assert np.isfinite(result["reconstructed"]).all()


@pytest.mark.parametrize(
    "command, message",
    [
        (["train-clip"], "No prepare.json in {missing}"),
        (["train-ldm"], "No prepare.json in {missing}"),
        (["reconstruct"], "No prepare.json in {missing}"),
        (["evaluate"], "No prepare.json in {missing}"),
        (["export"], "{missing}/clip is missing"),
    ],
)
def test_cli_missing_run_folder(tmp_path, caplog, command, message):
    missing = tmp_path / "no_run"
    argv = [*command, str(missing)]
    if command == ["export"]:
        argv.append(str(tmp_path / "model"))

    with caplog.at_level(logging.ERROR, logger="stdiff"):
        code = main(argv)

    assert code == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert message.format(missing=missing) in errors[0]


def test_cli_prepare_missing_data_folder(tmp_path, caplog):
    missing = tmp_path / "no_data"

    with caplog.at_level(logging.ERROR, logger="stdiff"):
        code = main(["prepare", "--run-dir", str(tmp_path / "run"), "--data-dir", str(missing), "--train", "s1"])

    assert code == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(missing / "s1") in errors[0]
