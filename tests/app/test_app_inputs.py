"""Bad samples in the app: a plain message on the page, and the other samples stay usable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def copy_sample(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("original", "tissue_fullres_image.jpg"))
    return target


@pytest.fixture
def data_with_broken_samples(tmp_path, shared_data_dir, shared_weights_dir, monkeypatch):
    source = shared_data_dir / "her2st-C2"
    if not source.is_dir():
        pytest.skip(f"real sample missing: {source}")
    data = tmp_path / "data"
    copy_sample(source, data / "a-good")
    broken = copy_sample(source, data / "b-no-scalefactors")
    (broken / "spatial" / "scalefactors_json.json").unlink()
    broken = copy_sample(source, data / "c-bad-positions")
    positions = broken / "spatial" / "tissue_positions_list.csv"
    positions.write_text(positions.read_text().replace(",", ";"))
    monkeypatch.setenv("STDIFF_DATA_DIR", str(data))
    monkeypatch.setenv("STDIFF_WEIGHTS_DIR", str(shared_weights_dir))
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(tmp_path / "no-model"))
    monkeypatch.setenv("STDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STDIFF_OFFLINE", "1")
    return data


@pytest.mark.parametrize("broken", ["b-no-scalefactors", "c-bad-positions"])
def test_broken_sample_shows_message(data_with_broken_samples, broken):
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not app.exception
    app.sidebar.selectbox(key="sidebar_sample").select(broken).run()
    assert not app.exception
    assert len(app.error) == 1
    message = app.error[0].value
    assert broken in message
    assert "spatial" in message

    app.sidebar.selectbox(key="sidebar_sample").select("a-good").run()
    assert not app.exception
    assert not app.error
    assert app.title[0].value == "Tissue"
