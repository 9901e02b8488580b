"""Tests for stdiff.models.clip: both towers, the frozen backbone and the logit scale."""

from __future__ import annotations

import math

import pytest
import torch

from stdiff.models.clip import ClipConfig, ClipModel

N_GENES = 12
OPENCLIP_TOWER = "openclip:ViT-S-32-alt"  # a small ViT from open_clip's model list, built with random weights


@pytest.fixture(scope="module")
def model() -> ClipModel:
    torch.manual_seed(0)
    return ClipModel(ClipConfig(n_genes=N_GENES, embed_dim=16, hidden_dim=32, image_size=32)).eval()


def test_encoders_return_unit_vectors(model):
    torch.manual_seed(1)
    images = torch.rand(3, 3, 32, 32)
    expression = torch.rand(3, N_GENES) * 5

    image_embeds = model.encode_image(images)
    expression_embeds = model.encode_expression(expression)

    assert image_embeds.shape == (3, 16)
    assert expression_embeds.shape == (3, 16)
    torch.testing.assert_close(image_embeds.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(expression_embeds.norm(dim=-1), torch.ones(3))


def test_forward_returns_embeddings_and_scale(model):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 32)
    expression = torch.rand(2, N_GENES)

    image_embeds, expression_embeds, scale = model(expression, images)

    torch.testing.assert_close(image_embeds, model.encode_image(images))
    torch.testing.assert_close(expression_embeds, model.encode_expression(expression))
    torch.testing.assert_close(scale, torch.tensor(1 / 0.07))


def test_precomputed_features_match_images(model):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 32, 32)

    with torch.no_grad():
        features = model.image.features(images)

    assert features.shape == (2, 1280)
    torch.testing.assert_close(model.encode_image(features=features), model.encode_image(images))


def test_frozen_backbone_stays_in_eval_mode():
    model = ClipModel(ClipConfig(n_genes=N_GENES, embed_dim=16, hidden_dim=32, image_size=32))

    model.train()

    assert model.image.head.training
    assert not model.image.backbone.training
    assert all(not parameter.requires_grad for parameter in model.image.backbone.parameters())
    assert all(parameter.requires_grad for parameter in model.image.head.parameters())
    assert model.logit_scale.requires_grad


def test_unfrozen_backbone_trains():
    model = ClipModel(ClipConfig(n_genes=N_GENES, embed_dim=16, hidden_dim=32, image_size=32,
                                 freeze_backbone=False))

    model.train()

    assert model.image.backbone.training
    assert all(parameter.requires_grad for parameter in model.image.backbone.parameters())
    assert any(key.startswith("image.backbone.") for key in model.trainable_state_dict())


def test_trainable_state_dict_drops_frozen_backbone(model):
    state = model.trainable_state_dict()

    assert not any(key.startswith("image.backbone.") for key in state)
    assert "logit_scale" in state
    assert "expression.gene_mean" in state
    assert any(key.startswith("image.head.") for key in state)


def test_scale_is_clamped_at_100(model):
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000))
    try:
        assert model.scale().item() == pytest.approx(100.0)
    finally:
        with torch.no_grad():
            model.logit_scale.fill_(model.config.init_logit_scale)


def test_expression_standardization():
    model = ClipModel(ClipConfig(n_genes=3, embed_dim=8, hidden_dim=16, image_size=32))
    expression = torch.tensor([[1.0, 2.0, 5.0], [3.0, 2.0, 7.0], [5.0, 2.0, 9.0]])

    model.expression.set_standardization(expression)

    torch.testing.assert_close(model.expression.gene_mean, torch.tensor([3.0, 2.0, 7.0]))
    # A gene that never changes gets the floor of 1e-3, so standardising it cannot divide by zero.
    torch.testing.assert_close(model.expression.gene_std, torch.tensor([2.0, 1e-3, 2.0]))
    assert torch.isfinite(model.eval().encode_expression(expression)).all()


def test_unknown_image_tower():
    with pytest.raises(ValueError, match="Unknown image_tower 'resnet'.*efficientnet_lite0"):
        ClipModel(ClipConfig(n_genes=N_GENES, image_tower="resnet"))


def test_openclip_tower_shapes():
    pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = ClipModel(ClipConfig(n_genes=N_GENES, embed_dim=16, hidden_dim=32, image_size=32,
                                 image_tower=OPENCLIP_TOWER, freeze_backbone=False)).eval()
    images = torch.rand(2, 3, 32, 32)

    embeds = model.encode_image(images)

    assert embeds.shape == (2, 16)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))
