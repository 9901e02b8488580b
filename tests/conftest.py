"""Shared fixtures: the real-data and pretrained-weights folders next to the project.

``STDIFF_DATA_DIR`` and ``STDIFF_WEIGHTS_DIR`` override the defaults ``../shared/data`` and
``../shared/weights``, resolved from this file's location. Tests that need a folder that is absent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent


def _shared_dir(env_var: str, default: Path) -> tuple[Path, str | None]:
    """Return the folder and, when it is absent or empty, the reason to skip."""
    folder = Path(os.environ[env_var]).expanduser() if os.environ.get(env_var) else default
    if not folder.is_dir():
        return folder, f"{folder} not found; set {env_var} to run tests on real files"
    if not any(folder.iterdir()):
        return folder, f"{folder} is empty; set {env_var} to a folder with real files"
    return folder, None


def shared_data_path() -> tuple[Path, str | None]:
    """Return the shared data folder and the reason to skip, or None when it can be used."""
    return _shared_dir("STDIFF_DATA_DIR", PROJECT_DIR.parent / "shared" / "data")


def shared_weights_path() -> tuple[Path, str | None]:
    """Return the shared weights folder and the reason to skip, or None when it can be used."""
    return _shared_dir("STDIFF_WEIGHTS_DIR", PROJECT_DIR.parent / "shared" / "weights")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Folder of real Space Ranger samples, one subfolder each."""
    folder, skip_reason = shared_data_path()
    if skip_reason:
        pytest.skip(skip_reason)
    return folder


@pytest.fixture(scope="session")
def shared_weights_dir() -> Path:
    """Folder of pretrained weights, one subfolder each."""
    folder, skip_reason = shared_weights_path()
    if skip_reason:
        pytest.skip(skip_reason)
    return folder


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the ``shared_sample_dir`` argument over the real samples in the shared data folder."""
    if "shared_sample_dir" not in metafunc.fixturenames:
        return
    folder, skip_reason = shared_data_path()
    samples = []
    if skip_reason is None:
        from stdiff.io import list_samples  # imported here so that other tests do not depend on stdiff.io

        samples = list_samples(folder)
        skip_reason = f"no Space Ranger samples in {folder}"
    if samples:
        metafunc.parametrize("shared_sample_dir", samples, ids=[sample.name for sample in samples])
    else:
        metafunc.parametrize("shared_sample_dir", [pytest.param(None, marks=pytest.mark.skip(reason=skip_reason))])


@pytest.fixture
def offline(monkeypatch, shared_weights_dir):
    """Forbid downloads and read pretrained weights from the shared weights folder."""
    from _helpers import offline_env

    offline_env(monkeypatch, shared_weights_dir)
