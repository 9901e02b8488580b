"""Tests for stdiff.prepare on real her2st samples: run folder layout, gene choice, resuming and validation."""

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
    N_TRAIN_SPOTS,
    RESOLUTION,
    TRAIN_SAMPLE,
    copy_run,
    file_times,
    prepared_run,
    small_prepare_config,
)
from stdiff.expression import GeneSet, expression_matrix, select_top_genes, total_counts
from stdiff.prepare import (
    PREPARE_NAME,
    PrepareConfig,
    load_samples,
    prepare,
    read_prepare_config,
    sample_folder,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data_dir):
    return prepared_run(tmp_path_factory, shared_data_dir)


@pytest.fixture(scope="module")
def filtered_samples(run, shared_data_dir):
    """The two samples read with stdiff.io and filtered by min_counts, as prepare should have kept them."""
    from stdiff.io import read_visium

    config, _ = read_prepare_config(run)
    samples = {}
    for name in (TRAIN_SAMPLE, EVAL_SAMPLE):
        adata = read_visium(shared_data_dir / name)
        samples[name] = adata[total_counts(adata) >= config.min_counts].copy()
    return samples


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(train_samples=()), "train_samples is empty"),
        (dict(eval_samples=("a",)), "both training and evaluation"),
        (dict(patch_size=4), "patch_size must be at least 8"),
        (dict(resolution=36), "multiple of 8"),
        (dict(resolution=0), "multiple of 8"),
        (dict(min_counts=-1), "min_counts must be 0 or more"),
    ],
)
def test_prepare_config_rejects_invalid(changes, message):
    values = dict(data_dir="data", train_samples=("a",))
    values.update(changes)

    with pytest.raises(ValueError, match=message):
        PrepareConfig(**values)


def test_read_prepare_config_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_prepare_config(tmp_path)


def test_prepare_writes_run_layout(run):
    assert (run / PREPARE_NAME).is_file()
    assert (run / "genes.json").is_file()
    for name in (TRAIN_SAMPLE, EVAL_SAMPLE):
        folder = sample_folder(run, name)
        for file_name in ("patches.npy", "expression.npy", "spots.csv"):
            assert (folder / file_name).is_file(), f"{folder / file_name} missing"
    leftovers = [path.name for path in run.rglob("*") if ".tmp" in path.name]
    assert leftovers == []


def test_prepare_config_round_trip(run, shared_data_dir):
    config, summary = read_prepare_config(run)

    assert config == small_prepare_config(shared_data_dir)
    assert set(summary) == {TRAIN_SAMPLE, EVAL_SAMPLE}


def test_prepare_summary_counts(run, filtered_samples):
    _, summary = read_prepare_config(run)

    for name, adata in filtered_samples.items():
        info = summary[name]
        assert info["spots_kept"] == adata.n_obs
        assert info["spots_read"] == info["spots_kept"] + info["spots_dropped_min_counts"]
        assert info["image_source"] == "fullres"
    assert summary[TRAIN_SAMPLE]["spots_kept"] >= N_TRAIN_SPOTS


def test_prepare_sample_arrays(run, filtered_samples):
    config, _ = read_prepare_config(run)

    for name, adata in filtered_samples.items():
        folder = sample_folder(run, name)
        patches = np.load(folder / "patches.npy")
        expression = np.load(folder / "expression.npy")
        spots = pd.read_csv(folder / "spots.csv", dtype={"barcode": str})
        assert patches.dtype == np.uint8
        assert patches.shape == (adata.n_obs, RESOLUTION, RESOLUTION, 3)
        assert expression.dtype == np.float32
        assert expression.shape == (adata.n_obs, N_GENES)
        assert list(spots.columns) == ["barcode", "x", "y", "total_counts"]
        assert spots["barcode"].tolist() == adata.obs_names.tolist()
        assert (spots["total_counts"] >= config.min_counts).all()
        np.testing.assert_allclose(spots[["x", "y"]].to_numpy(), adata.obsm["spatial"])


def test_prepare_genes_chosen_on_training_samples(run, filtered_samples):
    gene_set = GeneSet.load(run)

    expected = select_top_genes([filtered_samples[TRAIN_SAMPLE]], n_genes=N_GENES)
    assert gene_set == expected


def test_prepare_expression_matches_gene_set(run, filtered_samples):
    gene_set = GeneSet.load(run)

    for name, adata in filtered_samples.items():
        stored = np.load(sample_folder(run, name) / "expression.npy")
        np.testing.assert_array_equal(stored, expression_matrix(adata, gene_set))


