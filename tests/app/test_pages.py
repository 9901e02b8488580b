"""The Edit expression, Train, Export and Samples pages through AppTest, on a real sample and the demo model."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from stdiff import jobs

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "models" / "demo"
SAMPLE = "her2st-C6"
TRAIN_SAMPLE = "her2st-C2"  # the smallest her2st sample, for the prepare job
TIMEOUT = 180
EDIT_PAGE = "pages/3_Edit_expression.py"
SAMPLES_PAGE = "pages/4_Samples.py"
EXPORT_PAGE = "pages/5_Export.py"
TRAIN_PAGE = "pages/6_Train.py"
NEW_PAGES = (EDIT_PAGE, SAMPLES_PAGE, EXPORT_PAGE, TRAIN_PAGE)


@pytest.fixture
def app_env(monkeypatch, shared_data_dir, shared_weights_dir, tmp_path):
    if not (DEMO_MODEL / "ldm" / "model.safetensors").is_file():
        pytest.skip(f"demo model missing: {DEMO_MODEL}")
    for name in (SAMPLE, TRAIN_SAMPLE):
        if not (shared_data_dir / name).is_dir():
            pytest.skip(f"sample {name} not found in {shared_data_dir}")
    monkeypatch.setenv("STDIFF_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("STDIFF_WEIGHTS_DIR", str(shared_weights_dir))
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(DEMO_MODEL))
    monkeypatch.setenv("STDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("STDIFF_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("STDIFF_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    return tmp_path


def open_page(page: str) -> AppTest:
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    app.switch_page(page).run()
    app.sidebar.selectbox(key="sidebar_sample").select(SAMPLE).run()
    assert app.session_state["app_selection"].sample_dir.endswith(SAMPLE)
    return app


def texts(app: AppTest, kind: str) -> list[str]:
    return [element.value for element in app.get(kind)]


def metric_value(app: AppTest, label: str) -> float:
    for metric in app.metric:
        if metric.label == label:
            return float(metric.value)
    raise AssertionError(f"no metric {label!r} among {[metric.label for metric in app.metric]}")


@pytest.mark.parametrize("page", NEW_PAGES)
def test_page_opens(app_env, page):
    app = open_page(page)
    assert not app.exception
    assert not app.error


def test_samples_page_lists_every_sample(app_env, shared_data_dir):
    from stdiff.io import list_samples

    app = open_page(SAMPLES_PAGE)
    table = app.dataframe[0].value
    assert set(table["sample"]) == {path.name for path in list_samples(shared_data_dir)}
    row = table[table["sample"] == SAMPLE].iloc[0]
    assert row["spots"] > 0
    assert row["model genes found"].endswith("of 50")
    assert len(app.get("plotly_chart")) == 1


def test_samples_page_clears_cache(app_env):
    cache = app_env / "cache"
    (cache / "tiles" / "slide-key" / "0").mkdir(parents=True)
    Image.new("RGB", (512, 512), "pink").save(cache / "tiles" / "slide-key" / "0" / "0_0.jpg")
    (cache / "reconstructions").mkdir()
    np.savez(cache / "reconstructions" / "her2st-B4-0123.npz", expression=np.ones((4, 2), np.float32))
    (cache / "taef2").mkdir()
    (cache / "taef2" / "taef2_decoder.pth").write_bytes(b"\0" * 100)
    app = open_page(SAMPLES_PAGE)
    usage = app.dataframe[1].value.set_index("part")
    assert usage.loc["tiles", "entries"] == 1
    assert usage.loc["reconstructions", "entries"] == 1

    app.button(key="samples_clear_cache").click().run()

    assert "Removed 2 entries" in app.success[0].value
    usage = app.dataframe[1].value.set_index("part")
    assert usage["entries"].to_dict() == {"uploads": 0, "tiles": 0, "reconstructions": 0, "taef2": 1}
    assert (cache / "taef2" / "taef2_decoder.pth").is_file()


def test_edit_slider_changes_patch(app_env):
    app = open_page(EDIT_PAGE)
    app.slider(key="edit_expression_steps").set_value(5).run()
    gene = app.multiselect(key="edit_expression_genes").value[0]
    slider = app.slider(key=f"edit_expression_slider_{gene}")
    slider.set_value(slider.max).run()
    app.button(key="edit_expression_generate").click().run()
    assert not app.exception
    captions = [caption for image in app.get("image") for caption in image.captions]
    assert any(caption.startswith("Original 1") for caption in captions)
    assert any(caption.startswith("Edited 1") for caption in captions)
    assert metric_value(app, "Mean absolute pixel difference") > 0
    assert metric_value(app, "CLIP cosine, original vs edited") <= 1.0 + 1e-6
    changed = app.dataframe[0].value
    assert list(changed["gene"]) == [gene]


def test_edit_reset_restores_profile(app_env):
    app = open_page(EDIT_PAGE)
    gene = app.multiselect(key="edit_expression_genes").value[0]
    measured = app.slider(key=f"edit_expression_slider_{gene}").value
    app.slider(key=f"edit_expression_slider_{gene}").set_value(0.0).run()
    app.button(key="edit_expression_reset").click().run()
    assert app.slider(key=f"edit_expression_slider_{gene}").value == pytest.approx(measured)


def test_edit_malformed_paste_shows_error(app_env):
    app = open_page(EDIT_PAGE)
    gene = app.multiselect(key="edit_expression_genes").value[0]
    before = app.slider(key=f"edit_expression_slider_{gene}").value
    app.text_area(key="edit_expression_paste").input(f"{gene},abc\n{gene} 1 2").run()
    app.button(key="edit_expression_apply").click().run()
    assert not app.exception
    errors = texts(app, "error")
    assert len(errors) == 1
    assert "Line 1" in errors[0]
    assert "Line 2" in errors[0]
    assert app.slider(key=f"edit_expression_slider_{gene}").value == pytest.approx(before)


def test_edit_paste_warns_unknown_genes(app_env):
    app = open_page(EDIT_PAGE)
    options = app.multiselect(key="edit_expression_genes").options
    shown = app.multiselect(key="edit_expression_genes").value
    gene = next(option for option in options if option not in shown)
    app.text_area(key="edit_expression_paste").input(f"gene,value\n{gene},3.5\nNOT_A_GENE,1").run()
    app.button(key="edit_expression_apply").click().run()
    assert not app.exception
    assert not app.error
    assert any("NOT_A_GENE" in warning for warning in texts(app, "warning"))
    assert gene in app.multiselect(key="edit_expression_genes").value
    assert app.slider(key=f"edit_expression_slider_{gene}").value == pytest.approx(3.5)


def test_train_page_starts_and_cancels_jobs(app_env):
    runs = app_env / "runs"
    app = open_page(TRAIN_PAGE)
    app.text_input(key="train_run_name").input("tiny").run()
    app.multiselect(key="train_prepare_train").select(TRAIN_SAMPLE).run()
    app.selectbox(key="train_resolution").select(32).run()
    app.number_input(key="train_n_genes").set_value(16).run()
    app.button(key="train_start").click().run()
    assert not app.exception
    assert any("Started prepare" in message for message in texts(app, "success"))
    (prepare_job,) = jobs.list_jobs(runs)
    assert prepare_job.label == "tiny"
    assert any(prepare_job.job_id in text for text in texts(app, "markdown"))
    log = jobs.tail_text(prepare_job.log_path)
    assert jobs.wait_for_job(prepare_job, {"finished", "failed"}, timeout=150) == "finished", log
    app.button(key="train_refresh").click().run()
    assert any(prepare_job.job_id in text and "finished" in text for text in texts(app, "markdown"))

    app.selectbox(key="train_step").select("train-clip").run()
    app.selectbox(key="train_run").select("tiny").run()
    app.number_input(key="train_train-clip_steps").set_value(1_000_000).run()
    app.number_input(key="train_train-clip_batch").set_value(32).run()
    app.button(key="train_start").click().run()
    assert not app.exception
    clip_job = next(job for job in jobs.list_jobs(runs) if job.step == "train-clip")
    assert jobs.job_status(clip_job) == "running"
    assert any(clip_job.job_id in text and "running" in text for text in texts(app, "markdown"))
    app.button(key=f"train_cancel_{clip_job.job_id}").click().run()
    assert not app.exception
    assert jobs.wait_for_job(clip_job, {"cancelled", "failed", "finished"}, timeout=30) == "cancelled"
    assert any(clip_job.job_id in text and "cancelled" in text for text in texts(app, "markdown"))
    assert app.button(key=f"train_restart_{clip_job.job_id}").label == "Resume"


def test_train_page_rejects_bad_run_name(app_env):
    app = open_page(TRAIN_PAGE)
    app.text_input(key="train_run_name").input("../outside").run()
    assert not app.exception
    assert any("not a valid run folder name" in message for message in texts(app, "error"))
    assert app.button(key="train_start").disabled


@pytest.fixture
def downloads(monkeypatch) -> dict[str, bytes]:
    """Capture the bytes of every file the app hands to Streamlit's media storage, keyed by file name."""
    captured: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        if filename is not None and isinstance(path_or_data, bytes):
            captured[filename] = path_or_data
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return captured


