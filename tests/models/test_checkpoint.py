"""Tests for stdiff.models.checkpoint: save and load round trips, strict keys and atomic folder writes."""

from __future__ import annotations

import json

import pytest
import torch

from stdiff.constants import CONFIG_NAME, WEIGHTS_NAME
from stdiff.models.checkpoint import (
    read_config,
    read_state_dict,
    save_checkpoint,
    write_folder_atomically,
)
from stdiff.models.clip import ClipConfig, ClipModel
from stdiff.models.ldm import ConditionalLdm, LdmConfig

N_GENES = 12
OPENCLIP_TOWER = "openclip:ViT-S-32-alt"  # a small ViT from open_clip's model list


def small_clip(**changes) -> ClipModel:
    values = dict(n_genes=N_GENES, embed_dim=16, hidden_dim=32, image_size=32)
    values.update(changes)
    model = ClipModel(ClipConfig(**values))
    # Move every saved value away from its initial one, so a load that skips a tensor shows up.
    model.expression.set_standardization(torch.rand(20, N_GENES) * 4)
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
        for parameter in model.image.head.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def small_ldm() -> ConditionalLdm:
    model = ConditionalLdm(LdmConfig(cond_dim=16, latent_size=4, block_out_channels=(32, 64)))
    model.set_latent_statistics(torch.randn(6, 32, 4, 4) * 2 + 1)
    with torch.no_grad():
        model.null_cond.normal_()
    return model.eval()


def clip_outputs(model: ClipModel) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(3, 3, 32, 32, generator=generator)
    expression = torch.rand(3, N_GENES, generator=generator) * 5
    with torch.no_grad():
        return model(expression, images)


def ldm_output(model: ConditionalLdm) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    sample = torch.randn(2, 32, 4, 4, generator=generator)
    cond = torch.randn(2, 16, generator=generator)
    with torch.no_grad():
        return model(sample, torch.tensor([10, 700]), cond)


def assert_same_outputs(first, second) -> None:
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_clip_round_trip_frozen_efficientnet(tmp_path):
    torch.manual_seed(0)
    model = small_clip()

    model.save_pretrained(tmp_path / "clip", extra={"step": 7})
    loaded = ClipModel.from_pretrained(tmp_path / "clip")

    assert loaded.config == model.config
    assert not loaded.training
    assert_same_outputs(clip_outputs(loaded), clip_outputs(model))
    saved = read_state_dict(tmp_path / "clip")
    assert not any(key.startswith("image.backbone.") for key in saved)
    assert read_config(tmp_path / "clip", ClipConfig)[1] == {"step": 7}


def test_clip_round_trip_trainable_efficientnet(tmp_path):
    torch.manual_seed(0)
    model = small_clip(freeze_backbone=False)
    with torch.no_grad():
        model.image.backbone._conv_stem.weight.mul_(1.5)

    model.save_pretrained(tmp_path / "clip")
    loaded = ClipModel.from_pretrained(tmp_path / "clip")

    assert_same_outputs(clip_outputs(loaded), clip_outputs(model))


@pytest.mark.parametrize("freeze_backbone", [False, True])
def test_clip_round_trip_openclip(tmp_path, freeze_backbone):
    pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = small_clip(image_tower=OPENCLIP_TOWER, freeze_backbone=freeze_backbone)

    model.save_pretrained(tmp_path / "clip")
    torch.manual_seed(1)  # a backbone that is not restored from the file would come out different
    loaded = ClipModel.from_pretrained(tmp_path / "clip")

    assert_same_outputs(clip_outputs(loaded), clip_outputs(model))


def test_ldm_round_trip(tmp_path):
    torch.manual_seed(0)
    model = small_ldm()

    model.save_pretrained(tmp_path / "ldm")
    torch.manual_seed(1)
    loaded = ConditionalLdm.from_pretrained(tmp_path / "ldm")

    assert loaded.config == model.config
    assert loaded.config.block_out_channels == (32, 64)
    assert torch.equal(loaded.latent_mean, model.latent_mean)
    assert torch.equal(loaded.latent_std, model.latent_std)
    assert torch.equal(loaded.null_cond, model.null_cond)
    assert torch.equal(ldm_output(loaded), ldm_output(model))


