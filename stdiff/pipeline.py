"""Inference: generate patches from expression, embed patches, predict expression back from patches."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .expression import GeneSet
from .models.clip import ClipModel
from .models.ldm import ConditionalLdm
from .models.taef2 import TAEF2
from .training.clip import CLIP_DIR, REFERENCE_NAME
from .training.common import patches_to_tensor
from .training.ldm import LDM_DIR

logger = logging.getLogger(__name__)

MODEL_CARD = "model.json"


class StdiffPipeline:
    """A trained stdiff model: CLIP towers, the latent diffusion model, TAEF2 and the training reference.

    Load it with :meth:`from_pretrained` from a run folder or an exported model folder (``models/demo``).
    """

    def __init__(self, *, clip: ClipModel, ldm: ConditionalLdm, autoencoder: TAEF2, gene_set: GeneSet,
                 reference: dict[str, torch.Tensor], card: dict, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.clip = clip.to(self.device).eval()
        self.ldm = ldm.to(self.device).eval()
        self.autoencoder = autoencoder.to(self.device).eval()
        self.gene_set = gene_set
        self.reference = reference
        self.card = card

    @property
    def genes(self) -> tuple[str, ...]:
        return self.gene_set.genes

    @property
    def resolution(self) -> int:
        return int(self.card["resolution"])

    @property
    def patch_size(self) -> int:
        return int(self.card["patch_size"])

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: str | None = None) -> "StdiffPipeline":
        """Load from ``folder`` holding ``clip/``, ``ldm/``, ``genes.json``, ``reference.safetensors`` and
        ``model.json`` (or ``prepare.json`` in a run folder)."""
        folder = Path(folder)
        if folder.is_file():
            raise FileNotFoundError(f"{folder} is a file, not a model folder. Pass the folder written by "
                                    "`stdiff export` (for example models/demo) or a trained run folder.")
        if not folder.is_dir():
            raise FileNotFoundError(f"Model folder not found: {folder}. Pass the folder written by `stdiff export` "
                                    "(for example models/demo) or a trained run folder.")
        card = read_model_card(folder)
        reference_path = folder / REFERENCE_NAME
        if not reference_path.is_file():
            raise FileNotFoundError(f"No {REFERENCE_NAME} in {folder}; run `stdiff train-clip` to write it.")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            clip=ClipModel.from_pretrained(folder / CLIP_DIR),
            ldm=ConditionalLdm.from_pretrained(folder / LDM_DIR),
            autoencoder=TAEF2.from_pretrained(),
            gene_set=GeneSet.load(folder),
            reference=load_file(str(reference_path)),
            card=card,
            device=device,
        )

    @torch.no_grad()
    def embed_expression(self, expression: np.ndarray) -> np.ndarray:
        """Normalised CLIP expression embeddings (N, D) of log1p expression (N, n_genes)."""
        values = torch.as_tensor(np.asarray(expression, dtype=np.float32), device=self.device)
        return self.clip.encode_expression(values).cpu().numpy()

    @torch.no_grad()
    def embed_images(self, patches: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
        """Normalised CLIP image embeddings (N, D) of uint8 patches (N, R, R, 3)."""
        chunks = []
        for start in range(0, len(patches), batch_size):
            images = patches_to_tensor(patches[start : start + batch_size]).to(self.device)
            chunks.append(self.clip.encode_image(images).cpu())
        if not chunks:
            return np.zeros((0, self.clip.config.embed_dim), dtype=np.float32)
        return torch.cat(chunks).numpy()

    @torch.no_grad()
    def encode_patches(self, patches: np.ndarray) -> torch.Tensor:
        """Raw TAEF2 latents (N, 32, R/8, R/8) of uint8 patches."""
        return self.autoencoder.encode(patches_to_tensor(patches).to(self.device))

    @torch.no_grad()
    def generate(
        self,
        expression: np.ndarray,
        *,
        n_per_spot: int = 2,
        seed: int = 0,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 25,
        init_patches: np.ndarray | None = None,
        init_latents: np.ndarray | torch.Tensor | None = None,
        strength: float = 1.0,
        batch_size: int = 64,
        progress: bool = False,
    ) -> np.ndarray:
        """Generate ``n_per_spot`` patches for each expression vector.

        Parameters
        ----------
        expression
            log1p-normalised expression (N, n_genes) in the order of :attr:`genes`.
        seed
            Patch ``j`` of spot ``i`` uses seed ``seed + i * n_per_spot + j``, so a spot's patches do not depend
            on which other spots are generated in the same call.
        init_patches
            Optional uint8 patches (N, R, R, 3) to start from (see ``strength``), for example retrieved
            training patches.
        init_latents
            Optional raw TAEF2 latents (N, 32, R/8, R/8) to start from, instead of ``init_patches``.
        strength
            Share of the noise schedule applied to the start patch; 1 starts from pure noise.

        Returns
        -------
        numpy.ndarray
            uint8 (N, n_per_spot, R, R, 3).
        """
        expression = np.asarray(expression, dtype=np.float32)
        if expression.ndim != 2 or expression.shape[1] != len(self.genes):
            raise ValueError(
                f"expression must have shape (n_spots, {len(self.genes)}) for this model's genes, got "
                f"{expression.shape}."
            )
        if n_per_spot < 1:
            raise ValueError(f"n_per_spot must be at least 1, got {n_per_spot}.")
        n_spots = len(expression)
        cond = torch.as_tensor(self.embed_expression(expression), device=self.device)
        cond = cond.repeat_interleave(n_per_spot, dim=0)
        init = None
        if init_patches is not None:
            init_patches = np.asarray(init_patches)
            if init_patches.shape != (n_spots, self.resolution, self.resolution, 3):
                raise ValueError(
                    f"init_patches must have shape ({n_spots}, {self.resolution}, {self.resolution}, 3), one patch "
                    f"per expression row, got {init_patches.shape}."
                )
            init = self.encode_patches(init_patches).repeat_interleave(n_per_spot, dim=0)
        elif init_latents is not None:
            init = torch.as_tensor(init_latents, device=self.device).float()
            expected = (n_spots, self.ldm.config.latent_channels, self.ldm.config.latent_size, self.ldm.config.latent_size)
            if tuple(init.shape) != expected:
                raise ValueError(f"init_latents must have shape {expected}, got {tuple(init.shape)}.")
            init = init.repeat_interleave(n_per_spot, dim=0)
        res = self.resolution
        out = np.empty((n_spots * n_per_spot, res, res, 3), dtype=np.uint8)
        from tqdm.auto import tqdm

        for start in tqdm(range(0, len(cond), batch_size), desc="generate", disable=not progress, leave=False):
            stop = min(start + batch_size, len(cond))
            noise = torch.stack([
                torch.randn(self.ldm.config.latent_channels, self.ldm.config.latent_size, self.ldm.config.latent_size,
                            generator=torch.Generator().manual_seed(seed + i))
                for i in range(start, stop)
            ])
            latents = self.ldm.sample(
                cond[start:stop],
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                noise=noise.to(self.device),
                init_latents=None if init is None else init[start:stop],
                strength=strength,
            )
            images = self.autoencoder.decode(latents)
            out[start:stop] = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        return out.reshape(n_spots, n_per_spot, res, res, 3)

    @property
    def has_reference_latents(self) -> bool:
        """True when the model folder stores TAEF2 latents of its training patches (for retrieval starts)."""
        return "latents" in self.reference

    def retrieve_reference(self, expression: np.ndarray, *, by: str = "clip") -> np.ndarray:
        """Index (N,) of the training spot retrieved for each expression vector.

        ``by="clip"``: the spot whose CLIP image embedding is nearest to the expression embedding.
        ``by="expression"``: the spot whose measured log1p expression is nearest (Euclidean).
        """
        if by == "clip":
            similarity = self.embed_expression(expression) @ self.reference["image_embeds"].numpy().T
            return np.argmax(similarity, axis=1)
        if by == "expression":
            bank = self.reference["expression"].numpy()
            distances = ((np.asarray(expression)[:, None, :] - bank[None, :, :]) ** 2).sum(axis=-1)
            return np.argmin(distances, axis=1)
        raise ValueError(f"Retrieval must be 'clip' or 'expression', got {by!r}.")

    def retrieved_latents(self, expression: np.ndarray, *, by: str = "clip") -> torch.Tensor:
        """Stored TAEF2 latents (N, 32, R/8, R/8) of the training patches retrieved for ``expression``."""
        if not self.has_reference_latents:
            raise ValueError("This model folder stores no training latents; retrain it with this stdiff version "
                             "(train-ldm writes them) or start from noise.")
        return self.reference["latents"][self.retrieve_reference(expression, by=by)].float()

    def predict_expression(self, patches: np.ndarray, *, k: int = 10) -> np.ndarray:
        """Predict expression (N, n_genes) of patches from the ``k`` training spots nearest in CLIP image space.

        The prediction is the similarity-weighted mean of their measured expression (softmax over cosine
        similarities scaled by the model's logit scale).
        """
        return self.predict_from_embeddings(self.embed_images(patches), k=k)

    def predict_from_embeddings(self, embeddings: np.ndarray, *, k: int = 10,
                                values: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`predict_expression`, from CLIP image embeddings. ``values`` (n_reference, n) replaces the
        reference spots' model-gene expression, for example with their most variable genes."""
        bank = self.reference["image_embeds"].numpy()
        expression = self.reference["expression"].numpy() if values is None else np.asarray(values)
        if len(expression) != len(bank):
            raise ValueError(f"values has {len(expression)} rows but the reference contains {len(bank)} spots.")
        k = min(k, len(bank))
        similarity = embeddings @ bank.T
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(similarity, nearest, axis=1)
        scale = float(self.clip.scale().detach())
        weights = np.exp(scale * (top - top.max(axis=1, keepdims=True)))
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("nk,nkg->ng", weights, expression[nearest]).astype(np.float32)


def read_model_card(folder: Path) -> dict:
    """Read patch size, resolution and training samples from ``model.json`` or a run's ``prepare.json``."""
    card_path = folder / MODEL_CARD
    if card_path.is_file():
        return json.loads(card_path.read_text())
    if (folder / "prepare.json").is_file():
        from .prepare import read_prepare_config

        config, _ = read_prepare_config(folder)
        card = {"patch_size": config.patch_size, "resolution": config.resolution,
                "train_samples": list(config.training_parts), "eval_samples": list(config.evaluation_parts),
                "min_counts": config.min_counts}
        if config.blocked_samples:
            card["blocked_split"] = {"samples": list(config.blocked_samples), "block_grid": config.block_grid,
                                     "eval_block_fraction": config.eval_block_fraction, "gap_pixels": config.gap,
                                     "seed": config.split_seed}
        return card
    raise FileNotFoundError(f"Neither {MODEL_CARD} nor prepare.json in {folder}: not a stdiff model folder.")
