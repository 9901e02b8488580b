"""Few-step training of the CLIP and diffusion models on a small real run: loss, checkpoints and resuming."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from _helpers import (
    CLIP_STEPS,
    LDM_STEPS,
    N_GENES,
    RESOLUTION,
    copy_run,
    file_times,
    prepared_run,
    small_clip_config,
    small_ldm_config,
    trained_run,
)
from stdiff.constants import CONFIG_NAME, WEIGHTS_NAME
from stdiff.models.clip import ClipConfig, ClipModel
from stdiff.models.ldm import ConditionalLdm
from stdiff.prepare import load_samples, read_prepare_config
from stdiff.training.clip import CLIP_DIR, REFERENCE_NAME, train_clip
from stdiff.training.common import (
    N_DIHEDRAL,
    STATE_NAME,
    dihedral,
    load_training_state,
    patches_to_tensor,
    save_training_state,
)
from stdiff.training.ldm import LATENT_CACHE, LDM_DIR, train_ldm


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data_dir, shared_weights_dir):
    return trained_run(tmp_path_factory, shared_data_dir, shared_weights_dir)


@pytest.fixture(scope="module")
def train_data(run):
    config, _ = read_prepare_config(run)
    return load_samples(run, config.train_samples)


def saved_step(folder) -> int:
    return json.loads((folder / CONFIG_NAME).read_text())["extra"]["step"]


@torch.no_grad()
def contrastive_loss(model: ClipModel, data) -> float:
    """Symmetric CLIP loss of all training spots in one batch, unrotated, without dropout."""
    from open_clip.loss import ClipLoss

    model.eval()
    images = patches_to_tensor(np.asarray(data.patches))
    expression = torch.from_numpy(data.expression)
    return ClipLoss()(*model(expression, images)).item()


@torch.no_grad()
def denoising_loss(model: ConditionalLdm, latents: torch.Tensor, cond: torch.Tensor) -> float:
    """Noise-prediction MSE on fixed noise and timesteps, averaged over eight draws of each spot."""
    model.eval()
    scheduler = model.training_scheduler()
    generator = torch.Generator().manual_seed(123)
    losses = []
    for _ in range(8):
        clean = model.to_model_space(latents)
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(clean),), generator=generator)
        noise_pred = model(scheduler.add_noise(clean, noise, timesteps), timesteps, cond)
        losses.append(F.mse_loss(noise_pred, noise).item())
    return float(np.mean(losses))


def test_dihedral_gives_eight_distinct_views():
    image = torch.arange(12.0).view(1, 3, 4)[:, :, :3].expand(2, 3, 3).clone()

    views = [dihedral(image, index) for index in range(N_DIHEDRAL)]

    assert torch.equal(views[0], image)
    assert len({tuple(view.flatten().tolist()) for view in views}) == N_DIHEDRAL
    with pytest.raises(ValueError, match="got 8"):
        dihedral(image, N_DIHEDRAL)


def test_patches_to_tensor_scales_to_unit_range():
    patches = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    patches[0, 1, 2] = (255, 0, 51)

    tensor = patches_to_tensor(patches)

    assert tensor.shape == (2, 3, 4, 4)
    assert tensor.dtype == torch.float32
    torch.testing.assert_close(tensor[0, :, 1, 2], torch.tensor([1.0, 0.0, 0.2]))


def test_training_state_round_trip(tmp_path):
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    parameter.sum().backward()
    optimizer.step()

    save_training_state(tmp_path, optimizer=optimizer, step=4, extra={"note": torch.tensor([1.0])})
    state = load_training_state(tmp_path)

    assert state["step"] == 4
    assert torch.equal(state["extra"]["note"], torch.tensor([1.0]))
    assert state["optimizer"]["state"][0]["step"] == 1
    assert [path.name for path in tmp_path.iterdir()] == [STATE_NAME]
    assert load_training_state(tmp_path / "missing") is None


@pytest.mark.slow
def test_clip_checkpoint_files(run, train_data):
    folder = run / CLIP_DIR

    for name in (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME):
        assert (folder / name).is_file(), f"{folder / name} missing"
    assert saved_step(folder) == CLIP_STEPS
    payload = json.loads((folder / CONFIG_NAME).read_text())
    assert payload["extra"]["train_config"]["embed_dim"] == 32
    assert payload["config"]["n_genes"] == N_GENES
    assert payload["config"]["image_size"] == RESOLUTION


@pytest.mark.slow
def test_clip_reference_file(run, train_data):
    reference = load_file(str(run / REFERENCE_NAME))
    model = ClipModel.from_pretrained(run / CLIP_DIR)

    assert reference["image_embeds"].shape == (len(train_data), 32)
    assert reference["expression_embeds"].shape == (len(train_data), 32)
    assert torch.equal(reference["expression"], torch.from_numpy(train_data.expression))
    with torch.no_grad():
        expected = model.encode_image(patches_to_tensor(np.asarray(train_data.patches[:4])))
    torch.testing.assert_close(reference["image_embeds"][:4], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_clip_training_lowers_loss(run, train_data):
    config, _ = read_prepare_config(run)
    torch.manual_seed(0)
    untrained = ClipModel(ClipConfig(n_genes=N_GENES, embed_dim=32, hidden_dim=64, image_size=config.resolution))
    untrained.expression.set_standardization(torch.from_numpy(train_data.expression))
    trained = ClipModel.from_pretrained(run / CLIP_DIR)

    before = contrastive_loss(untrained, train_data)
    after = contrastive_loss(trained, train_data)

    assert after < before - 0.5, (before, after)


@pytest.mark.slow
def test_ldm_checkpoint_files(run, train_data):
    folder = run / LDM_DIR

    for path in (folder / CONFIG_NAME, folder / WEIGHTS_NAME, folder / STATE_NAME,
                 folder / "raw" / CONFIG_NAME, folder / "raw" / WEIGHTS_NAME):
        assert path.is_file(), f"{path} missing"
    assert saved_step(folder) == LDM_STEPS
    assert saved_step(folder / "raw") == LDM_STEPS
    latents = np.load(run / LATENT_CACHE, mmap_mode="r")
    assert latents.dtype == np.float16
    assert latents.shape == (N_DIHEDRAL, len(train_data), 32, RESOLUTION // 8, RESOLUTION // 8)
    ema = ConditionalLdm.from_pretrained(folder)
    raw = ConditionalLdm.from_pretrained(folder / "raw")
    assert ema.config.block_out_channels == (32, 64)
    assert ema.config.latent_size == RESOLUTION // 8
    assert not torch.equal(ema.null_cond, raw.null_cond)


@pytest.mark.slow
def test_ldm_training_lowers_loss(run, train_data):
    from stdiff.training.ldm import expression_condition

    latents = torch.from_numpy(np.load(run / LATENT_CACHE)[0]).float()
    cond = expression_condition(ClipModel.from_pretrained(run / CLIP_DIR), train_data.expression, "cpu")
    trained = ConditionalLdm.from_pretrained(run / LDM_DIR / "raw")
    averaged = ConditionalLdm.from_pretrained(run / LDM_DIR)
    torch.manual_seed(0)
    untrained = ConditionalLdm(trained.config)
    untrained.set_latent_statistics(latents)

    before = denoising_loss(untrained, latents, cond)
    after = denoising_loss(trained, latents, cond)
    after_ema = denoising_loss(averaged, latents, cond)

    # Twenty steps only start to learn: the loss falls by a few hundredths from about 1.
    assert after < before - 0.03, (before, after)
    assert after_ema < before - 0.03, (before, after_ema)
    torch.testing.assert_close(trained.latent_mean, untrained.latent_mean)


@pytest.mark.slow
def test_clip_resume(run, tmp_path, offline, caplog):
    copy = copy_run(run, tmp_path)
    folder = copy / CLIP_DIR
    before = file_times(folder)

    with caplog.at_level(logging.INFO, logger="stdiff.training.clip"):
        train_clip(copy, small_clip_config(), progress=False)
    assert file_times(folder) == before
    assert f"already done ({CLIP_STEPS} steps)" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stdiff.training.clip"):
        train_clip(copy, small_clip_config(steps=CLIP_STEPS + 5), progress=False)
    assert f"Resuming CLIP training at step {CLIP_STEPS}" in caplog.text
    assert saved_step(folder) == CLIP_STEPS + 5
    assert load_training_state(folder)["step"] == CLIP_STEPS + 5
    resumed = load_file(str(folder / WEIGHTS_NAME))
    original = load_file(str(run / CLIP_DIR / WEIGHTS_NAME))
    assert not torch.equal(resumed["logit_scale"], original["logit_scale"])


@pytest.mark.slow
def test_clip_resume_other_settings_rejected(run, tmp_path, offline):
    copy = copy_run(run, tmp_path)

    with pytest.raises(ValueError, match="contains a model trained with other settings"):
        train_clip(copy, small_clip_config(steps=CLIP_STEPS + 5, embed_dim=16), progress=False)


@pytest.mark.slow
def test_ldm_resume(run, tmp_path, offline, caplog):
    copy = copy_run(run, tmp_path)
    folder = copy / LDM_DIR
    before = file_times(folder)

    with caplog.at_level(logging.INFO, logger="stdiff.training.ldm"):
        train_ldm(copy, small_ldm_config(), progress=False)
    assert file_times(folder) == before
    assert f"already done ({LDM_STEPS} steps)" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stdiff.training.ldm"):
        train_ldm(copy, small_ldm_config(steps=LDM_STEPS + 3), progress=False)
    assert f"Resuming LDM training at step {LDM_STEPS}" in caplog.text
    assert saved_step(folder) == LDM_STEPS + 3
    assert saved_step(folder / "raw") == LDM_STEPS + 3
    ema_state = load_training_state(folder)["extra"]["ema"]
    assert ema_state["optimization_step"] == LDM_STEPS + 3


@pytest.mark.slow
def test_ldm_needs_clip(tmp_path, tmp_path_factory, shared_data_dir, offline):
    copy = copy_run(prepared_run(tmp_path_factory, shared_data_dir), tmp_path)

    with pytest.raises(FileNotFoundError, match=f"No CLIP model in {copy / CLIP_DIR}"):
        train_ldm(copy, small_ldm_config(), progress=False)


def test_clip_needs_prepared_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"No prepare.json in {tmp_path}"):
        train_clip(tmp_path, small_clip_config(), progress=False)
