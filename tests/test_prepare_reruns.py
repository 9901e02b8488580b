"""`stdiff prepare` on run folders left behind by a failed run, by another split, or with repeated sample names."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from stdiff.cli import main
from stdiff.split import SPLIT_FILE

SAMPLE = "her2st-C6"
# Small patches keep each run to a few seconds.
FAST = ["--patch-size", "64", "--resolution", "16"]


@pytest.fixture
def data_dir(shared_data_dir):
    if not (shared_data_dir / SAMPLE).is_dir():
        pytest.skip(f"{shared_data_dir / SAMPLE} not found")
    return shared_data_dir


def _prepare(data_dir, run_dir, *options: str) -> int:
    return main(["prepare", "--run-dir", str(run_dir), "--data-dir", str(data_dir), *FAST, *options])


def test_rerun_after_failure_uses_new_genes(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    # The first run writes genes.json and then fails on the variable genes.
    failed = _prepare(data_dir, run_dir, "--blocked", SAMPLE, "--n-genes", "5", "--n-variable-genes", "15000")
    assert failed != 0

    assert _prepare(data_dir, run_dir, "--blocked", SAMPLE, "--n-genes", "8", "--n-variable-genes", "5") == 0

    genes = json.loads((run_dir / "genes.json").read_text())["genes"]
    assert len(genes) == 8
    expression = np.load(run_dir / "data" / f"{SAMPLE}.train-blocks" / "expression.npy")
    assert expression.shape[1] == 8


def test_overwrite_unblocked_drops_old_split(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert _prepare(data_dir, run_dir, "--blocked", SAMPLE, "--n-genes", "5", "--n-variable-genes", "5") == 0
    assert (run_dir / SPLIT_FILE).is_file()

    assert _prepare(data_dir, run_dir, "--train", SAMPLE, "--n-genes", "5", "--n-variable-genes", "5",
                    "--overwrite") == 0

    # evaluate and export copy split.csv next to the metrics, so a stale one describes a split never used.
    assert not (run_dir / SPLIT_FILE).is_file()


def test_rerun_after_interrupt_rewrites_split(data_dir, tmp_path, monkeypatch):
    import stdiff.prepare as prepare_module

    run_dir = tmp_path / "run"
    settings = ["--blocked", SAMPLE, "--n-genes", "5", "--n-variable-genes", "5"]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    # Ctrl-C while the first part's patches are cut leaves split.csv but no prepare.json yet.
    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "_write_sample", interrupt)
        assert _prepare(data_dir, run_dir, *settings, "--block-grid", "4", "--split-seed", "0") == 130

    assert _prepare(data_dir, run_dir, *settings, "--block-grid", "3", "--split-seed", "7") == 0

    split = pd.read_csv(run_dir / SPLIT_FILE, dtype={"barcode": str})
    trained = pd.read_csv(run_dir / "data" / f"{SAMPLE}.train-blocks" / "spots.csv", dtype={"barcode": str})
    assert set(split.loc[split["split"] == "train", "barcode"]) == set(trained["barcode"])


@pytest.mark.parametrize("option", ["--train", "--blocked"])
def test_repeated_sample_rejected(data_dir, tmp_path, option):
    run_dir = tmp_path / "run"

    code = _prepare(data_dir, run_dir, option, SAMPLE, SAMPLE, "--n-genes", "5", "--n-variable-genes", "5")

    # Accepted, the sample's spots would be loaded twice for training and evaluation.
    assert code != 0
    assert not (run_dir / "prepare.json").is_file()
