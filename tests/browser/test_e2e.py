"""The app in headless Chromium: click a spot, change the heatmap gene, start and cancel a job.

Runs ``streamlit run app.py`` on a free local port and drives the system Chromium (``/usr/bin/chromium``)
through Playwright; no browser is downloaded. Screenshots of every page visited go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "models" / "demo"
CHROMIUM = Path("/usr/bin/chromium")
TRAIN_SAMPLE = "her2st-C2"  # the smallest her2st sample, for the job that the test starts and cancels
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_TIMEOUT = 90  # seconds
GENERATION_TIMEOUT_MS = 240_000  # generating patches on a shared CPU can take minutes

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer on {url} within {SERVER_START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def first_sample(data_dir: Path) -> Path:
    from stdiff.io import list_samples

    return list_samples(data_dir)[0]


def write_reconstruction(sample_dir: Path, cache_dir: Path, monkeypatch) -> None:
    """Store a reconstruction of ``sample_dir`` (half the measured expression) where the Heatmaps page reads it.

    Generating a patch for every spot takes minutes on a CPU; the Heatmaps page only reads the stored file.
    """
    from stdiff.expression import GeneSet, expression_matrix
    from stdiff.io import read_visium
    from stdiff_app.loaders import reconstruction_path

    monkeypatch.setenv("STDIFF_CACHE_DIR", str(cache_dir))
    path = reconstruction_path(str(DEMO_MODEL), str(sample_dir))
    if path.is_file():
        return
    adata = read_visium(sample_dir)
    gene_set = GeneSet.load(DEMO_MODEL)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, barcodes=adata.obs_names.to_numpy().astype(str),
                        reconstructed=0.5 * expression_matrix(adata, gene_set), genes=np.asarray(gene_set.genes),
                        settings=json.dumps({"n_per_spot": 1}))


@pytest.fixture
def server(tmp_path, monkeypatch, shared_data_dir, shared_weights_dir):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found; install it with `apt-get install chromium` to run the browser test")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    if not (DEMO_MODEL / "ldm" / "model.safetensors").is_file():
        pytest.skip(f"demo model missing: {DEMO_MODEL}")
    if not (shared_data_dir / TRAIN_SAMPLE).is_dir():
        pytest.skip(f"sample {TRAIN_SAMPLE} not found in {shared_data_dir}")
    cache_dir = tmp_path / "cache"
    write_reconstruction(first_sample(shared_data_dir), cache_dir, monkeypatch)
    port = free_port()
    env = dict(os.environ, STDIFF_DATA_DIR=str(shared_data_dir), STDIFF_WEIGHTS_DIR=str(shared_weights_dir),
               STDIFF_MODEL_DIR=str(DEMO_MODEL), STDIFF_CACHE_DIR=str(cache_dir),
               STDIFF_RUNS_DIR=str(tmp_path / "runs"), STDIFF_OFFLINE="1", HF_HUB_OFFLINE="1",
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    log = tmp_path / "streamlit.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, process, log)
        yield url, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_idle(page) -> None:
    """Wait until Streamlit has finished running the script (the 'Running…' status widget is gone)."""
    page.wait_for_timeout(500)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=GENERATION_TIMEOUT_MS)


def screenshot(page, name: str) -> None:
    # Images arrive after the script finishes, so wait until every <img> has loaded.
    page.wait_for_function("() => Array.from(document.images).every((image) => image.complete)", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def open_page(page, title: str) -> None:
    # The sidebar draws its own page menu with st.page_link.
    page.locator('[data-testid="stSidebar"] a[data-testid="stPageLink-NavLink"]', has_text=title).first.click()
    page.wait_for_selector(f'h1:has-text("{title}")', timeout=60_000)
    wait_until_idle(page)


# Pixel position of one spot marker: plotly's axis l2p maps data to plot-area pixels, and _size contains the margins.
POINT_POSITION_JS = """
([index]) => {
    const graph = document.querySelector('.js-plotly-plot');
    const layout = graph._fullLayout;
    const point = graph.calcdata[0][index];
    const box = graph.querySelector('.main-svg').getBoundingClientRect();
    return {
        x: box.left + layout._size.l + layout.xaxis.l2p(point.x),
        y: box.top + layout._size.t + layout.yaxis.l2p(point.y),
        barcode: graph.data[0].customdata[index],
    };
}
"""


def test_browser_walkthrough(server):
    from playwright.sync_api import expect, sync_playwright

    url, tmp_path = server
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.goto(url)

            # Tissue: click a spot marker and wait for its generated patches.
            page.wait_for_selector(".js-plotly-plot .scatterlayer .point", timeout=120_000)
            page.wait_for_function("() => document.querySelector('.js-plotly-plot')._fullLayout !== undefined")
            wait_until_idle(page)
            target = page.evaluate(POINT_POSITION_JS, [5])
            page.mouse.click(target["x"], target["y"])
            expect(page.get_by_role("combobox", name="Spot (barcode)")).to_have_value(target["barcode"], timeout=60_000)
            expect(page.get_by_text("Generated 1", exact=True)).to_be_visible(timeout=GENERATION_TIMEOUT_MS)
            wait_until_idle(page)
            # The metrics table and the top-genes chart draw on canvases after the script has finished.
            expect(page.locator('[data-testid="stDataFrame"] canvas').first).to_be_visible(timeout=30_000)
            expect(page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg')
                   .first).to_be_visible(timeout=30_000)
            screenshot(page, "1-tissue")

            # Lasso: pick the tool, drag a loop around the middle of the section; the spots inside get patches.
            page.locator(".js-plotly-plot").first.hover()
            page.locator('.js-plotly-plot .modebar-btn[data-title="Lasso Select"]').first.click()
            plot = page.locator(".js-plotly-plot").first.bounding_box()
            cx, cy = plot["x"] + plot["width"] * 0.5, plot["y"] + plot["height"] * 0.5
            rx, ry = plot["width"] * 0.12, plot["height"] * 0.12
            page.mouse.move(cx - rx, cy - ry)
            page.mouse.down()
            for fx, fy in ((1, -1), (1, 1), (-1, 1), (-1, -0.9)):
                page.mouse.move(cx + fx * rx, cy + fy * ry, steps=8)
            page.mouse.up()
            expect(page.get_by_text("spots in the lasso")).to_be_visible(timeout=60_000)
            # Lasso captions name the spot ("Generated 14x15"), unlike the single-spot ones ("Generated 1").
            expect(page.get_by_text(re.compile(r"^Generated \d+x\d+$")).first).to_be_visible(
                timeout=GENERATION_TIMEOUT_MS)
            wait_until_idle(page)
            screenshot(page, "1b-tissue-lasso")
            page.get_by_role("button", name="Clear the lasso selection").click()
            expect(page.get_by_role("combobox", name="Spot (barcode)")).to_be_visible(timeout=60_000)

            # Patch grid: every spot's real patch in a table.
            page.get_by_role("tab", name="Patch grid").click()
            expect(page.get_by_text("spots pass the filter")).to_be_visible(timeout=60_000)
            wait_until_idle(page)
            screenshot(page, "1c-tissue-patch-grid")

            # Heatmaps: change the gene and wait for its correlation to be shown.
            open_page(page, "Heatmaps")
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)
            gene_box = page.get_by_role("combobox", name="Gene")
            first_gene = gene_box.input_value()
            gene_box.click()
            options = page.get_by_role("option")
            second_gene = next(text.strip() for text in options.all_inner_texts() if text.strip() != first_gene)
            page.get_by_role("option", name=second_gene, exact=True).click()
            expect(page.get_by_text(f"Pearson r over spots, {second_gene}")).to_be_visible(timeout=60_000)
            wait_until_idle(page)
            screenshot(page, "2-heatmaps")

            # Wait for text that each page shows only once its content is drawn.
            for number, title, loaded in ((3, "Edit expression", "Reset to the measured profile"),
                                          (4, "Samples", "UMI counts per spot"),
                                          (5, "Export", "AnnData with reconstruction (h5ad)")):
                open_page(page, title)
                expect(page.get_by_text(loaded).first).to_be_visible(timeout=60_000)
                wait_until_idle(page)
                screenshot(page, f"{number}-{title.lower().replace(' ', '-')}")

            # Train: start a prepare job, cancel it while it runs.
            open_page(page, "Train")
            run_name = page.get_by_role("textbox", name="Run folder name")
            run_name.fill("browser-run")
            run_name.press("Enter")
            wait_until_idle(page)
            page.locator('[data-testid="stMultiSelect"]', has_text="Training samples").click()
            page.get_by_role("option", name=TRAIN_SAMPLE, exact=True).click()
            page.keyboard.press("Escape")
            wait_until_idle(page)
            page.get_by_role("button", name="Start", exact=True).click()
            expect(page.get_by_text("Started prepare")).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Cancel").first.click()
            expect(page.get_by_text("· cancelled ·").first).to_be_visible(timeout=60_000)
            screenshot(page, "6-train")
        except Exception:
            screenshot(page, "failure")
            raise
        finally:
            context.close()
