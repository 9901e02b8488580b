"""``stdiff train-clip``: contrastive training of patches against expression."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..models.checkpoint import write_checkpoint_files, write_folder_atomically
from ..models.clip import ClipConfig, ClipModel
from ..prepare import load_samples, read_prepare_config
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

CLIP_DIR = "clip"
REFERENCE_NAME = "reference.safetensors"


@dataclass(frozen=True)
class ClipTrainConfig:
    """Settings of ``stdiff train-clip``."""

    # Defaults chosen on a validation split (train her2st C2-C4, validate on C5) by retrieval rank;
    # docs/results.md lists the settings compared.
    steps: int = 400
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.2
    seed: int = 0
    checkpoint_every: int = 100  # steps between checkpoints
    embed_dim: int = 128
    image_tower: str = "efficientnet_lite0"
    freeze_backbone: bool = True
    hidden_dim: int = 512
    dropout: float = 0.5
    expression_noise: float = 1.0  # std of Gaussian noise added to standardised expression in training
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" (GPU only)


def _backbone_features(model: ClipModel, patches: np.ndarray, device, batch_size: int = 128) -> torch.Tensor:
    """Features of the frozen backbone for all 8 dihedral views: (8, N, width)."""
    from tqdm.auto import tqdm

    views = []
    with torch.no_grad():
        for index in tqdm(range(N_DIHEDRAL), desc="backbone features (8 views)"):
            chunks = []
            for start in range(0, len(patches), batch_size):
                images = patches_to_tensor(patches[start : start + batch_size]).to(device)
                chunks.append(model.image.features(dihedral(images, index)).cpu())
            views.append(torch.cat(chunks))
    return torch.stack(views)


def _cached_features(run_dir: Path, model: ClipModel, patches: np.ndarray, device) -> torch.Tensor:
    """Frozen-backbone features of the training patches, computed once per run and image tower."""
    tower = model.config.image_tower.replace(":", "-").replace("/", "-")
    path = run_dir / "cache" / f"clip_features_{tower}_{model.config.image_size}.npy"
    if path.is_file():
        features = torch.from_numpy(np.load(path))
        if features.shape[1] == len(patches):
            return features
        logger.warning("Ignoring %s: it was computed for %d patches, not %d", path, features.shape[1], len(patches))
    features = _backbone_features(model, patches, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, features.numpy())
    tmp.replace(path)
    return features


def train_clip(run_dir: str | Path, config: ClipTrainConfig = ClipTrainConfig(), *, progress: bool = True) -> Path:
    """Train the contrastive model on the run's training samples and write ``RUN_DIR/clip``.

    Resumes from ``RUN_DIR/clip`` when a checkpoint with fewer steps is there. Also writes
    ``RUN_DIR/reference.safetensors``: image embeddings and expression of every training spot, which
    :mod:`stdiff.reconstruct` uses to predict expression from generated patches.
    """
    from open_clip.loss import ClipLoss
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    prepare_config, _ = read_prepare_config(run_dir)
    data = load_samples(run_dir, prepare_config.training_parts)
    out = run_dir / CLIP_DIR
    seed_everything(config.seed)
    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    device = accelerator.device

    model_config = ClipConfig(
        n_genes=data.expression.shape[1],
        embed_dim=config.embed_dim,
        image_tower=config.image_tower,
        image_size=prepare_config.resolution,
        freeze_backbone=config.freeze_backbone,
        hidden_dim=config.hidden_dim,
        dropout=config.dropout,
        expression_noise=config.expression_noise,
    )
    start_step = 0
    if (out / "config.json").is_file():
        model = ClipModel.from_pretrained(out)
        if model.config != model_config:
            raise ValueError(f"{out} contains a model trained with other settings. Use a new run folder or delete {out}.")
        state = load_training_state(out)
        start_step = state["step"] if state else 0
        logger.info("Resuming CLIP training at step %d", start_step)
    else:
        model = ClipModel(model_config)
        model.expression.set_standardization(torch.from_numpy(data.expression))
        state = None
    if start_step >= config.steps:
        logger.info("CLIP training already done (%d steps)", start_step)
        return out
    model.to(device).train()

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    features = _cached_features(run_dir, core, data.patches, device) if config.freeze_backbone else None
    expression = torch.from_numpy(data.expression)
    loss_fn = ClipLoss(
        local_loss=False, gather_with_grad=True, rank=accelerator.process_index, world_size=accelerator.num_processes
    )
    generator = torch.Generator().manual_seed(config.seed + start_step)
    batch_size = min(config.batch_size, len(data))

    bar = tqdm(range(start_step, config.steps), desc="train-clip", disable=not (progress and accelerator.is_main_process))
    for step in bar:
        index = torch.randperm(len(data), generator=generator)[:batch_size]
        view = int(torch.randint(N_DIHEDRAL, (1,), generator=generator))
        batch_expression = expression[index].to(device)
        if features is not None:
            outputs = model(batch_expression, features=features[view, index].to(device))
        else:
            images = dihedral(patches_to_tensor(data.patches[index.numpy()]).to(device), view)
            outputs = model(batch_expression, images)
        loss = loss_fn(*outputs)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{core.scale().item():.1f}")
        done = step + 1
        if accelerator.is_main_process and (done % config.checkpoint_every == 0 or done == config.steps):
            _save(core, out, optimizer, done, config)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_reference(run_dir, core.eval(), data, features[0] if features is not None else None)
    return out


def _save(model: ClipModel, out: Path, optimizer, step: int, config: ClipTrainConfig) -> None:
    """Replace ``out`` with the weights and the optimizer state of ``step`` in one atomic move."""
    extra = {"step": step, "train_config": dataclasses.asdict(config)}
    state = model.trainable_state_dict()

    def write(tmp: Path) -> None:
        write_checkpoint_files(tmp, config=model.config, state_dict=state, extra=extra)
        save_training_state(tmp, optimizer=optimizer, step=step)

    write_folder_atomically(out, write)


@torch.no_grad()
def write_reference(run_dir: Path, model: ClipModel, data, features: torch.Tensor | None = None) -> Path:
    """Write image and expression embeddings plus expression of the training spots."""
    device = next(model.parameters()).device
    if features is None:
        chunks = [
            model.encode_image(patches_to_tensor(data.patches[start : start + 128]).to(device)).cpu()
            for start in range(0, len(data), 128)
        ]
        image_embeds = torch.cat(chunks)
    else:
        image_embeds = model.encode_image(features=features.to(device)).cpu()
    expression = torch.from_numpy(data.expression)
    tensors = {
        "image_embeds": image_embeds.contiguous(),
        "expression_embeds": model.encode_expression(expression.to(device)).cpu().contiguous(),
        "expression": expression.contiguous(),
    }
    path = run_dir / REFERENCE_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"samples": ",".join(sorted(set(data.spots["sample"])))})
    tmp.replace(path)
    return path
