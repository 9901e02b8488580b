"""Small prepared and trained runs on real her2st samples, shared by the model, training and pipeline tests.

The runs are built once per test session and cached here, because training takes most of the test time.
Tests that change a run work on a copy (:func:`copy_run`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

TRAIN_SAMPLE = "her2st-C2"
EVAL_SAMPLE = "her2st-B4"
N_TRAIN_SPOTS = 48  # training spots kept by the min_counts threshold (more on ties)
RESOLUTION = 32  # patch side in model pixels, so latents are 4 x 4
PATCH_SIZE = 256  # crop side in full-resolution pixels
N_GENES = 24
CLIP_STEPS = 30
LDM_STEPS = 20

_CACHE: dict[str, Path] = {}


def require_samples(data_dir: Path, *names: str) -> None:
    """Skip the calling test when one of the named sample folders is missing from ``data_dir``."""
    for name in names:
        if not (data_dir / name).is_dir():
            pytest.skip(f"sample {name} not found in {data_dir}; the test needs the her2st samples")


def offline_env(monkeypatch: pytest.MonkeyPatch, weights_dir: Path) -> None:
    """Point stdiff at the shared weights folder and forbid downloads."""
    monkeypatch.setenv("STDIFF_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("STDIFF_OFFLINE", "1")


def train_min_counts(data_dir: Path) -> int:
    """Return the UMI threshold that keeps the ``N_TRAIN_SPOTS`` spots of the training sample with most counts."""
    from stdiff.expression import total_counts
    from stdiff.io import read_visium

    counts = np.sort(total_counts(read_visium(data_dir / TRAIN_SAMPLE)))[::-1]
    return int(counts[N_TRAIN_SPOTS - 1])


def small_prepare_config(data_dir: Path, **changes):
    """Return the PrepareConfig of the small test run: one training and one evaluation sample, 32 px patches."""
    from stdiff.prepare import PrepareConfig

    values = dict(
        data_dir=str(data_dir),
        train_samples=(TRAIN_SAMPLE,),
        eval_samples=(EVAL_SAMPLE,),
        patch_size=PATCH_SIZE,
        resolution=RESOLUTION,
        n_genes=N_GENES,
        min_counts=train_min_counts(data_dir),
    )
    values.update(changes)
    return PrepareConfig(**values)


def small_clip_config(**changes):
    """Return a ClipTrainConfig with small heads that trains in seconds on the CPU."""
    from stdiff.training.clip import ClipTrainConfig

    values = dict(steps=CLIP_STEPS, batch_size=32, learning_rate=1e-3, embed_dim=32, hidden_dim=64,
                  checkpoint_every=10)
    values.update(changes)
    return ClipTrainConfig(**values)


def small_ldm_config(**changes):
    """Return an LdmTrainConfig with a two-level U-Net and a short warm-up, so a few steps already learn."""
    from stdiff.training.ldm import LdmTrainConfig

    values = dict(steps=LDM_STEPS, batch_size=16, learning_rate=1e-3, warmup_steps=2, block_out_channels=(32, 64),
                  checkpoint_every=10)
    values.update(changes)
    return LdmTrainConfig(**values)


def prepared_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Return a run folder prepared with :func:`small_prepare_config`; built once per session. Do not modify it."""
    if "prepared" not in _CACHE:
        from stdiff.prepare import prepare

        require_samples(data_dir, TRAIN_SAMPLE, EVAL_SAMPLE)
        run = tmp_path_factory.mktemp("prepared") / "run"
        prepare(run, small_prepare_config(data_dir))
        _CACHE["prepared"] = run
    return _CACHE["prepared"]


def trained_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, weights_dir: Path) -> Path:
    """Return a copy of :func:`prepared_run` with CLIP and LDM trained; built once per session.

    Tests may add reconstructions and evaluations to it, but must copy it before training again.
    """
    if "trained" not in _CACHE:
        from stdiff.training.clip import train_clip
        from stdiff.training.ldm import train_ldm

        run = copy_run(prepared_run(tmp_path_factory, data_dir), tmp_path_factory.mktemp("trained"))
        with pytest.MonkeyPatch.context() as monkeypatch:
            offline_env(monkeypatch, weights_dir)
            train_clip(run, small_clip_config(), progress=False)
            train_ldm(run, small_ldm_config(), progress=False)
        _CACHE["trained"] = run
    return _CACHE["trained"]


def copy_run(run: Path, parent: Path) -> Path:
    """Copy the run folder ``run`` into ``parent`` and return the copy."""
    return Path(shutil.copytree(run, parent / run.name))


def file_times(folder: Path) -> dict[str, int]:
    """Return the modification time in nanoseconds of every file under ``folder``, keyed by relative path."""
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
