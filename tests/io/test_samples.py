"""Tests for stdiff.io.read_samples: several samples, each with its own library id, images and scalefactors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from _visium_writer import BARCODES, write_sample, write_scalefactors
from stdiff.io import VisiumReadError, VisiumReadWarning, list_samples, read_samples


@pytest.fixture()
def data_dir(tmp_path):
    """Two samples with different library ids, image sets and scalefactors, plus a folder that is no sample."""
    write_sample(tmp_path / "data" / "a", library_id="lib-a", fullres=None)
    write_sample(tmp_path / "data" / "b" / "outs", counts="mtx-gz", fullres=None, hires=False)
    write_scalefactors(tmp_path / "data" / "b" / "outs" / "spatial", spot_diameter_fullres=75.0)
    (tmp_path / "data" / "notes").mkdir()
    return tmp_path / "data"


def test_folder_of_samples(data_dir):
    with pytest.warns(VisiumReadWarning, match="only a lowres image"):
        samples = read_samples(data_dir)

    assert list(samples) == ["lib-a", "b"]
    a, b = samples["lib-a"], samples["b"]
    assert a.obs_names.tolist() == BARCODES
    assert list(a.uns["spatial"]) == ["lib-a"]
    assert list(b.uns["spatial"]) == ["b"]
    assert (b.obs["library_id"] == "b").all()
    assert a.uns["spatial"]["lib-a"]["scalefactors"]["spot_diameter_fullres"] == 60.0
    assert b.uns["spatial"]["b"]["scalefactors"]["spot_diameter_fullres"] == 75.0
    assert sorted(a.uns["spatial"]["lib-a"]["images"]) == ["hires", "lowres"]
    assert sorted(b.uns["spatial"]["b"]["images"]) == ["lowres"]
    assert b.uns["spatial"]["b"]["metadata"]["warnings"][0].endswith("or pass fullres_image=.")


def test_list_of_samples(data_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VisiumReadWarning)
        samples = read_samples([data_dir / "b", data_dir / "a"])

    assert list(samples) == ["b", "lib-a"]


def test_single_sample_folder(data_dir):
    assert list(read_samples(data_dir / "a")) == ["lib-a"]


def test_shared_library_id_keyed_by_folder(tmp_path):
    for name in ("copy-1", "copy-2"):
        write_sample(tmp_path / name, library_id="same", fullres=None)

    with pytest.warns(VisiumReadWarning, match="shared with another sample"):
        samples = read_samples(tmp_path)

    assert list(samples) == ["copy-1", "copy-2"]
    for name, adata in samples.items():
        assert list(adata.uns["spatial"]) == [name]
        assert (adata.obs["library_id"] == name).all()
        assert "shared with another sample" in adata.uns["spatial"][name]["metadata"]["warnings"][0]
    np.testing.assert_array_equal(samples["copy-1"].obsm["spatial"], samples["copy-2"].obsm["spatial"])


@pytest.mark.filterwarnings("ignore:.*only a lowres image")
def test_broken_sample_raises_or_skips(data_dir):
    (data_dir / "a" / "spatial" / "scalefactors_json.json").unlink()

    with pytest.raises(VisiumReadError, match="scalefactors_json.json"):
        read_samples(data_dir)
    with pytest.warns(VisiumReadWarning, match=r"Skipping sample .*/a: Missing .*scalefactors_json.json"):
        samples = read_samples(data_dir, errors="warn")
    assert list(samples) == ["b"]
    assert len(list_samples(data_dir)) == 2


def test_folder_without_samples(tmp_path):
    (tmp_path / "notes").mkdir()

    with pytest.raises(VisiumReadError, match=r"No Space Ranger sample in .*; found \['notes'\]"):
        read_samples(tmp_path)


def test_invalid_error_policy(data_dir):
    with pytest.raises(ValueError, match="errors must be one of"):
        read_samples(data_dir, errors="ignore")
