"""The Streamlit app through AppTest, on a real sample and the committed demo model."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
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


def shown_captions(app: AppTest) -> list[str]:
    return [caption for image in app.get("image") for caption in image.captions]


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
    captions = shown_captions(app)
    assert captions.count("Real") == 1
    assert sum(caption.startswith("Generated") for caption in captions) >= 2
    metrics = app.dataframe[0].value
    assert set(metrics["metric"]) >= {"LPIPS", "SSIM", "CLIP cosine", "PSNR (dB)"}
    assert metrics["generated 1"].notna().all()
    assert any(barcode in caption.value for caption in app.main.get("caption"))


def test_tissue_page_patch_count_control(app_env):
    app = select_sample(open_app(), "her2st-C6")
    app.sidebar.slider(key="tissue_n_patches").set_value(3).run()
    assert not app.exception
    captions = shown_captions(app)
    assert sum(caption.startswith("Generated") for caption in captions) == 3


def test_tissue_start_from_nearest_expression(app_env, monkeypatch):
    from stdiff.pipeline import StdiffPipeline

    retrievals = []
    original = StdiffPipeline.retrieved_latents

    def recording(self, expression, *, by="clip"):
        retrievals.append(by)
        return original(self, expression, by=by)

    monkeypatch.setattr(StdiffPipeline, "retrieved_latents", recording)
    app = select_sample(open_app(), "her2st-C6")
    from_noise = app.dataframe[0].value

    app.sidebar.radio(key="tissue_start").set_value("Training patch nearest in expression").run()

    assert not app.exception
    assert app.sidebar.slider(key="tissue_strength").value == 0.3
    assert retrievals == ["expression"]
    assert not app.dataframe[0].value.equals(from_noise)
    assert not app.sidebar.warning


def test_tissue_retrieval_on_training_sample_warns(app_env):
    app = select_sample(open_app(), "her2st-C2")

    app.sidebar.radio(key="tissue_start").set_value("Training patch nearest in CLIP space").run()

    assert not app.exception
    assert "her2st-C2 was used to train this model" in app.sidebar.warning[0].value


def test_heatmaps_page_shared_scale(app_env):
    if not (DEMO_MODEL / "reconstructions" / "her2st-C6.npz").is_file():
        pytest.skip("the demo model ships no reconstruction of her2st-C6")
    app = select_sample(open_app(), "her2st-C6")
    app.switch_page("pages/1_Heatmaps.py").run()
    assert not app.exception
    charts = app.get("plotly_chart")
    with np.load(DEMO_MODEL / "reconstructions" / "her2st-C6.npz") as shipped:
        has_metrics = "metric_lpips" in shipped.files
    assert len(charts) == (3 if has_metrics else 2)  # measured, reconstructed, and the metric map
    gene_box = app.selectbox(key="heatmaps_gene")
    gene = gene_box.options[2]
    gene_box.select(gene).run()
    assert not app.exception
    assert gene in app.metric[0].label
    markers = [json.loads(chart.proto.spec)["data"][0]["marker"] for chart in app.get("plotly_chart")[:2]]
    assert markers[0]["cmin"] == markers[1]["cmin"]
    assert markers[0]["cmax"] == markers[1]["cmax"]
    assert markers[0]["cmin"] < markers[0]["cmax"]


def test_heatmaps_reconstruct_button(app_env, monkeypatch, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model, ignore=shutil.ignore_patterns("reconstructions", "evaluation"))
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(model))
    app = select_sample(open_app(), "her2st-C6")
    app.switch_page("pages/1_Heatmaps.py").run()
    assert not app.exception
    assert not app.get("plotly_chart")
    app.slider(key="heatmaps_steps").set_value(5).run()
    app.button(key="heatmaps_run").click().run()
    assert not app.exception
    # Measured, reconstructed, and the per-spot metric map.
    assert len(app.get("plotly_chart")) == 3
    stored = list((tmp_path / "cache" / "reconstructions").glob("her2st-C6-*.npz"))
    assert len(stored) == 1
    with np.load(stored[0]) as reconstruction:
        lpips = reconstruction["metric_lpips"]
        assert reconstruction["thumbnails"].shape[0] == len(lpips) == 178
    assert np.isfinite(lpips).all()
    assert (lpips > 0).all()
    metric_marker = json.loads(app.get("plotly_chart")[2].proto.spec)["data"][0]["marker"]
    assert "CLIP cosine" in metric_marker["colorbar"]["title"]["text"]

    # The Tissue page now colours spots by the stored metrics and shows generated patches in its grid.
    app.switch_page("app.py").run()
    app.sidebar.selectbox(key="tissue_colour_mode").select("Spot metric").run()
    metric_box = app.sidebar.selectbox(key="tissue_metric")
    label = next(option for option in metric_box.options if option.startswith("LPIPS"))
    metric_box.select(label).run()
    assert not app.exception
    grid = app.dataframe[-1].value
    assert grid["generated"].str.startswith("data:image/jpeg;base64,").all()
    assert label in grid.columns
    app.sidebar.selectbox(key="tissue_colour_mode").select("Reconstructed model gene").run()
    assert not app.exception
    assert app.sidebar.selectbox(key="tissue_model_gene").options


def test_metrics_page_lists_baselines(app_env):
    app = open_app()
    app.switch_page("pages/2_Metrics.py").run()
    assert not app.exception
    if not (DEMO_MODEL / "evaluation" / "metrics.json").is_file():
        assert "No evaluation" in app.info[0].value
        return
    methods = set(app.dataframe[0].value["method"])
    assert {"stdiff", "random_train_patch", "nearest_expression_patch"} <= methods


def test_metrics_page_shows_split_and_seed_paper(app_env, monkeypatch, tmp_path, shared_data_dir):
    """A blocked split stored with the evaluation is drawn on its section; the published figures are listed."""
    import pandas as pd

    from stdiff.io import read_visium
    from stdiff.split import block_split

    if not (DEMO_MODEL / "evaluation" / "metrics.json").is_file():
        pytest.skip("the demo model ships no evaluation")
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model, ignore=shutil.ignore_patterns("reconstructions"))
    adata = read_visium(shared_data_dir / "her2st-C6")
    xy = adata.obsm["spatial"]
    result = block_split(xy, grid=4, eval_fraction=0.3, patch_size=256, gap=256)
    pd.DataFrame({"sample": "her2st-C6", "barcode": adata.obs_names, "x": xy[:, 0], "y": xy[:, 1],
                  "block": result.block, "split": result.split}).to_csv(model / "evaluation" / "split.csv", index=False)
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(model))

    app = open_app()
    app.switch_page("pages/2_Metrics.py").run()

    assert not app.exception
    split_chart = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert {trace["name"] for trace in split_chart["data"]} == {"train", "eval", "gap"}
    paper = app.dataframe[1].value
    assert paper["LPIPS"].iloc[0] == 1.095
    assert paper["CLIP cosine"].iloc[0] == 0.933
    assert "stdiff" in set(paper["method"])


def test_metrics_page_of_the_blocked_model(app_env, monkeypatch):
    """The model trained with a blocked split shows its real split and maps the evaluated blocks on C6."""
    blocked = ROOT / "models" / "her2st-blocked"
    if not (blocked / "evaluation" / "split.csv").is_file():
        pytest.skip(f"blocked model missing: {blocked}")
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(blocked))
    app = select_sample(open_app(), "her2st-C6")
    app.switch_page("pages/2_Metrics.py").run()

    assert not app.exception
    split_chart = json.loads(app.get("plotly_chart")[0].proto.spec)
    assert {trace["name"] for trace in split_chart["data"]} == {"train", "eval", "gap"}
    assert any("her2st-C6 is split in spatial blocks" in block.value for block in app.markdown)
    # The last chart maps the evaluated spots of her2st-C6.eval-blocks on the section picked in the sidebar.
    metric_map = json.loads(app.get("plotly_chart")[-1].proto.spec)
    x = metric_map["data"][0]["x"]
    # plotly 6 writes numpy arrays as base64 typed arrays
    n_points = len(base64.b64decode(x["bdata"])) // np.dtype(x["dtype"]).itemsize if isinstance(x, dict) else len(x)
    assert n_points == 55


def test_app_without_model_explains(app_env, monkeypatch, tmp_path):
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(tmp_path / "no-model"))
    app = open_app()
    assert not app.exception
    assert any("no-model" in warning.value for warning in app.sidebar.warning)
    assert "Load a trained model" in app.info[0].value


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda path: path.mkdir(), "No samples found"),
        (lambda path: None, "Data folder not found"),
        (lambda path: path.write_text("not a folder"), "is a file, not a folder"),
    ],
    ids=["empty", "missing", "file"],
)
def test_app_without_samples_explains(app_env, monkeypatch, tmp_path, make, expected):
    data = tmp_path / "data"
    make(data)
    monkeypatch.setenv("STDIFF_DATA_DIR", str(data))
    app = open_app()
    assert not app.exception
    assert expected in app.info[0].value
    assert str(data) in app.info[0].value


def test_model_folder_that_is_a_file(app_env, monkeypatch, tmp_path):
    model = tmp_path / "model.txt"
    model.write_text("not a model")
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(model))
    app = open_app()
    assert not app.exception
    assert any("is a file, not a model folder" in warning.value for warning in app.sidebar.warning)


@pytest.mark.parametrize("page", ["app.py", "pages/1_Heatmaps.py", "pages/3_Edit_expression.py", "pages/5_Export.py"])
def test_sample_without_model_genes_explains(app_env, page):
    """A mouse sample against the human demo model: a plain message on every page that needs expression."""
    app = open_app()
    if "visium-mouse-placenta-cytassist" not in app.sidebar.selectbox(key="sidebar_sample").options:
        pytest.skip("the mouse CytAssist sample is not in the data folder")
    if page != "app.py":
        app.switch_page(page).run()
    select_sample(app, "visium-mouse-placenta-cytassist")
    assert not app.exception
    assert len(app.error) == 1
    assert "cannot read the sample's expression" in app.error[0].value