def test_prepare_patch_rows_follow_spots(run, filtered_samples):
    from stdiff.io import open_tissue_image

    config, _ = read_prepare_config(run)
    adata = filtered_samples[TRAIN_SAMPLE]
    patches = np.load(sample_folder(run, TRAIN_SAMPLE) / "patches.npy")
    spots = pd.read_csv(sample_folder(run, TRAIN_SAMPLE) / "spots.csv")

    with open_tissue_image(adata) as image:
        for row in (0, len(spots) // 2, len(spots) - 1):
            x, y = spots.loc[row, ["x", "y"]]
            crop = image.crop(x, y, size=config.patch_size, out_size=config.resolution)
            np.testing.assert_array_equal(patches[row], crop)
    # Patches of different spots differ, so the check above can tell rows apart.
    assert not np.array_equal(patches[0], patches[-1])


def test_load_samples_concatenates(run):
    train = np.load(sample_folder(run, TRAIN_SAMPLE) / "patches.npy")
    held_out = np.load(sample_folder(run, EVAL_SAMPLE) / "patches.npy")

    data = load_samples(run, [TRAIN_SAMPLE, EVAL_SAMPLE])

    assert len(data) == len(train) + len(held_out)
    assert data.patches.shape == (len(data), RESOLUTION, RESOLUTION, 3)
    assert data.expression.shape == (len(data), N_GENES)
    assert data.spots["sample"].tolist() == [TRAIN_SAMPLE] * len(train) + [EVAL_SAMPLE] * len(held_out)
    np.testing.assert_array_equal(data.patches[len(train):], held_out)


def test_load_samples_unknown_sample(run):
    with pytest.raises(FileNotFoundError, match="'her2st-missing' is not prepared"):
        load_samples(run, ["her2st-missing"])


def test_prepare_again_is_noop(run, shared_data_dir, tmp_path, caplog):
    copy = copy_run(run, tmp_path)
    before = file_times(copy)

    with caplog.at_level(logging.INFO, logger="stdiff.prepare"):
        prepare(copy, small_prepare_config(shared_data_dir))

    after = file_times(copy)
    data_files = [key for key in before if key.startswith("data/")]
    assert data_files
    assert {key: after[key] for key in data_files} == {key: before[key] for key in data_files}
    assert f"{TRAIN_SAMPLE} already prepared" in caplog.text
    assert f"{EVAL_SAMPLE} already prepared" in caplog.text


def test_prepare_resumes_incomplete_sample(run, shared_data_dir, tmp_path):
    copy = copy_run(run, tmp_path)
    expected = np.load(sample_folder(run, EVAL_SAMPLE) / "patches.npy")
    # An interrupted prepare has no spots.csv for the sample it was writing.
    (sample_folder(copy, EVAL_SAMPLE) / "spots.csv").unlink()
    (sample_folder(copy, EVAL_SAMPLE) / "patches.npy").write_bytes(b"partial")
    train_times = file_times(sample_folder(copy, TRAIN_SAMPLE))

    prepare(copy, small_prepare_config(shared_data_dir))

    np.testing.assert_array_equal(np.load(sample_folder(copy, EVAL_SAMPLE) / "patches.npy"), expected)
    assert (sample_folder(copy, EVAL_SAMPLE) / "spots.csv").is_file()
    assert file_times(sample_folder(copy, TRAIN_SAMPLE)) == train_times


def test_prepare_other_settings_rejected(run, shared_data_dir, tmp_path):
    copy = copy_run(run, tmp_path)
    config = small_prepare_config(shared_data_dir, resolution=16)

    with pytest.raises(ValueError, match=r"prepare\.json was written with other settings.*resolution: 32 -> 16"):
        prepare(copy, config)


def test_prepare_overwrite_with_other_settings(run, shared_data_dir, tmp_path):
    copy = copy_run(run, tmp_path)
    config = small_prepare_config(shared_data_dir, resolution=16, n_genes=8, eval_samples=())

    prepare(copy, config, overwrite=True)

    stored, _ = read_prepare_config(copy)
    assert stored == config
    assert np.load(sample_folder(copy, TRAIN_SAMPLE) / "patches.npy").shape[1:] == (16, 16, 3)
    assert len(GeneSet.load(copy).genes) == 8
    assert np.load(sample_folder(copy, TRAIN_SAMPLE) / "expression.npy").shape[1] == 8


def test_prepare_min_counts_drops_every_spot(shared_data_dir, tmp_path):
    config = dataclasses.replace(small_prepare_config(shared_data_dir), eval_samples=(), min_counts=10**9)

    with pytest.raises(ValueError, match=f"{TRAIN_SAMPLE}: all .* spots have fewer than min_counts"):
        prepare(tmp_path / "run", config)


def test_prepare_json_lists_settings(run):
    payload = json.loads((run / PREPARE_NAME).read_text())

    assert payload["config"]["resolution"] == RESOLUTION
    assert payload["config"]["train_samples"] == [TRAIN_SAMPLE]
    assert payload["samples"][TRAIN_SAMPLE]["min_counts"] == payload["config"]["min_counts"]
