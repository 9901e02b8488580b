"""LPIPS perceptual distance with an AlexNet backbone read from the local weights folder."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import lpips
import numpy as np
import torch

from stdiff import settings
from stdiff.metrics._inputs import as_patch_batches

logger = logging.getLogger(__name__)

LPIPS_WEIGHTS_SUBDIR = "lpips_alexnet"
LPIPS_BACKBONE_FILE = "alexnet_features_imagenet.pth"

# torchvision AlexNet conv layer index in ``features`` -> LPIPS slice that contains it. Each slice
# keeps the torchvision index as its module name, so ``features.3.weight`` becomes ``slice2.3.weight``.
ALEXNET_FEATURE_TO_SLICE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def lpips_backbone_path() -> Path | None:
    """Return the expected AlexNet backbone file, or None when no weights folder is configured."""
    weights_dir = settings.weights_dir()
    if weights_dir is None:
        return None
    return weights_dir / LPIPS_WEIGHTS_SUBDIR / LPIPS_BACKBONE_FILE


def alexnet_features_to_lpips(features: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    """Rename torchvision AlexNet conv tensors (``features.{i}.{weight,bias}``) to LPIPS slice keys.

    Parameters
    ----------
    features
        State dict with exactly the ten keys ``features.{0,3,6,8,10}.{weight,bias}``.
    source
        Where the tensors came from, used in the error message.

    Raises
    ------
    ValueError
        If the keys differ from the ten expected ones.
    """
    expected = {f"features.{index}.{param}" for index in ALEXNET_FEATURE_TO_SLICE for param in ("weight", "bias")}
    if set(features) != expected:
        raise ValueError(
            f"{source} is not an AlexNet conv state dict: missing keys {sorted(expected - set(features))}, "
            f"unexpected keys {sorted(set(features) - expected)}"
        )
    renamed = {}
    for index, slice_number in ALEXNET_FEATURE_TO_SLICE.items():
        for param in ("weight", "bias"):
            renamed[f"slice{slice_number}.{index}.{param}"] = features[f"features.{index}.{param}"]
    return renamed


def _download_alexnet_features() -> dict[str, torch.Tensor]:
    """Download torchvision's ImageNet AlexNet and return its conv tensors under ``features.*`` keys."""
    import torchvision

    logger.info("Downloading torchvision AlexNet IMAGENET1K_V1 weights for LPIPS (cached by torch.hub)")
    model = torchvision.models.alexnet(weights="IMAGENET1K_V1")
    return {key: value for key, value in model.state_dict().items() if key.startswith("features.")}


def _read_backbone_features(path: Path | None) -> tuple[dict[str, torch.Tensor], str]:
    """Return the AlexNet conv tensors and a description of their source.

    Reads ``path`` when it exists, otherwise downloads torchvision's weights unless
    ``settings.offline()`` is True, in which case FileNotFoundError is raised.
    """
    if path is not None and path.is_file():
        logger.info("Loading LPIPS AlexNet backbone from %s", path)
        return torch.load(path, map_location="cpu", weights_only=True), str(path)

    if settings.offline():
        where = str(path) if path is not None else f"$STDIFF_WEIGHTS_DIR/{LPIPS_WEIGHTS_SUBDIR}/{LPIPS_BACKBONE_FILE}"
        raise FileNotFoundError(
            f"LPIPS AlexNet backbone not found at {where} and downloads are disabled (STDIFF_OFFLINE=1). "
            f"Set STDIFF_WEIGHTS_DIR to a folder containing {LPIPS_WEIGHTS_SUBDIR}/{LPIPS_BACKBONE_FILE}, "
            "or unset STDIFF_OFFLINE to download torchvision's ImageNet AlexNet"
        )

    logger.info("LPIPS AlexNet backbone not found at %s, downloading it instead", path or "(STDIFF_WEIGHTS_DIR unset)")
    return _download_alexnet_features(), "torchvision AlexNet IMAGENET1K_V1"


@functools.lru_cache(maxsize=None)
def load_lpips(*, device: str | torch.device = "cpu") -> lpips.LPIPS:
    """Build LPIPS (AlexNet, v0.1 linear layers) with the ImageNet AlexNet backbone.

    The backbone comes from ``settings.weights_dir() / "lpips_alexnet" / "alexnet_features_imagenet.pth"``
    (torchvision key names ``features.{0,3,6,8,10}.{weight,bias}``), loaded strictly. When that file is
    missing, torchvision's ``alexnet(weights="IMAGENET1K_V1")`` is downloaded instead, unless
    ``settings.offline()`` is True. The linear layers ship with the ``lpips`` package.

    One model is built per ``device`` value and shared by all callers, so do not modify it. Call
    ``load_lpips.cache_clear()`` after changing ``STDIFF_WEIGHTS_DIR`` or ``STDIFF_OFFLINE``.

    Parameters
    ----------
    device
        Torch device to put the model on.

    Returns
    -------
    lpips.LPIPS
        The model in eval mode with ``requires_grad`` False on every parameter.

    Raises
    ------
    FileNotFoundError
        If the backbone file is missing and downloads are disabled.
    ValueError
        If the backbone file does not contain exactly the AlexNet conv tensors.
    """
    path = lpips_backbone_path()
    features, source = _read_backbone_features(path)

    # pnet_rand=True builds AlexNet without downloading, and its random conv weights are replaced below.
    # lpips 0.1.4 passes the deprecated ``pretrained=`` argument to torchvision, which warns twice.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
        model = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    model.net.load_state_dict(alexnet_features_to_lpips(features, source=source), strict=True)

    model.eval()
    model.requires_grad_(False)
    return model.to(device)


def patches_to_lpips_input(patches: np.ndarray) -> torch.Tensor:
    """Convert uint8 ``(N, H, W, 3)`` RGB patches to a float32 ``(N, 3, H, W)`` tensor in [-1, 1].

    LPIPS expects inputs scaled to [-1, 1]: ``x / 127.5 - 1`` maps 0 to -1 and 255 to 1.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2)
    return tensor.to(torch.float32) / 127.5 - 1.0


def lpips_distance(
    real: np.ndarray,
    generated: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """Compute the LPIPS distance (AlexNet, v0.1) between each real and generated patch.

    Lower is better: identical patches give 0. Patches are scaled from uint8 [0, 255] to the [-1, 1]
    range LPIPS expects before they reach the network.

    Parameters
    ----------
    real, generated
        uint8 RGB patches of shape ``(N, H, W, 3)``, or ``(H, W, 3)`` for one patch. H and W must be
        at least 31 pixels, because AlexNet's strided convolutions and pooling reduce smaller inputs to nothing.
    device
        Torch device for the model, see :func:`load_lpips`.
    batch_size
        Number of patch pairs per forward pass.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(N,)``.

    Raises
    ------
    ValueError
        If the inputs are not matching uint8 patch arrays, or ``batch_size`` is not positive.
    """
    real, generated = as_patch_batches(real, generated)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    height, width = real.shape[1:3]
    if min(height, width) < 31:
        raise ValueError(f"LPIPS with AlexNet needs patches of at least 31x31 pixels, got {height}x{width}")

    model = load_lpips(device=device)
    distances = np.empty(len(real), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(real), batch_size):
            stop = start + batch_size
            real_batch = patches_to_lpips_input(real[start:stop]).to(device)
            generated_batch = patches_to_lpips_input(generated[start:stop]).to(device)
            distances[start:stop] = model(real_batch, generated_batch).flatten().double().cpu().numpy()
    return distances
