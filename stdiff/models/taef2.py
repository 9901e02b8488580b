"""TAEF2: a tiny convolutional autoencoder into the FLUX.2 latent space (32 channels, 8x downsampling).

The layout follows TAESD (Ollin Boer Bohan, MIT licence): a stack of residual blocks of 64 channels. TAEF2 adds
a pooled branch to the encoder's last three blocks and the decoder's first three, which diffusers'
``AutoencoderTiny`` (0.42.1) cannot represent, so the module is defined here and loads the upstream state
dicts strictly.

Images are in [0, 1]; latents fall roughly in [-3, 3].
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .. import settings

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 32
DOWNSCALE = 8
ENCODER_FILE = "taef2_encoder.pth"
DECODER_FILE = "taef2_decoder.pth"
# Upstream files (madebyollin/taesd at commit 5cccb12, MIT licence), fetched only when no local copy exists.
_UPSTREAM = "https://raw.githubusercontent.com/madebyollin/taesd/5cccb12dc72074a4be35680c3b108548a7c69978/"
_ENCODER_POOLED = {11, 12, 13}
_DECODER_POOLED = {3, 4, 5}


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """Residual block; with ``pooled=True`` it first adds a 1x1 bottleneck branch, x + pool(x)."""

    def __init__(self, channels: int, *, pooled: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(), _conv(channels, channels)
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pooled:
            self.pool = nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(channels: int = 64) -> nn.Sequential:
    """Build the TAEF2 encoder: (B, 3, H, W) in [0, 1] -> (B, 32, H/8, W/8)."""
    layers: list[nn.Module] = [_conv(3, channels), _Block(channels)]
    for _ in range(3):
        layers.append(_conv(channels, channels, stride=2, bias=False))
        for _ in range(3):
            layers.append(_Block(channels, pooled=len(layers) in _ENCODER_POOLED))
    layers.append(_conv(channels, LATENT_CHANNELS))
    return nn.Sequential(*layers)


def build_decoder(channels: int = 64) -> nn.Sequential:
    """Build the TAEF2 decoder: (B, 32, h, w) -> (B, 3, 8h, 8w), roughly in [0, 1]."""
    layers: list[nn.Module] = [_Clamp(), _conv(LATENT_CHANNELS, channels), nn.ReLU()]
    for stage in range(3):
        for _ in range(3):
            layers.append(_Block(channels, pooled=len(layers) in _DECODER_POOLED))
        layers.append(nn.Upsample(scale_factor=2))
        layers.append(_conv(channels, channels, bias=False))
    layers.append(_Block(channels))
    layers.append(_conv(channels, 3))
    return nn.Sequential(*layers)


class TAEF2(nn.Module):
    """TAEF2 encoder and decoder with strict loading of the upstream weights."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = build_encoder()
        self.decoder = build_decoder()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images (B, 3, H, W) in [0, 1] into latents (B, 32, H/8, W/8)."""
        return self.encoder(images)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents (B, 32, h, w) into images (B, 3, 8h, 8w) clamped to [0, 1]."""
        return self.decoder(latents).clamp(0, 1)

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None) -> "TAEF2":
        """Load the pretrained weights from ``folder`` (default: ``$STDIFF_WEIGHTS_DIR/taef2``).

        When the files are not there and downloads are allowed, they are fetched from the upstream repository
        into the stdiff cache folder.

        Raises
        ------
        FileNotFoundError
            When the files are missing and ``STDIFF_OFFLINE=1``.
        """
        folder = Path(folder) if folder is not None else _default_folder()
        model = cls()
        for part, file_name in (("encoder", ENCODER_FILE), ("decoder", DECODER_FILE)):
            path = _resolve_weights(folder, file_name)
            state = torch.load(path, map_location="cpu", weights_only=True)
            getattr(model, part).load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        model.eval().requires_grad_(False)
        return model


def _default_folder() -> Path:
    local = settings.weights_dir()
    if local is not None and (local / "taef2").is_dir():
        return local / "taef2"
    return settings.cache_dir() / settings.TAEF2_FOLDER


def _resolve_weights(folder: Path, file_name: str) -> Path:
    path = folder / file_name
    if path.is_file():
        return path
    if settings.offline():
        raise FileNotFoundError(
            f"TAEF2 weights not found: {path}. Set STDIFF_WEIGHTS_DIR to a folder with taef2/{file_name}, "
            "or unset STDIFF_OFFLINE to download them."
        )
    logger.info("Downloading %s to %s", file_name, folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(_UPSTREAM + file_name, str(path), progress=True)
    return path
