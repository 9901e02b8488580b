"""Bad samples in the app: a plain message on the page, and the other samples stay usable."""

from __future__ import annotations

import gzip
import io
import shutil
import sys
import zipfile
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


def zip_sample(source: Path, *, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if path.is_file() and relative.parts[0] != "original" and "fullres" not in path.name:
                archive.write(path, f"outs/{relative.as_posix()}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_uploaded_archive_becomes_a_sample(data_with_broken_samples, shared_data_dir):
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    archive = zip_sample(shared_data_dir / "her2st-C3")
    app.sidebar.get("file_uploader")[0].set_value(("her2st-C3.zip", archive, "application/zip")).run()
    assert not app.exception
    assert not app.error
    sample_box = app.sidebar.selectbox(key="sidebar_sample")
    assert len(sample_box.options) == 4
    assert sample_box.value == sample_box.options[0]
    assert app.title[0].value == "Tissue"


def geo_files(source: Path, prefix: str) -> dict[str, bytes]:
    """A sample's files as GEO serves them: in one folder, prefixed with the accession, the spatial ones gzipped."""
    files = {f"{prefix}_filtered_feature_bc_matrix.h5": (source / "filtered_feature_bc_matrix.h5").read_bytes()}
    for name in ("tissue_positions_list.csv", "scalefactors_json.json", "tissue_hires_image.png"):
        files[f"{prefix}_{name}.gz"] = gzip.compress((source / "spatial" / name).read_bytes())
    return files


def test_flat_geo_data_folder_explains(data_with_broken_samples, shared_data_dir, monkeypatch, tmp_path):
    flat = tmp_path / "GSE1_RAW"
    flat.mkdir()
    for name, data in geo_files(shared_data_dir / "her2st-C3", "GSM2_C3").items():
        (flat / name).write_bytes(data)
    monkeypatch.setenv("STDIFF_DATA_DIR", str(flat))

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()

    assert not app.exception
    assert "No samples found" in app.info[0].value
    assert f"stdiff arrange-geo {flat} --out FOLDER" in app.info[0].value


def test_uploaded_geo_files_become_a_sample(data_with_broken_samples, shared_data_dir):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in geo_files(shared_data_dir / "her2st-C3", "GSM2_C3").items():
            archive.writestr(name, data)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()

    app.sidebar.get("file_uploader")[0].set_value(("GSM2_C3.zip", buffer.getvalue(), "application/zip")).run()

    assert not app.exception
    assert not app.error
    assert app.sidebar.selectbox(key="sidebar_sample").value == "GSM2_C3"
    assert app.title[0].value == "Tissue"


def test_unsafe_archive_is_rejected(data_with_broken_samples, shared_data_dir):
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    archive = zip_sample(shared_data_dir / "her2st-C3", extra={"../escape.txt": b"outside"})
    app.sidebar.get("file_uploader")[0].set_value(("evil.zip", archive, "application/zip")).run()
    assert not app.exception
    errors = [error.value for error in app.sidebar.get("error")]
    assert len(errors) == 1
    assert "evil.zip" in errors[0]
    assert "escape.txt" in errors[0]
    assert app.sidebar.selectbox(key="sidebar_sample").value == "a-good"


def test_every_broken_folder_in_app(tmp_path, shared_data_dir, shared_weights_dir, monkeypatch):
    """Each broken folder of the reader's table: a plain message in the app, then a good sample still loads."""
    sys.path.insert(0, str(ROOT / "tests" / "io"))
    from test_broken import CASES, REAL_SAMPLE, copy_sample as copy_for_case

    source = shared_data_dir / REAL_SAMPLE
    if not source.is_dir():
        pytest.skip(f"real sample missing: {source}")
    data = tmp_path / "data"
    copy_sample(source, data / "0-good")
    for name, case in CASES.items():
        case.mutate(copy_for_case(source, data / name))
    monkeypatch.setenv("STDIFF_DATA_DIR", str(data))
    monkeypatch.setenv("STDIFF_WEIGHTS_DIR", str(shared_weights_dir))
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(tmp_path / "no-model"))
    monkeypatch.setenv("STDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STDIFF_OFFLINE", "1")

    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    listed = set(app.sidebar.selectbox(key="sidebar_sample").options)
    for name, case in CASES.items():
        if name not in listed:
            # Folders without a spatial/ folder or a matrix are not offered as samples at all.
            assert case.outcome == "error", name
            continue
        app.sidebar.selectbox(key="sidebar_sample").select(name).run()
        assert not app.exception, name
        if case.outcome == "error":
            assert len(app.error) == 1, name
            assert name in app.error[0].value, name
        else:
            # The sample reads with a warning. Only patches can still fail, for an image whose header lies about
            # its size, and then the patch grid shows a plain message.
            assert all(error.value.startswith("Could not cut patches") for error in app.error), name
            assert app.title[0].value == "Tissue", name
        app.sidebar.selectbox(key="sidebar_sample").select("0-good").run()
        assert not app.exception, name
        assert not app.error, name
        assert app.title[0].value == "Tissue", name
