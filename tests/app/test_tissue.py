"""The Tissue page through AppTest: zoomable image, spots at physical size, colouring, lasso and patch grid."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from test_app import app_env, open_app, select_sample  # noqa: F401 (app_env is a fixture)

from stdiff_app.patch_grid import PAGE_SIZE
from stdiff_app.viewer import VIEW_SIZE

SAMPLE = "her2st-C6"


def _spec(app) -> dict:
    return json.loads(app.get("plotly_chart")[0].proto.spec)


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array ({"dtype", "bdata"}) as plotly 6 writes numpy arrays."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value)


def _sent_image(spec: dict) -> Image.Image:
    uri = spec["layout"]["images"][0]["source"]
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _scalefactors(shared_data_dir) -> dict:
    return json.loads((shared_data_dir / SAMPLE / "spatial" / "scalefactors_json.json").read_text())


@pytest.fixture
def tissue(app_env):
    app = select_sample(open_app(), SAMPLE)
    assert not app.exception
    return app


def test_whole_section_view_sends_one_small_image(tissue, shared_data_dir):
    spec = _spec(tissue)
    image = _sent_image(spec)
    x_range = spec["layout"]["xaxis"]["range"]

    assert max(image.size) <= VIEW_SIZE
    full_width = x_range[1] - x_range[0]
    assert full_width > 9000  # the whole her2st section, about 9,300 full-resolution pixels wide
    # Spots are drawn at spot_diameter_fullres, converted to screen pixels.
    diameter = _scalefactors(shared_data_dir)["spot_diameter_fullres"]
    marker = spec["data"][0]["marker"]
    assert marker["size"] == pytest.approx(diameter * image.size[0] / full_width, rel=0.02)


def test_full_zoom_shows_full_resolution_pixels(tissue, shared_data_dir):
    zoom = tissue.select_slider(key="tissue_zoom")
    zoom.set_value(2 ** (len(zoom.options) - 1)).run()  # options are shown as "whole section", "2x", "4x", ...
    assert not tissue.exception

    spec = _spec(tissue)
    image = _sent_image(spec)
    x_range = spec["layout"]["xaxis"]["range"]
    per_pixel = (x_range[1] - x_range[0]) / image.size[0]
    assert per_pixel <= 1.0
    assert "pyramid level 0" in " ".join(caption.value for caption in tissue.main.get("caption"))
    diameter = _scalefactors(shared_data_dir)["spot_diameter_fullres"]
    assert spec["data"][0]["marker"]["size"] == pytest.approx(diameter / per_pixel, rel=0.02)
    # The view is centred on the selected spot.
    focus = tissue.session_state["tissue_focus"]
    focus_trace = next(trace for trace in spec["data"] if trace["name"] == "selected")
    assert focus
    assert x_range[0] <= _array(focus_trace["x"])[0] <= x_range[1]


def test_pan_moves_half_a_view(tissue):
    tissue.select_slider(key="tissue_zoom").set_value(4).run()
    before = _spec(tissue)["layout"]["xaxis"]["range"]
    tissue.button(key="tissue_pan_←").click().run()
    after = _spec(tissue)["layout"]["xaxis"]["range"]

    assert not tissue.exception
    width = before[1] - before[0]
    # Half a view to the left, unless the image's left edge stops it.
    assert after[0] == pytest.approx(max(0.0, before[0] - width / 2), abs=1.0)
    assert after[1] - after[0] == pytest.approx(width)


def test_colour_by_any_measured_gene(tissue, shared_data_dir):
    import scanpy as sc

    from stdiff.io import read_visium

    tissue.sidebar.selectbox(key="tissue_colour_mode").select("Measured gene").run()
    gene_box = tissue.sidebar.selectbox(key="tissue_gene")
    adata = read_visium(shared_data_dir / SAMPLE)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    # A gene outside the model's 50, expressed in only some spots.
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    gene = adata.var_names[np.flatnonzero((detected > 20) & (detected < adata.n_obs // 2))[0]]
    gene_box.select(gene).run()
    assert not tissue.exception

    marker = _spec(tissue)["data"][0]["marker"]
    expected = np.asarray(adata[:, gene].X.todense()).ravel()
    np.testing.assert_allclose(_array(marker["color"]), expected, rtol=1e-5, atol=1e-5)
    assert marker["colorbar"]["title"]["text"] == f"{gene} log1p"


def test_colour_by_counts(tissue, shared_data_dir):
    from stdiff.io import read_visium

    tissue.sidebar.selectbox(key="tissue_colour_mode").select("Spot metric").run()
    tissue.sidebar.selectbox(key="tissue_metric").select("UMIs").run()
    assert not tissue.exception

    marker = _spec(tissue)["data"][0]["marker"]
    adata = read_visium(shared_data_dir / SAMPLE)
    np.testing.assert_allclose(_array(marker["color"]), np.asarray(adata.X.sum(axis=1)).ravel())


def test_lasso_selection_shows_each_spot(tissue):
    barcodes = list(tissue.selectbox(key="tissue_spot").options)
    group = barcodes[10:13]
    tissue.session_state["tissue_group"] = group
    tissue.run()
    assert not tissue.exception

    assert tissue.subheader[0].value == "3 spots in the lasso"
    captions = [caption for image in tissue.get("image") for caption in image.captions]
    assert [c for c in captions if c.startswith("Real ")] == [f"Real {b}" for b in group]
    assert [c for c in captions if c.startswith("Generated ")] == [f"Generated {b}" for b in group]
    table = tissue.dataframe[0].value
    assert table["barcode"].tolist() == group
    lasso_trace = next(trace for trace in _spec(tissue)["data"] if trace["name"] == "lasso")
    assert len(_array(lasso_trace["x"])) == 3

    tissue.button(key="tissue_clear_group").click().run()
    assert tissue.session_state["tissue_group"] == []
    assert tissue.selectbox(key="tissue_spot")


def test_patch_grid_sorts_and_filters(tissue, shared_data_dir):
    from stdiff.io import read_visium

    grid = tissue.dataframe[-1].value
    assert len(grid) == PAGE_SIZE
    assert {"barcode", "UMIs", "genes detected", "real"} <= set(grid.columns)
    assert grid["real"].str.startswith("data:image/jpeg;base64,").all()

    tissue.selectbox(key="tissue_grid_sort").select("UMIs").run()
    grid = tissue.dataframe[-1].value
    counts = np.asarray(read_visium(shared_data_dir / SAMPLE).X.sum(axis=1)).ravel()
    assert grid["UMIs"].iloc[0] == counts.max()
    assert grid["UMIs"].is_monotonic_decreasing

    tissue.toggle(key="tissue_grid_descending").set_value(False).run()
    assert tissue.dataframe[-1].value["UMIs"].iloc[0] == counts.min()

    tissue.selectbox(key="tissue_grid_filter").select("UMIs").run()
    threshold = float(np.sort(counts)[-5])
    tissue.slider(key="tissue_grid_range_UMIs").set_value((threshold, float(counts.max()))).run()
    assert not tissue.exception
    grid = tissue.dataframe[-1].value
    assert len(grid) == 5
    assert (grid["UMIs"] >= threshold).all()
    assert any("5 of 178 spots pass the filter" in caption.value for caption in tissue.main.get("caption"))


def test_unreadable_sample_keeps_grid(app_env):
    """A mouse sample with the human demo model: no generation, but the image, colouring and grid still work."""
    app = select_sample(open_app(), "visium-mouse-placenta-cytassist")
    assert not app.exception

    assert any("cannot read the sample's expression" in error.value for error in app.error)
    assert app.get("plotly_chart")
    grid = app.dataframe[-1].value
    assert grid["real"].str.startswith("data:image/jpeg;base64,").all()


def test_grid_selection_does_not_follow_a_new_sort(tissue):
    """Changing the sort draws a table under another key, so no old row selection can pick a new spot."""
    def grid_id():
        return tissue.dataframe[-1].proto.id

    before = grid_id()
    tissue.toggle(key="tissue_grid_descending").set_value(False).run()

    assert "tissue_grid_table" in before
    assert grid_id() != before
