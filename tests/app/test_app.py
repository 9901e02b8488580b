"""The Streamlit app through AppTest, on a real sample and the committed demo model."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "models" / "demo"
TIMEOUT = 180


@pytest.fixture
def app_env(monkeypatch, shared_data_dir, shared_weights_dir, tmp_path):
    if not (DEMO_MODEL / "ldm" / "model.safetensors").is_file():
        pytest.skip(f"demo model missing: {DEMO_MODEL}")
    monkeypatch.setenv("STDIFF_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("STDIFF_WEIGHTS_DIR", str(shared_weights_dir))
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(DEMO_MODEL))
    monkeypatch.setenv("STDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STDIFF_OFFLINE", "1")
    monkeypatch.chdir(ROOT)


def open_app() -> AppTest:
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    return app.run()


def select_sample(app: AppTest, name: str) -> AppTest:
    app.sidebar.selectbox(key="sidebar_sample").select(name).run()
    return app


def test_tissue_page_shows_generated_patches(app_env):
    app = select_sample(open_app(), "her2st-C6")
    assert not app.exception
    spot_box = app.selectbox(key="tissue_spot")
    barcode = spot_box.options[5]
    spot_box.select(barcode).run()
    assert not app.exception
    images = app.get("imgs")
    assert images, "no patches shown"
    captions = [image.proto.imgs[i].caption for image in images for i in range(len(image.proto.imgs))]
    assert captions.count("Real") == 1
    assert sum(caption.startswith("Generated") for caption in captions) >= 2
    metrics = app.dataframe[0].value
    assert set(metrics["metric"]) >= {"LPIPS", "SSIM", "CLIP cosine", "PSNR (dB)"}
    assert metrics["generated 1"].notna().all()
    assert barcode in app.caption[-1].value


def test_tissue_page_patch_count_control(app_env):
    app = select_sample(open_app(), "her2st-C6")
    app.sidebar.slider(key="tissue_n_patches").set_value(3).run()
    assert not app.exception
    captions = [img.caption for image in app.get("imgs") for img in image.proto.imgs]
    assert sum(caption.startswith("Generated") for caption in captions) == 3


def test_heatmaps_page_shared_scale(app_env):
    app = select_sample(open_app(), "her2st-C6")
    app.switch_page("pages/heatmaps.py").run()
    assert not app.exception
    if app.button(key="heatmaps_run") is not None and not app.get("plotly_chart"):
        app.button(key="heatmaps_run").click().run()
        assert not app.exception
    charts = app.get("plotly_chart")
    assert len(charts) == 2
    gene_box = app.selectbox(key="heatmaps_gene")
    gene_box.select(gene_box.options[2]).run()
    assert not app.exception
    assert gene_box.options[2] in app.metric[0].label


def test_metrics_page_lists_baselines(app_env):
    app = open_app()
    app.switch_page("pages/metrics.py").run()
    assert not app.exception
    if not (DEMO_MODEL / "evaluation" / "metrics.json").is_file():
        assert "No evaluation" in app.info[0].value
        return
    methods = set(app.dataframe[0].value["method"])
    assert {"stdiff", "random_train_patch", "nearest_expression_patch"} <= methods


def test_app_without_model_explains(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(tmp_path / "no-model"))
    app = open_app()
    assert not app.exception
    assert any("no-model" in warning.value for warning in app.sidebar.warning)
    assert "Load a trained model" in app.info[0].value


def test_app_without_samples_explains(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("STDIFF_DATA_DIR", str(tmp_path / "empty"))
    app = open_app()
    assert not app.exception
    assert "No samples found" in app.info[0].value
