"""App latency benchmark: click-to-patch time with the demo model, and first-page load time.

Run from the project folder (weights and data from STDIFF_WEIGHTS_DIR and STDIFF_DATA_DIR)::

    .venv/bin/python benchmarks/app_latency.py [--model-dir models/demo] [--repeats 5]

Three measurements, written to ``benchmarks/results/app_latency.json``:

1. Click to patch: what the Tissue page does after a spot is clicked when nothing is cached yet, i.e.
   generating two patches (25 DDIM steps, guidance 2) from the spot's expression, scoring them against the
   real patch (CLIP cosine, LPIPS, SSIM, PSNR). The model is loaded once beforehand, as the app does
   (``st.cache_resource``). Target: under 3 s on the CPU.
2. First page load: a fresh ``AppTest`` run of ``app.py`` on the sample with the most spots among those whose
   genes the model reads; it reads the sample, cuts every patch, loads the model and generates for the first
   spot. The tile cache starts empty (``STDIFF_CACHE_DIR`` is a new temporary folder).
3. Zoom: drawing the Tissue page's window at every zoom step around the first spot, from an empty tile cache
   (cold) and again from a new pyramid over the filled cache (warm, as after a server restart), with the size
   of the JPEG the browser receives.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def click_to_patch(model_dir: Path, sample_dir: Path, repeats: int) -> dict:
    import numpy as np

    from stdiff.expression import expression_matrix
    from stdiff.io import open_tissue_image, read_visium
    from stdiff.pipeline import StdiffPipeline
    from stdiff_app.spot_metrics import spot_metrics_table

    pipeline = StdiffPipeline.from_pretrained(model_dir)
    adata = read_visium(sample_dir)
    expression = expression_matrix(adata, pipeline.gene_set)
    image = open_tissue_image(adata)
    xy = np.asarray(adata.obsm["spatial"])
    spot_metrics_table(pipeline, image.crop(*xy[0], size=pipeline.patch_size, out_size=pipeline.resolution),
                       pipeline.generate(expression[:1], n_per_spot=2, num_inference_steps=2)[0])  # warm-up
    times = []
    for repeat in range(repeats):
        index = (repeat * 37) % adata.n_obs
        start = time.perf_counter()
        real = image.crop(*xy[index], size=pipeline.patch_size, out_size=pipeline.resolution)
        generated = pipeline.generate(expression[index : index + 1], n_per_spot=2, seed=repeat,
                                      guidance_scale=2.0, num_inference_steps=25)[0]
        spot_metrics_table(pipeline, real, generated)
        times.append(time.perf_counter() - start)
    return {"sample": sample_dir.name, "repeats": repeats, "median_s": statistics.median(times),
            "max_s": max(times), "target_s": 3.0, "meets_target": statistics.median(times) < 3.0}


def first_page_load(model_dir: Path, data_dir: Path, sample: str) -> dict:
    from streamlit.testing.v1 import AppTest

    os.environ["STDIFF_MODEL_DIR"] = str(model_dir)
    os.environ["STDIFF_DATA_DIR"] = str(data_dir)
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    app.session_state["sidebar_sample"] = sample
    start = time.perf_counter()
    app.run()
    elapsed = time.perf_counter() - start
    if app.exception:
        raise RuntimeError(f"app failed: {app.exception[0].value}")
    return {"sample": sample, "seconds": elapsed}


def zoom_views(sample_dir: Path) -> dict:
    import tempfile
    from io import BytesIO

    from PIL import Image

    from stdiff.io import open_tissue_image, read_visium
    from stdiff.tiles import TilePyramid
    from stdiff_app.viewer import make_window, zoom_steps

    adata = read_visium(sample_dir)
    centre = tuple(adata.obsm["spatial"][0])
    steps = []
    with tempfile.TemporaryDirectory() as cache:
        for phase in ("cold", "warm"):
            pyramid = TilePyramid(open_tissue_image(adata), cache)
            for zoom in zoom_steps(pyramid.width, pyramid.height):
                window = make_window(pyramid, zoom, centre)
                start = time.perf_counter()
                pixels = pyramid.view(window.left, window.top, window.right, window.bottom, out_width=window.width,
                                      out_height=window.height)
                elapsed = time.perf_counter() - start
                buffer = BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
                steps.append({"phase": phase, "zoom": zoom, "level": window.level, "seconds": elapsed,
                              "window_pixels": [window.width, window.height], "jpeg_bytes": buffer.tell()})
    return {"sample": sample_dir.name, "image_pixels": [pyramid.width, pyramid.height], "views": steps}


def main() -> None:
    from stdiff import settings
    from stdiff.io import list_samples, read_visium

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "demo")
    parser.add_argument("--click-sample", default="her2st-C6", help="Sample for the click-to-patch timing.")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("STDIFF_OFFLINE", "1")

    from stdiff.expression import GeneSet, expression_matrix

    data_dir = settings.data_dir()
    gene_set = GeneSet.load(args.model_dir)
    readable = {}
    for folder in list_samples(data_dir):
        adata = read_visium(folder)
        try:
            expression_matrix(adata, gene_set)
        except ValueError:
            continue  # for example a mouse sample against a human model
        readable[folder] = adata.n_obs
    largest = max(readable, key=readable.get)
    import tempfile

    os.environ["STDIFF_CACHE_DIR"] = tempfile.mkdtemp(prefix="stdiff-benchmark-")
    result = {
        "click_to_patch": click_to_patch(args.model_dir, data_dir / args.click_sample, args.repeats),
        "first_page_load": first_page_load(args.model_dir, data_dir, largest.name),
        "zoom": zoom_views(data_dir / largest.name),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average_1_5_15": os.getloadavg()},
        "command": "python benchmarks/app_latency.py " + " ".join(sys.argv[1:]),
    }
    out = ROOT / "benchmarks" / "results" / "app_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