def test_saved_folder_layout(tmp_path):
    torch.manual_seed(0)
    small_ldm().save_pretrained(tmp_path / "ldm", extra={"step": 3})

    assert sorted(path.name for path in (tmp_path / "ldm").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    payload = json.loads((tmp_path / "ldm" / CONFIG_NAME).read_text())
    assert payload["class"] == "LdmConfig"
    assert payload["config"]["block_out_channels"] == [32, 64]
    assert payload["extra"] == {"step": 3}
    assert [path.name for path in tmp_path.iterdir()] == ["ldm"]


def test_missing_key_rejected(tmp_path):
    torch.manual_seed(0)
    model = small_ldm()
    state = model.state_dict()
    del state["null_cond"]
    save_checkpoint(tmp_path / "ldm", config=model.config, state_dict=state)

    with pytest.raises(ValueError, match=r"missing \['null_cond'\] \(1 in all\)"):
        ConditionalLdm.from_pretrained(tmp_path / "ldm")


def test_extra_key_rejected(tmp_path):
    torch.manual_seed(0)
    model = small_clip()
    state = model.trainable_state_dict()
    state["image.head.extra"] = torch.zeros(2)
    save_checkpoint(tmp_path / "clip", config=model.config, state_dict=state)

    with pytest.raises(ValueError, match=r"unexpected \['image.head.extra'\] \(1 in all\)"):
        ClipModel.from_pretrained(tmp_path / "clip")


def test_frozen_backbone_keys_rejected_when_saved(tmp_path):
    torch.manual_seed(0)
    model = small_clip()
    save_checkpoint(tmp_path / "clip", config=model.config, state_dict=model.state_dict())

    with pytest.raises(ValueError, match="unexpected"):
        ClipModel.from_pretrained(tmp_path / "clip")


def test_wrong_config_class_rejected(tmp_path):
    torch.manual_seed(0)
    small_clip().save_pretrained(tmp_path / "clip")

    with pytest.raises(ValueError, match="contains a 'ClipConfig' checkpoint, expected 'LdmConfig'"):
        ConditionalLdm.from_pretrained(tmp_path / "clip")


def test_unknown_config_field_rejected(tmp_path):
    torch.manual_seed(0)
    small_ldm().save_pretrained(tmp_path / "ldm")
    path = tmp_path / "ldm" / CONFIG_NAME
    payload = json.loads(path.read_text())
    payload["config"]["future_option"] = 1
    path.write_text(json.dumps(payload))

    with pytest.raises(ValueError, match=r"unknown config fields \['future_option'\]"):
        read_config(tmp_path / "ldm", LdmConfig)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"No {CONFIG_NAME} in {tmp_path}"):
        read_config(tmp_path, LdmConfig)
    with pytest.raises(FileNotFoundError, match=f"No {WEIGHTS_NAME} in {tmp_path}"):
        read_state_dict(tmp_path)


def test_interrupted_write_keeps_old_folder(tmp_path):
    torch.manual_seed(0)
    model = small_ldm()
    folder = tmp_path / "ldm"
    model.save_pretrained(folder, extra={"step": 1})
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def failing_writer(tmp):
        (tmp / CONFIG_NAME).write_text("{half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_atomically(folder, failing_writer)

    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["ldm"]
    assert torch.equal(ldm_output(ConditionalLdm.from_pretrained(folder)), ldm_output(model))


def test_write_replaces_folder(tmp_path):
    folder = tmp_path / "out"
    write_folder_atomically(folder, lambda tmp: (tmp / "old.txt").write_text("old"))

    write_folder_atomically(folder, lambda tmp: (tmp / "new.txt").write_text("new"))

    assert [path.name for path in folder.iterdir()] == ["new.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
