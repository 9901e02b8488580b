"""Tests for stdiff.models.ldm: latent standardisation, conditioning and DDIM sampling with guidance."""

from __future__ import annotations

import pytest
import torch

from stdiff.models.ldm import ConditionalLdm, LdmConfig

COND_DIM = 16
LATENT_SIZE = 4
SHAPE = (2, 32, LATENT_SIZE, LATENT_SIZE)


@pytest.fixture(scope="module")
def model() -> ConditionalLdm:
    torch.manual_seed(0)
    model = ConditionalLdm(LdmConfig(cond_dim=COND_DIM, latent_size=LATENT_SIZE, block_out_channels=(32, 64)))
    generator = torch.Generator().manual_seed(1)
    model.set_latent_statistics(torch.randn(8, 32, LATENT_SIZE, LATENT_SIZE, generator=generator) * 2 + 0.5)
    with torch.no_grad():
        model.null_cond.normal_(generator=generator)
    return model.eval()


def inputs(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, COND_DIM, generator=generator), torch.randn(SHAPE, generator=generator)


def test_forward_predicts_noise_shape(model):
    cond, sample = inputs()

    with torch.no_grad():
        noise_pred = model(sample, torch.tensor([1, 999]), cond)

    assert noise_pred.shape == SHAPE
    assert torch.isfinite(noise_pred).all()


def test_null_condition_tokens(model):
    cond, _ = inputs()

    null_states = model.encoder_states(None, 3)
    cond_states = model.encoder_states(cond, 2)

    assert null_states.shape == (3, model.config.cond_tokens, model.config.cross_attention_dim)
    assert cond_states.shape == (2, model.config.cond_tokens, model.config.cross_attention_dim)
    assert torch.equal(null_states[0], null_states[2])
    torch.testing.assert_close(null_states[:1], model.encoder_states(model.null_cond[None], 1))


def test_latent_statistics_round_trip(model):
    latents = torch.randn(5, 32, LATENT_SIZE, LATENT_SIZE) * 3 - 1
    fresh = ConditionalLdm(LdmConfig(cond_dim=COND_DIM, latent_size=LATENT_SIZE, block_out_channels=(32, 64)))

    fresh.set_latent_statistics(latents)
    standardized = fresh.to_model_space(latents)

    torch.testing.assert_close(standardized.mean(dim=(0, 2, 3)), torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardized.std(dim=(0, 2, 3)), torch.ones(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(fresh.to_latent_space(standardized), latents, atol=1e-5, rtol=1e-5)


def test_sample_shape_and_determinism(model):
    cond, noise = inputs()

    first = model.sample(cond, num_inference_steps=3, noise=noise)
    second = model.sample(cond, num_inference_steps=3, noise=noise.clone())
    generated = model.sample(cond, num_inference_steps=3, generator=torch.Generator().manual_seed(3))
    generated_again = model.sample(cond, num_inference_steps=3, generator=torch.Generator().manual_seed(3))

    assert first.shape == SHAPE
    assert torch.equal(first, second)
    assert torch.equal(generated, generated_again)
    assert not torch.equal(first, generated)


def test_guidance_scale_one_ignores_null_condition(model):
    cond, noise = inputs()
    changed = ConditionalLdm(model.config)
    changed.load_state_dict(model.state_dict())
    changed.eval()
    with torch.no_grad():
        changed.null_cond.add_(5.0)

    assert torch.equal(model.sample(cond, num_inference_steps=2, guidance_scale=1.0, noise=noise),
                       changed.sample(cond, num_inference_steps=2, guidance_scale=1.0, noise=noise))
    assert not torch.allclose(model.sample(cond, num_inference_steps=2, guidance_scale=3.0, noise=noise),
                              changed.sample(cond, num_inference_steps=2, guidance_scale=3.0, noise=noise))


def test_guidance_scale_zero_ignores_condition(model):
    cond, noise = inputs()
    other_cond, _ = inputs(seed=9)

    first = model.sample(cond, num_inference_steps=2, guidance_scale=0.0, noise=noise)
    second = model.sample(other_cond, num_inference_steps=2, guidance_scale=0.0, noise=noise)

    torch.testing.assert_close(first, second)


def test_init_latents_with_low_strength_stay_close(model):
    cond, noise = inputs()
    init = model.to_latent_space(torch.randn(SHAPE, generator=torch.Generator().manual_seed(4)))

    from_init = model.sample(cond, num_inference_steps=10, init_latents=init, strength=0.2, noise=noise)
    from_noise = model.sample(cond, num_inference_steps=10, init_latents=init, strength=1.0, noise=noise)

    assert from_init.shape == SHAPE
    # Strength 0.2 keeps the last 2 of 10 DDIM steps, starting at timestep 100 where little noise is added.
    distance_from_init = (model.to_model_space(from_init) - model.to_model_space(init)).abs().mean()
    distance_from_noise = (model.to_model_space(from_noise) - model.to_model_space(init)).abs().mean()
    assert distance_from_init < 0.5 * distance_from_noise


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5])
def test_sample_rejects_invalid_strength(model, strength):
    cond, _ = inputs()

    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        model.sample(cond, num_inference_steps=2, strength=strength)


def test_sample_rejects_wrong_noise_shape(model):
    cond, _ = inputs()

    with pytest.raises(ValueError, match=r"noise must have shape \(2, 32, 4, 4\), got \(2, 32, 8, 8\)"):
        model.sample(cond, num_inference_steps=2, noise=torch.zeros(2, 32, 8, 8))


def test_schedulers_share_config(model):
    training = model.training_scheduler()
    sampling = model.sampling_scheduler()

    assert training.config.num_train_timesteps == sampling.config.num_train_timesteps == 1000
    assert training.config.beta_schedule == sampling.config.beta_schedule == "squaredcos_cap_v2"
    torch.testing.assert_close(training.alphas_cumprod, sampling.alphas_cumprod)


@pytest.mark.parametrize("clip_range", [2.5, 1.0])
def test_sample_clamps_predicted_latents(clip_range):
    torch.manual_seed(0)
    config = LdmConfig(cond_dim=8, latent_channels=4, latent_size=8, block_out_channels=(32, 64),
                       cross_attention_dim=16, sample_clip_range=clip_range)
    model = ConditionalLdm(config).eval()
    cond = torch.randn(3, 8)

    sample = model.sample(cond, num_inference_steps=10, guidance_scale=3.0, generator=torch.Generator().manual_seed(1))

    spread = model.to_model_space(sample).abs().max().item()
    assert spread <= clip_range * 1.01 + 0.05


def test_sample_without_clamp_drifts():
    """An untrained model without the clamp leaves the data range: the clamp is what keeps samples in it."""
    torch.manual_seed(0)
    config = LdmConfig(cond_dim=8, latent_channels=4, latent_size=8, block_out_channels=(32, 64),
                       cross_attention_dim=16, sample_clip_range=0.0)
    model = ConditionalLdm(config).eval()

    sample = model.sample(torch.randn(3, 8), num_inference_steps=10, generator=torch.Generator().manual_seed(1))

    assert model.to_model_space(sample).abs().max().item() > 2.6