def write_reconstruction(shared_data_dir: Path) -> np.ndarray | None:
    """Store a reconstruction of the sample where the Heatmaps and Export pages read it, and return its values.

    The values are the measured expression of the model genes times 0.5, written in the layout of
    :func:`stdiff.reconstruct.reconstruct_to_file`: generating a patch for every spot takes minutes on a CPU,
    and the Export page only reads the file. Returns None when the demo model ships its own reconstruction.
    """
    import json

    from stdiff.expression import GeneSet, expression_matrix
    from stdiff.io import read_visium
    from stdiff_app.loaders import reconstruction_path

    sample_dir = shared_data_dir / SAMPLE
    path = reconstruction_path(str(DEMO_MODEL), str(sample_dir))
    if path.is_file():
        return None
    adata = read_visium(sample_dir)
    gene_set = GeneSet.load(DEMO_MODEL)
    values = 0.5 * expression_matrix(adata, gene_set)
    path.parent.mkdir(parents=True)
    np.savez_compressed(path, barcodes=adata.obs_names.to_numpy().astype(str), reconstructed=values,
                        genes=np.asarray(gene_set.genes), settings=json.dumps({"n_per_spot": 1}))
    return values


def download_labels(app: AppTest) -> list[str]:
    return [element.proto.label for element in app.get("download_button")]


