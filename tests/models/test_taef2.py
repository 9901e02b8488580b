"""Tests for stdiff.models.taef2: shapes, strict loading of the upstream weights and reconstruction quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _helpers import offline_env
from stdiff.metrics import psnr
from stdiff.models.taef2 import DECODER_FILE, DOWNSCALE, ENCODER_FILE, LATENT_CHANNELS, TAEF2

CROP = 128  # hires pixels, about four spot diameters of her2st-C2
N_CROPS = 12


@pytest.fixture
def taef2_dir(shared_weights_dir, monkeypatch):
    folder = shared_weights_dir / "taef2"
    if not (folder / ENCODER_FILE).is_file() or not (folder / DECODER_FILE).is_file():
        pytest.skip(f"TAEF2 weights not found in {folder}")
    offline_env(monkeypatch, shared_weights_dir)
    return folder


@pytest.fixture(scope="module")
def c2_sample(shared_data_dir):
    from stdiff.io import read_visium

    sample = shared_data_dir / "her2st-C2"
    if not sample.is_dir():
        pytest.skip(f"{sample} not found")
    return read_visium(sample)


def spot_rows(adata) -> np.ndarray:
    """Twelve spots spread over the sample, in obs order."""
    return np.linspace(0, adata.n_obs - 1, N_CROPS).astype(int)


@pytest.fixture(scope="module")
def hires_crops(c2_sample) -> np.ndarray:
    """uint8 crops (N_CROPS, CROP, CROP, 3) of the her2st-C2 hires H&E image, centred on tissue spots."""
    from stdiff.constants import HIRES_SCALEF

    library = next(iter(c2_sample.uns["spatial"].values()))
    image = library["images"]["hires"]
    centres = c2_sample.obsm["spatial"][spot_rows(c2_sample)] * library["scalefactors"][HIRES_SCALEF]
    crops = []
    for x, y in np.round(centres).astype(int):
        top, left = y - CROP // 2, x - CROP // 2
        crops.append(image[top : top + CROP, left : left + CROP, :3])
    return np.stack(crops).astype(np.uint8)


def round_trip(model: TAEF2, crops: np.ndarray) -> np.ndarray:
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    decoded = model.decode(model.encode(images))
    return (decoded.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def test_untrained_shapes_and_range():
    torch.manual_seed(0)
    model = TAEF2().eval()
    images = torch.rand(2, 3, 64, 48)

    latents = model.encode(images)
    decoded = model.decode(latents)

    assert latents.shape == (2, LATENT_CHANNELS, 64 // DOWNSCALE, 48 // DOWNSCALE)
    assert decoded.shape == (2, 3, 64, 48)
    assert decoded.min() >= 0
    assert decoded.max() <= 1


def test_from_pretrained_loads_folder(taef2_dir):
    model = TAEF2.from_pretrained(taef2_dir)

    assert not model.training
    assert all(not parameter.requires_grad for parameter in model.parameters())
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    upstream = torch.load(taef2_dir / ENCODER_FILE, map_location="cpu", weights_only=True)
    loaded = model.encoder.state_dict()
    assert set(loaded) == set(upstream)
    mismatched = [key for key, value in upstream.items() if not torch.equal(loaded[key], value.float())]
    assert mismatched == []


def test_from_pretrained_default_folder(taef2_dir):
    model = TAEF2.from_pretrained()

    reference = TAEF2.from_pretrained(taef2_dir)
    loaded = model.state_dict()
    mismatched = [key for key, value in reference.state_dict().items() if not torch.equal(loaded[key], value)]
    assert mismatched == []


def test_round_trip_psnr_on_hires_crops(taef2_dir, hires_crops):
    pretrained = TAEF2.from_pretrained(taef2_dir)
    torch.manual_seed(0)
    untrained = TAEF2().eval()

    pretrained_psnr = psnr(hires_crops, round_trip(pretrained, hires_crops))
    untrained_psnr = psnr(hires_crops, round_trip(untrained, hires_crops))

    assert hires_crops.std() > 20, "the crops should show tissue, not blank slide"
    # The hires image is downscaled about 5x from the scan, so nuclei are a few pixels wide and the 8x
    # autoencoder loses some of them. A broken decoder scores below 10 dB.
    assert pretrained_psnr.mean() > 20, pretrained_psnr
    assert pretrained_psnr.min() > 18, pretrained_psnr
    assert untrained_psnr.mean() < 10, untrained_psnr


def test_round_trip_psnr_on_training_patches(taef2_dir, c2_sample):
    from stdiff.io import open_tissue_image
    from stdiff.prepare import PrepareConfig

    # Patches as `stdiff prepare` cuts them with its default patch size and resolution.
    defaults = PrepareConfig(data_dir=".", train_samples=("x",))
    with open_tissue_image(c2_sample) as image:
        patches = image.crop_many(c2_sample.obsm["spatial"][spot_rows(c2_sample)], size=defaults.patch_size,
                                  out_size=defaults.resolution)
    model = TAEF2.from_pretrained(taef2_dir)

    values = psnr(patches, round_trip(model, patches))

    assert values.mean() > 24, values
    assert values.min() > 22, values


def test_offline_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("STDIFF_OFFLINE", "1")
    folder = tmp_path / "no_taef2"

    with pytest.raises(FileNotFoundError, match=str(folder / ENCODER_FILE)):
        TAEF2.from_pretrained(folder)
    assert not folder.exists()


def test_strict_load_rejects_extra_key(taef2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("STDIFF_OFFLINE", "1")
    encoder = torch.load(taef2_dir / ENCODER_FILE, map_location="cpu", weights_only=True)
    encoder["unexpected.weight"] = torch.zeros(1)
    torch.save(encoder, tmp_path / ENCODER_FILE)
    (tmp_path / DECODER_FILE).symlink_to(taef2_dir / DECODER_FILE)

    with pytest.raises(RuntimeError, match="unexpected.weight"):
        TAEF2.from_pretrained(tmp_path)
