"""Tests for the spatially blocked split (stdiff.split) and its use by ``stdiff prepare`` on a real section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from _helpers import EVAL_SAMPLE, PATCH_SIZE, TRAIN_SAMPLE, require_samples, small_prepare_config
from stdiff.expression import GeneSet, select_variable_genes
from stdiff.prepare import (
    EVAL_PART_SUFFIX,
    TRAIN_PART_SUFFIX,
    PrepareConfig,
    load_samples,
    prepare,
    read_prepare_config,
)
from stdiff.split import EVAL, GAP, SPLIT_FILE, TRAIN, block_split


def _grid(n: int = 20, spacing: float = 100.0) -> np.ndarray:
    """Spot centres on an n x n square lattice, like a Visium capture area without the hexagonal offset."""
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return np.stack([cols.ravel() * spacing, rows.ravel() * spacing], axis=1)


def _closest(xy: np.ndarray, split: np.ndarray) -> float:
    """Smallest centre distance along x or y (Chebyshev) between a training and an evaluated spot."""
    train, held = xy[split == TRAIN], xy[split == EVAL]
    return float(np.abs(train[:, None, :] - held[None, :, :]).max(axis=-1).min())


@pytest.mark.parametrize("gap", [0, 100, 250])
def test_block_split_keeps_evaluated_patches_apart(gap):
    xy = _grid()
    result = block_split(xy, grid=4, eval_fraction=0.3, patch_size=150, gap=gap, seed=1)

    assert _closest(xy, result.split) >= 150 + gap
    counts = result.counts()
    assert sum(counts.values()) == len(xy)
    assert counts[EVAL] >= 0.3 * len(xy)
    assert counts[TRAIN] > 0
    # Every spot of a held-out block is evaluated; no other spot is.
    np.testing.assert_array_equal(result.split == EVAL, np.isin(result.block, result.eval_blocks))


def test_block_split_gap_spots_are_the_close_ones():
    xy = _grid()
    result = block_split(xy, grid=4, eval_fraction=0.3, patch_size=150, gap=100, seed=1)
    held = xy[result.split == EVAL]

    distance = np.abs(xy[:, None, :] - held[None, :, :]).max(axis=-1).min(axis=1)
    outside = result.split != EVAL
    np.testing.assert_array_equal(result.split[outside] == GAP, distance[outside] < 250)


def test_block_split_seeded():
    xy = _grid()
    first = block_split(xy, grid=4, eval_fraction=0.3, patch_size=150, gap=150, seed=3)
    again = block_split(xy, grid=4, eval_fraction=0.3, patch_size=150, gap=150, seed=3)
    others = {block_split(xy, grid=4, eval_fraction=0.3, patch_size=150, gap=150, seed=s).eval_blocks
              for s in range(5)}

    np.testing.assert_array_equal(first.split, again.split)
    assert len(others) > 1


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(grid=1), "block grid must be at least 2"),
        (dict(eval_fraction=0.0), "eval_fraction must be between 0 and 1"),
        (dict(eval_fraction=1.0), "eval_fraction must be between 0 and 1"),
        (dict(gap=-1), "block gap must be 0 or more"),
        (dict(gap=5000), "No training spot is left"),
    ],
)
def test_block_split_rejects(changes, message):
    values = dict(grid=4, eval_fraction=0.3, patch_size=150, gap=150)
    values.update(changes)
    with pytest.raises(ValueError, match=message):
        block_split(_grid(), **values)


def test_block_split_one_spot_rejected():
    with pytest.raises(ValueError, match="at least 2 spots"):
        block_split(np.zeros((1, 2)), grid=4, eval_fraction=0.3, patch_size=150, gap=150)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(block_grid=1), "--block-grid must be at least 2"),
        (dict(eval_block_fraction=1.0), "--eval-block-fraction must be between 0 and 1"),
        (dict(block_gap=-5), "--block-gap must be 0 or more"),
        (dict(n_variable_genes=0), "--n-variable-genes must be at least 1"),
        (dict(blocked_samples=("c", "c")), "--blocked names c more than once"),
        (dict(train_samples=("a", "a")), "--train names a more than once"),
    ],
)
def test_prepare_config_rejects_split_settings(changes, message):
    values = dict(data_dir="data", train_samples=("a",), blocked_samples=("c",))
    values.update(changes)
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**values)


def test_gap_of_patch_size_is_default():
    assert PrepareConfig(data_dir="d", train_samples=("a",), block_gap=256) == PrepareConfig(
        data_dir="d", train_samples=("a",))


def test_prepare_config_blocked_sample_named_twice():
    with pytest.raises(ValueError, match="name each sample once"):
        PrepareConfig(data_dir="data", train_samples=("a",), blocked_samples=("a",))


def test_prepare_config_parts():
    config = PrepareConfig(data_dir="data", train_samples=("a",), eval_samples=("b",), blocked_samples=("c",))

    assert config.training_parts == ("a", "c" + TRAIN_PART_SUFFIX)
    assert config.evaluation_parts == ("b", "c" + EVAL_PART_SUFFIX)
    assert config.gap == config.patch_size


@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory, shared_data_dir):
    """A run with one whole training section and another section split in blocks."""
    require_samples(shared_data_dir, TRAIN_SAMPLE, EVAL_SAMPLE)
    run = tmp_path_factory.mktemp("blocked") / "run"
    config = small_prepare_config(shared_data_dir, eval_samples=(), blocked_samples=(EVAL_SAMPLE,), n_variable_genes=20)
    prepare(run, config)
    return run


def test_prepare_blocked_writes_split(blocked_run):
    config, summary = read_prepare_config(blocked_run)
    table = pd.read_csv(blocked_run / SPLIT_FILE, dtype={"barcode": str})
    train = load_samples(blocked_run, [EVAL_SAMPLE + TRAIN_PART_SUFFIX])
    held = load_samples(blocked_run, [EVAL_SAMPLE + EVAL_PART_SUFFIX])

    assert set(table["sample"]) == {EVAL_SAMPLE}
    assert table.loc[table["split"] == TRAIN, "barcode"].tolist() == train.spots["barcode"].tolist()
    assert table.loc[table["split"] == EVAL, "barcode"].tolist() == held.spots["barcode"].tolist()
    assert summary[EVAL_SAMPLE + TRAIN_PART_SUFFIX]["split"] == {
        name: int((table["split"] == name).sum()) for name in (TRAIN, EVAL, GAP)}
    xy = table[["x", "y"]].to_numpy()
    assert _closest(xy, table["split"].to_numpy()) >= PATCH_SIZE + config.gap


def test_prepare_blocked_parts_feed_training(blocked_run):
    config, _ = read_prepare_config(blocked_run)
    training = load_samples(blocked_run, config.training_parts)

    assert config.training_parts == (TRAIN_SAMPLE, EVAL_SAMPLE + TRAIN_PART_SUFFIX)
    assert set(training.spots["sample"]) == set(config.training_parts)
    held = set(load_samples(blocked_run, config.evaluation_parts).spots["barcode"])
    in_blocked_training = set(training.spots.loc[training.spots["sample"] != TRAIN_SAMPLE, "barcode"])
    assert not held & in_blocked_training


def test_prepare_variable_genes(blocked_run):
    variable = GeneSet.load(blocked_run, "variable_genes.json")
    data = load_samples(blocked_run, [TRAIN_SAMPLE, EVAL_SAMPLE + EVAL_PART_SUFFIX])

    assert len(variable.genes) == len(set(variable.genes)) == 20
    assert data.variable_expression.shape == (len(data), 20)
    assert data.variable_expression.std(axis=0).min() >= 0
    assert (data.variable_expression.max(axis=0) > 0).any()


def test_select_variable_genes_finds_the_variable_ones():
    import anndata

    rng = np.random.default_rng(0)
    n_spots, n_genes = 400, 500
    means = rng.uniform(2, 20, size=n_genes)
    counts = rng.poisson(means, size=(n_spots, n_genes)).astype(np.float32)
    # Five genes switch between silent and a count of about 20 from spot to spot:
    # their mean (about 10) lies within the range of the other genes, their spread far above it.
    on = rng.random((n_spots, 5)) < 0.5
    counts[:, :5] = np.where(on, rng.poisson(20, size=(n_spots, 5)), 0)
    names = [f"G{i}" for i in range(n_genes)]
    adatas = [anndata.AnnData(X=counts[:200], var={"x": np.zeros(n_genes)}),
              anndata.AnnData(X=counts[200:], var={"x": np.zeros(n_genes)})]
    for adata in adatas:
        adata.var_names = names

    chosen = select_variable_genes(adatas, n_genes=5)

    assert set(chosen.genes) == set(names[:5])


def test_prepare_older_run_gains_variable_genes(blocked_run, tmp_path, shared_data_dir):
    import shutil

    run = shutil.copytree(blocked_run, tmp_path / "run")
    (run / "variable_genes.json").unlink()
    for path in run.rglob("variable_expression.npy"):
        path.unlink()
    config, _ = read_prepare_config(run)

    prepare(run, config)

    assert (run / "variable_genes.json").is_file()
    assert load_samples(run, config.evaluation_parts).variable_expression is not None


def test_prepare_json_with_unknown_setting(blocked_run, tmp_path):
    import shutil

    run = shutil.copytree(blocked_run, tmp_path / "run")
    payload = json.loads((run / "prepare.json").read_text())
    payload["config"]["new_setting"] = 1
    (run / "prepare.json").write_text(json.dumps(payload))

    with pytest.raises(ValueError, match="new_setting"):
        read_prepare_config(run)


def test_cli_prepare_blocked(shared_data_dir, tmp_path, caplog):
    import logging

    from stdiff.cli import main

    require_samples(shared_data_dir, TRAIN_SAMPLE, EVAL_SAMPLE)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="stdiff"):
        code = main(["prepare", "--run-dir", str(run), "--data-dir", str(shared_data_dir), "--train", TRAIN_SAMPLE,
                     "--blocked", EVAL_SAMPLE, "--resolution", "32", "--n-genes", "10", "--block-grid", "3",
                     "--block-gap", "300", "--eval-block-fraction", "0.4"])
    config, _ = read_prepare_config(run)

    assert code == 0
    assert (run / SPLIT_FILE).is_file()
    assert (config.block_grid, config.gap, config.eval_block_fraction) == (3, 300, 0.4)
    assert f"part of blocked sample {EVAL_SAMPLE}" in caplog.text