def test_export_without_reconstruction_points_to_heatmaps(app_env, monkeypatch, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model, ignore=shutil.ignore_patterns("reconstructions"))
    monkeypatch.setenv("STDIFF_MODEL_DIR", str(model))
    app = open_page(EXPORT_PAGE)
    assert not app.exception
    assert any("Heatmaps page" in message for message in texts(app, "info"))
    assert not any("h5ad" in label for label in download_labels(app))


def test_export_downloads(app_env, shared_data_dir, downloads):
    stored = write_reconstruction(shared_data_dir)
    app = open_page(EXPORT_PAGE)
    app.number_input(key="export_n_spots").set_value(3).run()
    app.slider(key="export_steps").set_value(5).run()
    app.button(key="export_score").click().run()
    assert not app.exception
    labels = download_labels(app)
    for label in ("Metrics CSV", "Generated patches (zip)", "AnnData with reconstruction (h5ad)"):
        assert label in labels
    assert sum(label.endswith("(PNG)") for label in labels) == 2

    import pandas as pd

    metrics = pd.read_csv(io.BytesIO(downloads[f"{SAMPLE}_metrics.csv"]))
    assert len(metrics) == 3
    assert {"barcode", "clip_cosine", "lpips", "ssim", "psnr"} <= set(metrics.columns)
    assert metrics[["clip_cosine", "lpips", "ssim", "psnr"]].notna().all().all()

    import zipfile

    with zipfile.ZipFile(io.BytesIO(downloads[f"{SAMPLE}_generated.zip"])) as archive:
        names = archive.namelist()
    assert sorted(name for name in names if name.endswith(".png")) == sorted(
        f"generated/{barcode}.png" for barcode in metrics["barcode"])

    png_names = [name for name in downloads if name.startswith(SAMPLE) and name.endswith(".png")]
    assert len(png_names) == 2
    for name in png_names:
        assert downloads[name].startswith(b"\x89PNG")

    h5ad_path = app_env / "export.h5ad"
    h5ad_path.write_bytes(downloads[f"{SAMPLE}_stdiff.h5ad"])
    adata = ad.read_h5ad(h5ad_path)
    layer = adata.layers["stdiff_reconstructed"]
    assert layer.shape == adata.shape
    model_genes = list(adata.uns["stdiff"]["model_genes"])
    in_layer = adata.var_names.isin(model_genes)
    assert np.asarray(layer[:, ~in_layer].sum()) == 0
    assert np.asarray(layer[:, in_layer].sum()) > 0
    assert adata.uns["stdiff"]["layer"] == "stdiff_reconstructed"
    if stored is not None:
        columns = adata.var_names.get_indexer(model_genes)
        present = columns >= 0
        np.testing.assert_allclose(layer[:, columns[present]].toarray(), stored[:, present], rtol=1e-6)
