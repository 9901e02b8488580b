"""Tests for stdiff.metrics on real H&E crops with the real LPIPS AlexNet backbone."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from stdiff import metrics
from stdiff.metrics import perceptual

REPO_DIR = Path(__file__).resolve().parent.parent
SAMPLE = "her2st-C2"
CROP_SIZE = 64
NOISE_SIGMAS = (5.0, 15.0, 40.0, 80.0)  # grey levels on the 0..255 scale
BLUR_SIGMAS = (0.5, 1.0, 2.0, 4.0)  # pixels


# Local fixtures: tests/conftest.py did not exist when this file was written.
@pytest.fixture(scope="session")
def weights_root() -> Path:
    return Path(os.environ.get("STDIFF_WEIGHTS_DIR", REPO_DIR.parent / "shared" / "weights")).expanduser()


@pytest.fixture(scope="session")
def data_root() -> Path:
    return Path(os.environ.get("STDIFF_DATA_DIR", REPO_DIR.parent / "shared" / "data")).expanduser()


@pytest.fixture(scope="session")
def backbone_file(weights_root: Path) -> Path:
    path = weights_root / perceptual.LPIPS_WEIGHTS_SUBDIR / perceptual.LPIPS_BACKBONE_FILE
    if not path.is_file():
        pytest.skip(f"LPIPS AlexNet backbone not found at {path}. Set STDIFF_WEIGHTS_DIR to the shared weights")
    return path


@pytest.fixture(scope="session")
def lpips_model(backbone_file: Path, weights_root: Path) -> lpips.LPIPS:
    previous = os.environ.get("STDIFF_WEIGHTS_DIR")
    os.environ["STDIFF_WEIGHTS_DIR"] = str(weights_root)
    metrics.load_lpips.cache_clear()
    try:
        yield metrics.load_lpips(device="cpu")
    finally:
        if previous is None:
            os.environ.pop("STDIFF_WEIGHTS_DIR", None)
        else:
            os.environ["STDIFF_WEIGHTS_DIR"] = previous
        metrics.load_lpips.cache_clear()


@pytest.fixture(scope="session")
def he_crops(data_root: Path) -> np.ndarray:
    """Three 64x64 uint8 crops of the hires H&E image centred on in-tissue spots."""
    spatial = data_root / SAMPLE / "spatial"
    image_path = spatial / "tissue_hires_image.png"
    if not image_path.is_file():
        pytest.skip(f"H&E image not found at {image_path}. Set STDIFF_DATA_DIR to the shared data")
    scalef = json.loads((spatial / "scalefactors_json.json").read_text())["tissue_hires_scalef"]
    with open(spatial / "tissue_positions_list.csv", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row[1] == "1"]
    image = np.asarray(Image.open(image_path).convert("RGB"))

    crops = []
    half = CROP_SIZE // 2
    for row in rows[:: max(1, len(rows) // 3)][:3]:
        centre_row = round(float(row[4]) * scalef)
        centre_col = round(float(row[5]) * scalef)
        crops.append(image[centre_row - half : centre_row + half, centre_col - half : centre_col + half])
    return np.stack(crops)


def add_noise(patches: np.ndarray, sigma: float) -> np.ndarray:
    """Add Gaussian noise of ``sigma`` grey levels, using the same noise field for every sigma."""
    noise = np.random.default_rng(0).standard_normal(patches.shape)
    return np.clip(patches + sigma * noise, 0, 255).round().astype(np.uint8)


def blur(patches: np.ndarray, sigma: float) -> np.ndarray:
    blurred = ndimage.gaussian_filter(patches.astype(np.float64), sigma=(0, sigma, sigma, 0), mode="reflect")
    return np.clip(blurred, 0, 255).round().astype(np.uint8)


# LPIPS


def test_lpips_backbone_matches_file(lpips_model, backbone_file):
    features = torch.load(backbone_file, map_location="cpu", weights_only=True)
    loaded = lpips_model.net.state_dict()
    for index, slice_number in perceptual.ALEXNET_FEATURE_TO_SLICE.items():
        for param in ("weight", "bias"):
            assert torch.equal(loaded[f"slice{slice_number}.{index}.{param}"], features[f"features.{index}.{param}"])


def test_lpips_model_frozen_in_eval(lpips_model):
    assert not lpips_model.training
    assert not any(parameter.requires_grad for parameter in lpips_model.parameters())


def test_lpips_model_cached_per_device(lpips_model):
    assert metrics.load_lpips(device="cpu") is lpips_model


@pytest.mark.filterwarnings("ignore::UserWarning:torchvision.models._utils")
def test_lpips_differs_from_random_backbone(lpips_model, he_crops):
    noisy = add_noise(he_crops, 15.0)
    real_backbone = metrics.lpips_distance(he_crops, noisy)

    torch.manual_seed(0)
    random_model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    with torch.inference_mode():
        random_backbone = random_model(
            metrics.patches_to_lpips_input(he_crops), metrics.patches_to_lpips_input(noisy)
        ).flatten().numpy()

    relative_gap = np.abs(real_backbone - random_backbone) / np.maximum(real_backbone, random_backbone)
    assert np.all(relative_gap > 0.1)


def test_lpips_identical_is_zero(lpips_model, he_crops):
    distances = metrics.lpips_distance(he_crops, he_crops.copy())
    assert distances.shape == (len(he_crops),)
    assert np.all(np.abs(distances) < 1e-6)


def test_lpips_increases_with_noise(lpips_model, he_crops):
    distances = np.stack([metrics.lpips_distance(he_crops, add_noise(he_crops, sigma)) for sigma in NOISE_SIGMAS])
    assert np.all(distances[0] > 0)
    assert np.all(np.diff(distances, axis=0) > 0)


def test_lpips_increases_with_blur(lpips_model, he_crops):
    distances = np.stack([metrics.lpips_distance(he_crops, blur(he_crops, sigma)) for sigma in BLUR_SIGMAS])
    assert np.all(np.diff(distances, axis=0) > 0)


def test_lpips_batch_size_does_not_change_result(lpips_model, he_crops):
    noisy = add_noise(he_crops, 15.0)
    together = metrics.lpips_distance(he_crops, noisy, batch_size=64)
    one_by_one = metrics.lpips_distance(he_crops, noisy, batch_size=1)
    np.testing.assert_allclose(one_by_one, together, rtol=1e-5, atol=1e-6)


def test_lpips_single_patch(lpips_model, he_crops):
    distance = metrics.lpips_distance(he_crops[0], add_noise(he_crops[0], 15.0))
    assert distance.shape == (1,)


def test_lpips_rejects_small_patches(he_crops):
    with pytest.raises(ValueError, match="31x31"):
        metrics.lpips_distance(he_crops[:, :30, :30], he_crops[:, :30, :30])


def test_lpips_input_range():
    patches = np.array([[[[0, 255, 128]]]], dtype=np.uint8)
    tensor = metrics.patches_to_lpips_input(patches)
    assert tensor.shape == (1, 3, 1, 1)
    assert tensor.dtype == torch.float32
    assert tensor.flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1.0], abs=1e-6)


def test_load_lpips_offline_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("STDIFF_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("STDIFF_OFFLINE", "1")
    metrics.load_lpips.cache_clear()
    expected_path = tmp_path / "lpips_alexnet" / "alexnet_features_imagenet.pth"
    try:
        with pytest.raises(FileNotFoundError) as raised:
            metrics.load_lpips(device="cpu")
    finally:
        metrics.load_lpips.cache_clear()
    assert str(expected_path) in str(raised.value)
    assert "STDIFF_WEIGHTS_DIR" in str(raised.value)


def test_load_lpips_downloads_when_file_missing(tmp_path, monkeypatch, backbone_file):
    # The download is replaced by the shared file's tensors, so this checks the fallback wiring offline.
    features = torch.load(backbone_file, map_location="cpu", weights_only=True)
    monkeypatch.setattr(perceptual, "_download_alexnet_features", lambda: features)
    monkeypatch.setenv("STDIFF_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("STDIFF_OFFLINE", raising=False)
    metrics.load_lpips.cache_clear()
    try:
        model = metrics.load_lpips(device="cpu")
    finally:
        metrics.load_lpips.cache_clear()
    assert torch.equal(model.net.slice1[0].weight, features["features.0.weight"])


@pytest.mark.filterwarnings("ignore::UserWarning:torchvision.models._utils")
def test_backbone_mapping_fits_torchvision_alexnet():
    import torchvision

    alexnet = torchvision.models.alexnet(weights=None)
    features = {key: value for key, value in alexnet.state_dict().items() if key.startswith("features.")}
    renamed = perceptual.alexnet_features_to_lpips(features, source="torchvision alexnet")
    assert set(renamed) == set(lpips.pn.alexnet(requires_grad=False, pretrained=False).state_dict())


def test_backbone_keys_checked():
    with pytest.raises(ValueError, match="missing keys"):
        perceptual.alexnet_features_to_lpips({"features.0.weight": torch.zeros(1)}, source="test dict")


# SSIM and PSNR


def test_ssim_identical_is_one(he_crops):
    scores = metrics.ssim(he_crops, he_crops.copy())
    assert scores.shape == (len(he_crops),)
    np.testing.assert_allclose(scores, 1.0, atol=1e-12)


def test_ssim_decreases_with_noise(he_crops):
    scores = np.stack([metrics.ssim(he_crops, add_noise(he_crops, sigma)) for sigma in NOISE_SIGMAS])
    assert np.all(scores[0] < 1.0)
    assert np.all(np.diff(scores, axis=0) < 0)


def test_ssim_decreases_with_blur(he_crops):
    scores = np.stack([metrics.ssim(he_crops, blur(he_crops, sigma)) for sigma in BLUR_SIGMAS])
    assert np.all(np.diff(scores, axis=0) < 0)


def test_ssim_rejects_patches_below_window():
    patches = np.zeros((1, 10, 10, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(patches, patches)


def test_psnr_identical_is_capped(he_crops):
    scores = metrics.psnr(he_crops, he_crops.copy())
    np.testing.assert_array_equal(scores, metrics.PSNR_CAP_DB)


def test_psnr_identical_without_cap_is_inf(he_crops):
    scores = metrics.psnr(he_crops, he_crops.copy(), cap_db=None)
    assert np.all(np.isposinf(scores))


def test_psnr_constant_offset():
    real = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    generated = np.full_like(real, 10)
    # MSE is 10**2 = 100, so PSNR = 10 * log10(255**2 / 100).
    np.testing.assert_allclose(metrics.psnr(real, generated), 10 * np.log10(255**2 / 100))


def test_psnr_decreases_with_noise(he_crops):
    scores = np.stack([metrics.psnr(he_crops, add_noise(he_crops, sigma)) for sigma in NOISE_SIGMAS])
    assert np.all(np.diff(scores, axis=0) < 0)


def test_psnr_rejects_nonpositive_cap(he_crops):
    with pytest.raises(ValueError, match="cap_db"):
        metrics.psnr(he_crops, he_crops, cap_db=0)


# Input checks shared by LPIPS, SSIM and PSNR

IMAGE_METRICS = [metrics.ssim, metrics.psnr, metrics.lpips_distance]


@pytest.mark.parametrize("metric", IMAGE_METRICS)
def test_image_metric_rejects_float_dtype(metric):
    real = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="float32"):
        metric(real, real.astype(np.float32))


@pytest.mark.parametrize("metric", IMAGE_METRICS)
def test_image_metric_rejects_shape_mismatch(metric):
    real = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    generated = np.zeros((2, 32, 33, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(2, 32, 32, 3\).*\(2, 32, 33, 3\)"):
        metric(real, generated)


@pytest.mark.parametrize("metric", IMAGE_METRICS)
def test_image_metric_rejects_grayscale(metric):
    real = np.zeros((2, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(2, 32, 32\)"):
        metric(real, real)


@pytest.mark.parametrize("metric", IMAGE_METRICS)
def test_image_metric_rejects_tensor(metric):
    real = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="Tensor"):
        metric(real, torch.from_numpy(real))


# Embedding cosine


def test_cosine_known_vectors():
    a = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    b = np.array([[1.0, 1.0], [-2.0, 0.0], [0.0, 5.0], [-4.0, 3.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(a, b), [1 / np.sqrt(2), -1.0, 1.0, 0.0], atol=1e-12)


def test_cosine_accepts_torch():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(a, b), [1.0, 1 / np.sqrt(2)], atol=1e-7)


def test_cosine_zero_vector_is_nan():
    scores = metrics.cosine_similarity(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert np.isnan(scores[0])
    assert scores[1] == pytest.approx(1.0)


def test_cosine_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(3, 5\)"):
        metrics.cosine_similarity(np.ones((3, 4)), np.ones((3, 5)))


def test_mismatched_cosine_has_no_fixed_point():
    # Orthonormal rows: cosine(e_i, e_perm[i]) is 1 exactly when perm[i] == i.
    for n in (2, 3, 10, 50):
        for seed in range(5):
            scores = metrics.mismatched_cosine(np.eye(n), np.eye(n), seed=seed)
            np.testing.assert_array_equal(scores, 0.0)


def test_mismatched_cosine_is_reproducible():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((20, 8)), rng.standard_normal((20, 8))
    np.testing.assert_array_equal(metrics.mismatched_cosine(a, b, seed=3), metrics.mismatched_cosine(a, b, seed=3))
    assert not np.array_equal(metrics.mismatched_cosine(a, b, seed=3), metrics.mismatched_cosine(a, b, seed=4))


def test_mismatched_cosine_rejects_single_row():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mismatched_cosine(np.ones((1, 4)), np.ones((1, 4)))


def test_random_derangement_is_permutation():
    permutation = metrics.random_derangement(100, seed=0)
    np.testing.assert_array_equal(np.sort(permutation), np.arange(100))
    assert not np.any(permutation == np.arange(100))


# Bootstrap and summaries


def test_bootstrap_ci_contains_mean():
    values = np.random.default_rng(0).normal(loc=2.0, scale=1.0, size=200)
    low, high = metrics.bootstrap_ci(values)
    assert low < values.mean() < high


def test_bootstrap_ci_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small = rng.normal(size=50)
    large = rng.normal(size=5000)
    small_low, small_high = metrics.bootstrap_ci(small)
    large_low, large_high = metrics.bootstrap_ci(large)
    assert large_high - large_low < (small_high - small_low) / 3


def test_bootstrap_ci_ignores_nan():
    values = np.random.default_rng(0).normal(size=100)
    with_nan = np.concatenate([values, [np.nan, np.nan]])
    assert metrics.bootstrap_ci(with_nan, seed=1) == metrics.bootstrap_ci(values, seed=1)


def test_bootstrap_ci_rejects_inf():
    with pytest.raises(ValueError, match="infinite"):
        metrics.bootstrap_ci(np.array([1.0, np.inf]))


def test_bootstrap_ci_rejects_bad_confidence():
    with pytest.raises(ValueError, match="confidence"):
        metrics.bootstrap_ci(np.ones(3), confidence=1.0)


def test_bootstrap_ci_all_nan():
    low, high = metrics.bootstrap_ci(np.array([np.nan, np.nan]))
    assert np.isnan(low)
    assert np.isnan(high)


def test_summarize_fields_and_counts():
    rng = np.random.default_rng(0)
    lpips_values = rng.uniform(size=40)
    psnr_values = np.concatenate([rng.uniform(20, 30, size=38), [np.inf, np.nan]])
    summary = metrics.summarize({"lpips": lpips_values, "psnr": psnr_values})

    assert summary["lpips"]["n"] == 40
    assert summary["lpips"]["mean"] == pytest.approx(lpips_values.mean())
    assert summary["lpips"]["std"] == pytest.approx(lpips_values.std(ddof=1))
    assert summary["lpips"]["ci_low"] < summary["lpips"]["mean"] < summary["lpips"]["ci_high"]
    assert summary["psnr"]["n"] == 38
    assert summary["psnr"]["n_inf"] == 1
    assert summary["psnr"]["n_nan"] == 1
    assert summary["psnr"]["mean"] == pytest.approx(psnr_values[:38].mean())


def test_metrics_table_directions():
    assert set(metrics.METRICS) == {"clip_cosine", "clip_cosine_mismatched", "lpips", "ssim", "psnr"}
    assert not metrics.METRICS["lpips"].higher_is_better
    for name in ("clip_cosine", "ssim", "psnr"):
        assert metrics.METRICS[name].higher_is_better
    for name, info in metrics.METRICS.items():
        assert info.name == name
    with pytest.raises(AttributeError):
        metrics.METRICS["ssim"].label = "changed"


# Frechet distance


def test_frechet_same_set_is_zero():
    features = np.random.default_rng(0).standard_normal((500, 16))
    assert metrics.frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)


def test_frechet_grows_with_mean_shift():
    features = np.random.default_rng(0).standard_normal((500, 16))
    distances = [metrics.frechet_distance(features, features + shift) for shift in (0.5, 1.0, 2.0)]
    assert distances[0] < distances[1] < distances[2]
    # A shift leaves the covariance unchanged, so only the squared mean difference remains.
    np.testing.assert_allclose(distances, [16 * shift**2 for shift in (0.5, 1.0, 2.0)], rtol=1e-6)


def test_frechet_scaled_covariance():
    # Scaling centred features by c keeps the mean at 0 and gives covariances S and c**2 S,
    # so d = tr(S) + c**2 tr(S) - 2 c tr(S) = tr(S) (1 - c)**2.
    features = np.random.default_rng(0).standard_normal((400, 8))
    features -= features.mean(axis=0)
    expected = np.trace(np.cov(features, rowvar=False)) * (1 - 3.0) ** 2
    assert metrics.frechet_distance(features, 3.0 * features) == pytest.approx(expected, rel=1e-6)


def test_frechet_singular_covariance_is_finite():
    # Fewer rows than dimensions: singular covariances.
    rng = np.random.default_rng(0)
    distance = metrics.frechet_distance(rng.standard_normal((5, 32)), rng.standard_normal((6, 32)))
    assert np.isfinite(distance)


def test_frechet_accepts_torch():
    features = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    assert metrics.frechet_distance(features, features + 1.0) == pytest.approx(4.0, rel=1e-5)


def test_frechet_rejects_dimension_mismatch():
    with pytest.raises(ValueError, match="dimensions"):
        metrics.frechet_distance(np.ones((4, 3)), np.ones((4, 5)))


def test_frechet_rejects_single_row():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.frechet_distance(np.ones((1, 3)), np.ones((4, 3)))
