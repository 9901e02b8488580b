"""``stdiff train-ldm``: latent diffusion on TAEF2 latents, conditioned on CLIP expression embeddings."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.checkpoint import write_checkpoint_files, write_folder_atomically
from ..models.clip import ClipModel
from ..models.ldm import ConditionalLdm, LdmConfig
from ..models.taef2 import TAEF2
from ..prepare import load_samples, read_prepare_config
from .clip import CLIP_DIR
from .common import (
    N_DIHEDRAL,
    dihedral,
    load_training_state,
    make_accelerator,
    patches_to_tensor,
    save_training_state,
    seed_everything,
)

logger = logging.getLogger(__name__)

LDM_DIR = "ldm"
LATENT_CACHE = "cache/latents.npy"


@dataclass(frozen=True)
class LdmTrainConfig:
    """Settings of ``stdiff train-ldm``."""

    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    ema_decay: float = 0.999  # the saved weights are the exponential moving average
    seed: int = 0
    checkpoint_every: int = 200
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    cond_dropout: float = 0.1
    mixed_precision: str = "no"


@torch.no_grad()
def encode_latents(patches: np.ndarray, autoencoder: TAEF2, device, *, batch_size: int = 64) -> np.ndarray:
    """TAEF2 latents of all 8 dihedral views of every patch: float16 (8, N, 32, h, w)."""
    from tqdm.auto import tqdm

    autoencoder = autoencoder.to(device)
    views = []
    for index in tqdm(range(N_DIHEDRAL), desc="encode latents (8 views)"):
        chunks = []
        for start in range(0, len(patches), batch_size):
            images = dihedral(patches_to_tensor(patches[start : start + batch_size]).to(device), index)
            chunks.append(autoencoder.encode(images).cpu().half())
        views.append(torch.cat(chunks))
    return torch.stack(views).numpy()


@torch.no_grad()
def expression_condition(clip: ClipModel, expression: np.ndarray, device) -> torch.Tensor:
    """Normalised CLIP expression embeddings (N, embed_dim) used as the diffusion condition."""
    clip = clip.to(device).eval()
    return clip.encode_expression(torch.from_numpy(expression).to(device)).cpu()


def train_ldm(run_dir: str | Path, config: LdmTrainConfig = LdmTrainConfig(), *, progress: bool = True) -> Path:
    """Train the conditional latent diffusion model and write ``RUN_DIR/ldm`` (EMA weights).

    Needs ``RUN_DIR/clip`` (``stdiff train-clip``). Resumes from the last checkpoint in ``RUN_DIR/ldm``.
    """
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    prepare_config, _ = read_prepare_config(run_dir)
    if not (run_dir / CLIP_DIR / "config.json").is_file():
        raise FileNotFoundError(f"No CLIP model in {run_dir / CLIP_DIR}. Run `stdiff train-clip {run_dir}` first.")
    seed_everything(config.seed)
    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    device = accelerator.device
    data = load_samples(run_dir, prepare_config.training_parts)
    cond = expression_condition(ClipModel.from_pretrained(run_dir / CLIP_DIR), data.expression, device)

    cache = run_dir / LATENT_CACHE
    latents = np.load(cache, mmap_mode="r") if cache.is_file() else None
    if latents is not None and latents.shape[1] != len(data):
        logger.warning("Ignoring %s: it contains latents of %d patches, not %d", cache, latents.shape[1], len(data))
        latents = None
    if latents is None:
        latents = encode_latents(data.patches, TAEF2.from_pretrained(), device)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache.with_suffix(".tmp.npy"), latents)
        cache.with_suffix(".tmp.npy").replace(cache)
    latents = torch.from_numpy(np.asarray(latents, dtype=np.float32))  # a writable float32 copy of the float16 cache

    model_config = LdmConfig(
        cond_dim=cond.shape[1],
        latent_size=prepare_config.resolution // 8,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        cond_dropout=config.cond_dropout,
    )
    out = run_dir / LDM_DIR
    state = None
    if (out / "config.json").is_file():
        model = ConditionalLdm.from_pretrained(out / "raw")
        if model.config != model_config:
            raise ValueError(f"{out} contains a model trained with other settings. Use a new run folder or delete {out}.")
        state = load_training_state(out)
    else:
        model = ConditionalLdm(model_config)
        model.set_latent_statistics(latents[0])
    start_step = state["step"] if state else 0
    if start_step >= config.steps:
        logger.info("LDM training already done (%d steps)", start_step)
        if accelerator.is_main_process:
            add_reference_latents(run_dir, latents[0])
        return out
    if start_step:
        logger.info("Resuming LDM training at step %d", start_step)

    model.to(device).train()
    ema = EMAModel(model.parameters(), decay=config.ema_decay, use_ema_warmup=True)
    if state:
        ema.load_state_dict(state["extra"]["ema"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        # Replaying the schedule puts the learning rate where training stopped. PyTorch warns because no optimizer
        # step came first, which here is intended.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            for _ in range(start_step):
                scheduler.step()
        torch.set_rng_state(state["torch_rng"])
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    noise_scheduler = core.training_scheduler()
    generator = torch.Generator().manual_seed(config.seed + start_step)
    batch_size = min(config.batch_size, len(data))

    bar = tqdm(range(start_step, config.steps), desc="train-ldm", disable=not (progress and accelerator.is_main_process))
    for step in bar:
        # 1. A batch of standardised clean latents x_0, each from a random dihedral view.
        index = torch.randint(len(data), (batch_size,), generator=generator)
        views = torch.randint(N_DIHEDRAL, (batch_size,), generator=generator)
        clean = core.to_model_space(latents[views, index].to(device))

        # 2. Forward diffusion: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)

        # 3. Condition dropout: some rows get the learned null condition, so guidance works at sampling.
        batch_cond = cond[index].to(device)
        drop = (torch.rand(batch_size, generator=generator) < config.cond_dropout).to(device)
        batch_cond = torch.where(drop[:, None], core.null_cond.expand_as(batch_cond), batch_cond)

        # 4. Predict the noise and regress it.
        noise_pred = model(noisy, timesteps, batch_cond)
        target = noise if core.config.prediction_type == "epsilon" else noise_scheduler.get_velocity(clean, noise, timesteps)
        loss = F.mse_loss(noise_pred, target)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        ema.step(core.parameters())
        bar.set_postfix(loss=f"{loss.item():.4f}")

        done = step + 1
        if accelerator.is_main_process and (done % config.checkpoint_every == 0 or done == config.steps):
            _save(core, ema, out, optimizer, done, config)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        add_reference_latents(run_dir, latents[0])
    return out


def add_reference_latents(run_dir: Path, latents: torch.Tensor) -> None:
    """Store the training patches' TAEF2 latents (float16) in ``reference.safetensors``, so that sampling can
    start from a retrieved training patch with only the model folder at hand."""
    from safetensors.torch import load_file, save_file

    from .clip import REFERENCE_NAME

    path = run_dir / REFERENCE_NAME
    tensors = load_file(str(path))
    if len(tensors["expression"]) != len(latents):
        raise ValueError(f"{path} describes {len(tensors['expression'])} training spots but there are "
                         f"{len(latents)} latents; run `stdiff train-clip {run_dir}` again.")
    tensors["latents"] = latents.half().contiguous()
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)


def _save(model: ConditionalLdm, ema, out: Path, optimizer, step: int, config: LdmTrainConfig) -> None:
    """Replace ``out`` in one atomic move: EMA weights in ``out`` (the model used for sampling), raw weights in
    ``out/raw`` and the optimizer and EMA state for resuming."""
    extra = {"step": step, "train_config": dataclasses.asdict(config)}
    raw_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    ema_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ema.restore(model.parameters())

    def write(tmp: Path) -> None:
        write_checkpoint_files(tmp, config=model.config, state_dict=ema_state, extra=extra)
        write_checkpoint_files(tmp / "raw", config=model.config, state_dict=raw_state, extra=extra)
        save_training_state(tmp, optimizer=optimizer, step=step, extra={"ema": ema.state_dict()})

    write_folder_atomically(out, write)
