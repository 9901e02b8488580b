"""Latent diffusion model conditioned on the expression embedding through cross-attention."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_state_strict, read_config, read_state_dict, save_checkpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LdmConfig:
    """Settings of a :class:`ConditionalLdm`, stored in ``config.json``."""

    cond_dim: int  # size of the conditioning embedding (the CLIP embed_dim)
    latent_channels: int = 32  # TAEF2 latent channels
    latent_size: int = 16  # latent side: patch resolution / 8
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    num_attention_heads: int = 4
    cross_attention_dim: int = 128
    cond_tokens: int = 4  # the embedding is projected to this many cross-attention tokens
    cond_dropout: float = 0.1  # share of training samples with the learned null condition, for guidance
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    # Sampling clamps each step's predicted clean latent to +-sample_clip_range (in standardised units; 99% of
    # training latents lie within +-2.6). Without it, epsilon prediction under the cosine schedule divides the
    # error by sqrt(alpha_bar) ~ 0.01 in the first steps, and samples drift to 5x the data's spread.
    sample_clip_range: float = 2.5


class ConditionalLdm(nn.Module):
    """A diffusers ``UNet2DConditionModel`` denoising standardised TAEF2 latents.

    Latents are standardised per channel with the training mean and standard deviation (buffers
    ``latent_mean`` and ``latent_std``) so that they match the unit variance the noise schedule assumes.
    """

    def __init__(self, config: LdmConfig) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.config = config
        n_blocks = len(config.block_out_channels)
        down = ["CrossAttnDownBlock2D"] * (n_blocks - 1) + ["DownBlock2D"]
        up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n_blocks - 1)
        self.unet = UNet2DConditionModel(
            sample_size=config.latent_size,
            in_channels=config.latent_channels,
            out_channels=config.latent_channels,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            cross_attention_dim=config.cross_attention_dim,
            # NOTE: diffusers 0.42 rejects num_attention_heads here and reads attention_head_dim as the
            # number of heads instead, so the head count goes into attention_head_dim.
            attention_head_dim=config.num_attention_heads,
            norm_num_groups=math.gcd(32, *config.block_out_channels),
        )
        self.cond_proj = nn.Linear(config.cond_dim, config.cond_tokens * config.cross_attention_dim)
        self.null_cond = nn.Parameter(torch.zeros(config.cond_dim))
        self.register_buffer("latent_mean", torch.zeros(1, config.latent_channels, 1, 1))
        self.register_buffer("latent_std", torch.ones(1, config.latent_channels, 1, 1))

    def set_latent_statistics(self, latents: torch.Tensor) -> None:
        """Store per-channel mean and standard deviation of raw training latents (N, C, h, w)."""
        self.latent_mean.copy_(latents.mean(dim=(0, 2, 3), keepdim=True))
        self.latent_std.copy_(latents.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))

    def to_model_space(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.latent_mean) / self.latent_std

    def to_latent_space(self, sample: torch.Tensor) -> torch.Tensor:
        return sample * self.latent_std + self.latent_mean

    def encoder_states(self, cond: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """Cross-attention tokens (B, cond_tokens, cross_attention_dim); ``cond=None`` gives the null condition."""
        if cond is None:
            cond = self.null_cond.expand(batch_size, -1)
        tokens = self.cond_proj(cond)
        return tokens.view(cond.shape[0], self.config.cond_tokens, self.config.cross_attention_dim)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Predict the noise (``noise_pred``) in a standardised noisy latent ``sample`` at ``timesteps``."""
        states = self.encoder_states(cond, sample.shape[0])
        return self.unet(sample, timesteps, encoder_hidden_states=states).sample

    def training_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule=self.config.beta_schedule,
            prediction_type=self.config.prediction_type,
        )

    def sampling_scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule=self.config.beta_schedule,
            prediction_type=self.config.prediction_type,
            clip_sample=self.config.sample_clip_range > 0,
            clip_sample_range=self.config.sample_clip_range if self.config.sample_clip_range > 0 else 1.0,
            set_alpha_to_one=False,
        )

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        *,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
        init_latents: torch.Tensor | None = None,
        strength: float = 1.0,
        noise: torch.Tensor | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample raw TAEF2 latents (B, C, h, w) with DDIM and classifier-free guidance.

        Parameters
        ----------
        cond
            Conditioning embeddings (B, cond_dim).
        guidance_scale
            w in noise_pred = uncond + w * (cond - uncond). 1 uses the condition alone, 0 ignores it.
        init_latents
            Optional raw latents (B, C, h, w) to start from, noised to ``strength`` of the schedule.
            With ``strength=1`` (default) sampling starts from pure noise.
        noise
            Optional starting noise (B, C, h, w); drawn from ``generator`` when omitted.
        """
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}.")
        scheduler = self.sampling_scheduler()
        scheduler.set_timesteps(num_inference_steps)
        timesteps = scheduler.timesteps
        batch = cond.shape[0]
        shape = (batch, self.config.latent_channels, self.config.latent_size, self.config.latent_size)
        device = cond.device
        if noise is None:
            noise = torch.randn(shape, generator=generator, dtype=cond.dtype).to(device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}.")

        # 1. Start point: pure noise, or the initial latents noised to the first kept timestep.
        if init_latents is not None and strength < 1.0:
            n_kept = max(1, int(round(num_inference_steps * strength)))
            timesteps = timesteps[num_inference_steps - n_kept :]
            sample = scheduler.add_noise(self.to_model_space(init_latents.to(device)), noise, timesteps[:1])
        else:
            sample = noise * scheduler.init_noise_sigma

        uncond_states = self.encoder_states(None, batch)
        cond_states = self.encoder_states(cond, batch)
        use_guidance = guidance_scale != 1.0
        iterator = timesteps
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(timesteps, desc="DDIM", leave=False)
        for t in iterator:
            # 2. Predict the noise with and without the condition in one batch.
            if use_guidance:
                states = torch.cat([uncond_states, cond_states])
                noise_pred = self.unet(torch.cat([sample, sample]), t, encoder_hidden_states=states).sample
                noise_uncond, noise_cond = noise_pred.chunk(2)

                # 3. Classifier-free guidance: move away from the unconditional prediction.
                noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            else:
                noise_pred = self.unet(sample, t, encoder_hidden_states=cond_states).sample

            # 4. DDIM update x_t -> x_{t-1}.
            sample = scheduler.step(noise_pred, t, sample).prev_sample
        return self.to_latent_space(sample)

    def save_pretrained(self, folder: str | Path, *, extra: dict | None = None) -> Path:
        return save_checkpoint(folder, config=self.config, state_dict=self.state_dict(), extra=extra)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ConditionalLdm":
        config, _ = read_config(folder, LdmConfig)
        model = cls(config)
        load_state_strict(model, read_state_dict(folder))
        return model.eval()
