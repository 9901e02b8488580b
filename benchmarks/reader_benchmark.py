"""Reader benchmark: prepare a generated 5,000-spot sample with a 20,000 x 20,000 full-resolution TIFF.

Run from the project folder::

    .venv/bin/python benchmarks/reader_benchmark.py [--work-dir DIR]

Three steps, each in its own process so the measured process contains only what ``stdiff prepare`` uses:

1. ``--generate``: write the sample into ``DIR/data/bench`` (skipped when already there): a tiled, deflate
   compressed RGB TIFF written tile by tile (never decoded whole), hires and lowres PNGs, a hexagonal grid
   of 5,000 spots in ``tissue_positions.csv`` and a 10x h5 matrix of 5,000 spots x 18,000 genes.
2. ``--measure``: run :func:`stdiff.prepare.prepare` on it (read the sample, cut 256 px patches at full
   resolution resized to 128 px, build the expression matrix of the top 50 genes) and print wall time and
   peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) as JSON.
3. The parent writes ``benchmarks/results/reader.json`` with the numbers, the targets, the machine and the
   command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
RESULTS_PATH = PROJECT_DIR / "benchmarks" / "results" / "reader.json"
SAMPLE_NAME = "bench"
N_SPOTS = 5_000
N_GENES = 18_000
NONZERO_PER_SPOT = 2_000
SIDE = 20_000  # full-resolution width and height in pixels
TILE = 256
HIRES_SIDE = 2_000
LOWRES_SIDE = 600
SPOT_DIAMETER = 110.0
PATCH_SIZE = 256  # crop side in full-resolution pixels
RESOLUTION = 128  # patch side after resizing, as PrepareConfig uses by default
TARGET_WALL_S = 60.0
TARGET_PEAK_RSS_GB = 3.0

logger = logging.getLogger("reader_benchmark")


# Generation


def he_like(rows: np.ndarray, cols: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """Return an H&E-like uint8 RGB texture at full-resolution pixel (row, col) grids.

    The texture is a smooth function of position, so any region (or a downscaled copy, with ``scale`` =
    full-resolution pixels per output pixel) can be generated on its own.
    """
    r = rows.astype(np.float32) * scale
    c = cols.astype(np.float32) * scale
    nuclei = np.sin(r / 9.0) * np.sin(c / 11.0) + 0.5 * np.sin((r + c) / 37.0)
    tissue = 0.5 + 0.5 * np.sin(r / 900.0) * np.cos(c / 700.0)
    purple = np.clip(nuclei * tissue, 0, 1)
    red = 235 - 110 * purple - 20 * tissue
    green = 200 - 150 * purple - 60 * tissue
    blue = 225 - 40 * purple - 10 * tissue
    return np.stack([red, green, blue], axis=-1).clip(0, 255).astype(np.uint8)


def _tiles():
    rows, cols = np.mgrid[0:TILE, 0:TILE]
    for top in range(0, SIDE, TILE):
        for left in range(0, SIDE, TILE):
            yield he_like(rows + top, cols + left)


def _spot_grid() -> np.ndarray:
    """Return (N_SPOTS, 2) full-resolution (x, y) centres on a hexagonal grid covering the middle of the slide."""
    per_row = int(np.ceil(np.sqrt(N_SPOTS)))
    pitch = (SIDE - 2_000) / per_row
    xy = []
    for index in range(N_SPOTS):
        row, col = divmod(index, per_row)
        xy.append((1_000 + col * pitch + (pitch / 2 if row % 2 else 0), 1_000 + row * pitch * np.sqrt(3) / 2))
    return np.array(xy)


def generate(sample_dir: Path) -> None:
    """Write the benchmark sample into ``sample_dir``."""
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    import tifffile
    from PIL import Image

    spatial_dir = sample_dir / "spatial"
    spatial_dir.mkdir(parents=True, exist_ok=True)

    # 1. Full-resolution TIFF, one tile at a time, under a temporary name until complete.
    fullres = spatial_dir / "tissue_fullres_image.tif"
    if not fullres.is_file():
        started = time.perf_counter()
        partial = spatial_dir / "fullres.partial"
        tifffile.imwrite(partial, _tiles(), shape=(SIDE, SIDE, 3), dtype=np.uint8, tile=(TILE, TILE),
                         compression="zlib", photometric="rgb", bigtiff=True)
        partial.replace(fullres)
        logger.info("Wrote %s (%.0f MB) in %.0f s", fullres, fullres.stat().st_size / 1e6,
                    time.perf_counter() - started)

    # 2. Hires and lowres images of the same texture.
    scalefactors = {"spot_diameter_fullres": SPOT_DIAMETER, "fiducial_diameter_fullres": SPOT_DIAMETER * 1.6}
    for source, side in (("hires", HIRES_SIDE), ("lowres", LOWRES_SIDE)):
        rows, cols = np.mgrid[0:side, 0:side]
        Image.fromarray(he_like(rows, cols, scale=SIDE / side)).save(spatial_dir / f"tissue_{source}_image.png")
        scalefactors[f"tissue_{source}_scalef"] = side / SIDE
    (spatial_dir / "scalefactors_json.json").write_text(json.dumps(scalefactors))

    # 3. Positions (Space Ranger 2.x layout, with header). Barcodes are not in spatial order in real data, so
    #    the spots are shuffled: patches are cut in a random order over the slide.
    rng = np.random.default_rng(0)
    grid_index = rng.permutation(N_SPOTS)
    xy = _spot_grid()[grid_index]
    per_row = int(np.ceil(np.sqrt(N_SPOTS)))
    barcodes = [f"SPOT{index:06d}-1" for index in range(N_SPOTS)]
    pd.DataFrame({
        "barcode": barcodes,
        "in_tissue": 1,
        "array_row": grid_index // per_row,
        "array_col": grid_index % per_row,
        "pxl_row_in_fullres": xy[:, 1],
        "pxl_col_in_fullres": xy[:, 0],
    }).to_csv(spatial_dir / "tissue_positions.csv", index=False)

    # 4. Counts: features x barcodes, compressed by barcode, as Space Ranger writes them.
    indices = np.sort(np.stack([rng.choice(N_GENES, NONZERO_PER_SPOT, replace=False) for _ in range(N_SPOTS)]), axis=1)
    data = rng.poisson(2.0, size=indices.shape).astype(np.int32) + 1
    matrix = sp.csc_matrix(
        (data.ravel(), indices.ravel(), np.arange(0, N_SPOTS * NONZERO_PER_SPOT + 1, NONZERO_PER_SPOT)),
        shape=(N_GENES, N_SPOTS),
    )
    with h5py.File(sample_dir / "filtered_feature_bc_matrix.h5", "w") as h5:
        h5.attrs["library_ids"] = np.array([SAMPLE_NAME.encode()])
        group = h5.create_group("matrix")
        group["barcodes"] = np.array([barcode.encode() for barcode in barcodes])
        group.create_dataset("data", data=matrix.data, compression="gzip")
        group.create_dataset("indices", data=matrix.indices.astype(np.int64), compression="gzip")
        group["indptr"] = matrix.indptr.astype(np.int64)
        group["shape"] = np.array(matrix.shape, dtype=np.int32)
        features = group.create_group("features")
        features["id"] = np.array([f"ENSG{index:011d}".encode() for index in range(N_GENES)])
        features["name"] = np.array([f"GENE{index}".encode() for index in range(N_GENES)])
        features["feature_type"] = np.array([b"Gene Expression"] * N_GENES)
        features["genome"] = np.array([b"GRCh38"] * N_GENES)
        features["_all_tag_keys"] = np.array([b"genome"])
    (sample_dir / "COMPLETE").write_text("generated\n")


# Measurement


def measure(data_dir: Path, run_dir: Path) -> dict:
    """Run ``prepare`` on the benchmark sample and return timings and peak RSS of this process."""
    started = time.perf_counter()
    from stdiff.prepare import PrepareConfig, prepare

    imported = time.perf_counter()
    config = PrepareConfig(data_dir=str(data_dir), train_samples=(SAMPLE_NAME,), patch_size=PATCH_SIZE,
                           resolution=RESOLUTION, n_genes=50, min_counts=0)
    summary = prepare(run_dir, config, overwrite=True)
    finished = time.perf_counter()
    patches = np.load(run_dir / "data" / SAMPLE_NAME / "patches.npy", mmap_mode="r")
    return {
        "import_s": round(imported - started, 2),
        "prepare_s": round(finished - imported, 2),
        "wall_s": round(finished - started, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
        "spots": summary[SAMPLE_NAME]["spots_kept"],
        "image_source": summary[SAMPLE_NAME]["image_source"],
        "patches_shape": list(patches.shape),
        "patches_std": round(float(patches[::50].std()), 2),
    }


# Driver


def _machine() -> dict:
    cpu_model = ""
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(memory_gb, 1),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "stdiff-reader-benchmark",
                        help="folder for the generated sample and the run folder (about 1 GB)")
    parser.add_argument("--note", default="", help="free text stored in the results, such as other load")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data_dir = args.work_dir / "data"
    sample_dir = data_dir / SAMPLE_NAME

    if args.generate:
        generate(sample_dir)
        return 0
    if args.measure:
        print(json.dumps(measure(data_dir, args.work_dir / "run")))
        return 0

    script = [sys.executable, str(Path(__file__).resolve()), "--work-dir", str(args.work_dir)]
    if not (sample_dir / "COMPLETE").is_file():
        started = time.perf_counter()
        subprocess.run([*script, "--generate"], check=True)
        logger.info("Generated the sample in %.0f s", time.perf_counter() - started)
    machine_before = _machine()
    output = subprocess.run([*script, "--measure"], check=True, capture_output=True, text=True, cwd=PROJECT_DIR)
    result = json.loads(output.stdout.strip().splitlines()[-1])

    record = {
        "benchmark": "reader: prepare (read_visium + open_tissue_image + extract_patches + expression_matrix)",
        "sample": {
            "spots": N_SPOTS,
            "genes": N_GENES,
            "nonzero_per_spot": NONZERO_PER_SPOT,
            "fullres": f"{SIDE} x {SIDE} RGB BigTIFF, {TILE} px tiles, deflate",
            "patch_size_fullres_px": PATCH_SIZE,
            "resolution_px": RESOLUTION,
        },
        "result": result,
        "targets": {"wall_s": TARGET_WALL_S, "peak_rss_gb": TARGET_PEAK_RSS_GB},
        "meets_targets": result["wall_s"] < TARGET_WALL_S and result["peak_rss_gb"] < TARGET_PEAK_RSS_GB,
        "machine": machine_before,
        "command": shlex.join(["python", "benchmarks/reader_benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
        "note": args.note,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(record, indent=2) + "\n")
    logger.info("Wrote %s: %s", RESULTS_PATH, json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
