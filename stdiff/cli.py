"""The ``stdiff`` command line: every step the app runs, resumable, writing into a run folder."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
from pathlib import Path

logger = logging.getLogger("stdiff")


def _add_prepare(subparsers) -> None:
    from .prepare import PrepareConfig

    defaults = PrepareConfig(data_dir=".", train_samples=("x",))
    p = subparsers.add_parser("prepare", help="Read samples, tile patches at spots and build expression vectors.")
    p.add_argument("--run-dir", required=True, type=Path, help="Folder the run writes into.")
    p.add_argument("--data-dir", type=Path, help="Folder with the sample folders (default: STDIFF_DATA_DIR).")
    p.add_argument("--train", nargs="*", default=[], metavar="SAMPLE", help="Training sample folder names.")
    p.add_argument("--eval", nargs="*", default=[], metavar="SAMPLE", help="Held-out sample folder names.")
    p.add_argument("--blocked", nargs="*", default=[], metavar="SAMPLE",
                   help="Sample folder names split in spatial blocks: some blocks train, the others are held out, "
                        "with a gap between them (see --block-grid, --eval-block-fraction, --block-gap).")
    p.add_argument("--block-grid", type=int, default=defaults.block_grid,
                   help="Blocked samples are cut into an N x N grid of blocks (default %(default)s).")
    p.add_argument("--eval-block-fraction", type=float, default=defaults.eval_block_fraction,
                   help="Blocks are held out until this share of a blocked sample's spots is reached "
                        "(default %(default)s).")
    p.add_argument("--block-gap", type=int, default=None,
                   help="Full-resolution pixels kept between evaluated and training patches; spots closer are "
                        "used for neither (default: the patch size).")
    p.add_argument("--split-seed", type=int, default=defaults.split_seed,
                   help="Seed of the choice of held-out blocks (default %(default)s).")
    p.add_argument("--n-variable-genes", type=int, default=defaults.n_variable_genes,
                   help="Most variable genes kept for the evaluation's expression round trip (default %(default)s).")
    p.add_argument("--patch-size", type=int, default=defaults.patch_size,
                   help="Crop side around each spot, in full-resolution pixels (default %(default)s).")
    p.add_argument("--resolution", type=int, default=defaults.resolution,
                   help="Patch side after resizing, in pixels; a multiple of 8 (default %(default)s).")
    p.add_argument("--n-genes", type=int, default=defaults.n_genes,
                   help="Number of top expressed genes (default %(default)s).")
    p.add_argument("--min-counts", type=int, default=defaults.min_counts,
                   help="Drop spots with fewer UMIs (default %(default)s).")
    p.add_argument("--overwrite", action="store_true", help="Prepare again even if the run has other settings.")


def _run_prepare(args) -> None:
    from . import settings
    from .prepare import PrepareConfig, prepare

    config = PrepareConfig(
        data_dir=str(args.data_dir or settings.data_dir()),
        train_samples=tuple(args.train),
        eval_samples=tuple(args.eval),
        blocked_samples=tuple(args.blocked),
        block_grid=args.block_grid,
        eval_block_fraction=args.eval_block_fraction,
        block_gap=args.block_gap,
        split_seed=args.split_seed,
        n_variable_genes=args.n_variable_genes,
        patch_size=args.patch_size,
        resolution=args.resolution,
        n_genes=args.n_genes,
        min_counts=args.min_counts,
    )
    summary = prepare(args.run_dir, config, overwrite=args.overwrite)
    for name, info in summary.items():
        logger.info("%s: %d of %d spots kept (%d below %d UMIs), image: %s", name, info["spots_kept"],
                    info["spots_read"], info["spots_dropped_min_counts"], info["min_counts"], info.get("image_source"))
        if "split" in info:
            logger.info("%s: part of blocked sample %s (%d training, %d evaluation, %d gap spots)", name,
                        info["blocked_sample"], info["split"]["train"], info["split"]["eval"], info["split"]["gap"])


def _add_dataclass_options(parser, config_class, skip=()) -> None:
    """Add ``--field-name`` options for the fields of a training config dataclass."""
    for field in dataclasses.fields(config_class):
        if field.name in skip:
            continue
        option = "--" + field.name.replace("_", "-")
        default = field.default
        if isinstance(default, bool):
            parser.add_argument(option, default=default, action=argparse.BooleanOptionalAction,
                                help=f"(default {default})")
        elif isinstance(default, tuple):
            parser.add_argument(option, type=int, nargs="+", default=default, help=f"(default {default})")
        else:
            parser.add_argument(option, type=type(default), default=default, help=f"(default {default})")


def _dataclass_from_args(config_class, args):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_class(**values)


def build_parser() -> argparse.ArgumentParser:
    from .reconstruct import INIT_CHOICES, ReconstructConfig
    from .training.clip import ClipTrainConfig
    from .training.ldm import LdmTrainConfig

    parser = argparse.ArgumentParser(prog="stdiff", description="Generate H&E patches from spatial expression.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_prepare(subparsers)

    p = subparsers.add_parser("train-clip", help="Train the contrastive patch-expression model.")
    p.add_argument("run_dir", type=Path)
    _add_dataclass_options(p, ClipTrainConfig)

    p = subparsers.add_parser("train-ldm", help="Train the latent diffusion model (needs train-clip).")
    p.add_argument("run_dir", type=Path)
    _add_dataclass_options(p, LdmTrainConfig)

    p = subparsers.add_parser("reconstruct", help="Generate patches and expression for every spot of samples.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--samples", nargs="*", help="Prepared sample names (default: the run's evaluation samples).")
    p.add_argument("--name", help="Store a variant in RUN_DIR/reconstruct-NAME, to evaluate beside the default.")
    p.add_argument("--overwrite", action="store_true")
    _add_dataclass_options(p, ReconstructConfig)

    p = subparsers.add_parser("reconstruct-sample",
                              help="Reconstruct expression of sample folders with a model, for the app's heatmaps.")
    p.add_argument("sample_dirs", nargs="+", type=Path, help="Space Ranger output folders.")
    p.add_argument("--model-dir", type=Path, help="Model folder (default: STDIFF_MODEL_DIR or models/demo).")
    p.add_argument("--out-dir", type=Path, help="Output folder (default: MODEL_DIR/reconstructions).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-scale", type=float, default=ReconstructConfig.guidance_scale)
    p.add_argument("--num-inference-steps", type=int, default=ReconstructConfig.num_inference_steps)
    p.add_argument("--init", choices=INIT_CHOICES, default=ReconstructConfig.init,
                   help="Start from noise, or from the training patch retrieved in CLIP space (default %(default)s).")
    p.add_argument("--strength", type=float, default=ReconstructConfig.strength,
                   help="Share of the noise schedule applied to a retrieved start patch (default %(default)s).")

    p = subparsers.add_parser("evaluate", help="Score reconstructions against real patches and baselines.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--samples", nargs="*")
    p.add_argument("--variants", nargs="*", default=[],
                   help="Named reconstructions (stdiff reconstruct --name) scored as extra methods.")
    p.add_argument("--seed", type=int, default=0)

    p = subparsers.add_parser("export", help="Copy a trained run into a model folder the app loads.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--half", action="store_true",
                   help="Store the UNet weights as float16 (half the size; they load back as float32).")

    p = subparsers.add_parser("arrange-geo",
                              help="Make one Space Ranger folder per sample from a GEO download with every file in "
                                   "one folder (GSM..._tissue_positions_list.csv.gz and so on).")
    p.add_argument("folder", type=Path, help="The folder the GEO files were unpacked into.")
    p.add_argument("--out", required=True, type=Path, help="Data folder to write the sample folders into.")
    p.add_argument("--move", action="store_true",
                   help="Move the files instead of linking or copying them (saves disk space).")
    p.add_argument("--overwrite", action="store_true", help="Arrange again samples whose folder exists.")

    p = subparsers.add_parser("cache", help="Show the cache folder's contents (STDIFF_CACHE_DIR); --clear removes them.")
    p.add_argument("--clear", nargs="*", metavar="PART",
                   help="Remove these parts: uploads, tiles, reconstructions, taef2, or all. Without a part: uploads, "
                        "tiles and reconstructions (downloaded weights stay).")
    p.add_argument("--older-than", type=float, metavar="DAYS",
                   help="With --clear, remove only entries not written to for this many days.")
    p.add_argument("--dry-run", action="store_true", help="With --clear, list what would be removed and keep it.")
    return parser


def _run_arrange_geo(args) -> None:
    from .io import read_visium
    from .io.errors import VisiumReadError
    from .io.geo import arrange_flat_folder

    written, skipped = arrange_flat_folder(args.folder, args.out, move=args.move, overwrite=args.overwrite)
    readable = 0
    for sample_dir in written:
        try:
            adata = read_visium(sample_dir)
        except VisiumReadError as error:
            logger.warning("%s was arranged but cannot be read: %s", sample_dir, error)
            continue
        readable += 1
        logger.info("%s: %d spots x %d genes.", sample_dir, adata.n_obs, adata.n_vars)
    if not written:
        raise ValueError(f"No sample of {args.folder} was arranged; see the warnings above.")
    if not readable:
        raise ValueError(f"None of the {len(written)} samples arranged from {args.folder} can be read; see the "
                         "warnings above.")
    logger.info("Arranged %d samples into %s; %d skipped. Point STDIFF_DATA_DIR (or the app's data folder) at %s.",
                len(written), args.out, len(skipped), args.out)


def _run_cache(args) -> None:
    from .cache import DEFAULT_CLEAR, cache_entries, clear_cache, resolve_parts, summary_lines
    from .units import format_bytes

    if args.clear is None:
        if args.older_than is not None or args.dry_run:
            raise ValueError("--older-than and --dry-run apply to --clear; add --clear to remove entries.")
        for line in summary_lines(cache_entries()):
            print(line)
        return
    parts = resolve_parts(args.clear or DEFAULT_CLEAR)
    removed, failed = clear_cache(parts, older_than_days=args.older_than, dry_run=args.dry_run)
    verb = "Would remove" if args.dry_run else "Removed"
    for entry in removed:
        logger.info("%s %s (%s)", verb, entry.path, format_bytes(entry.size_bytes))
    logger.info("%s %d entries, %s, from %s.", verb, len(removed), format_bytes(sum(e.size_bytes for e in removed)),
                ", ".join(parts))
    if failed:
        raise ValueError(f"{len(failed)} entries were not removed (see the warnings above); check their permissions.")


def _run_export(args) -> None:
    from .checkpoint_io import write_json_atomically
    from .pipeline import MODEL_CARD, read_model_card
    from .split import SPLIT_FILE
    from .training.clip import CLIP_DIR, REFERENCE_NAME
    from .training.ldm import LDM_DIR

    run_dir, out = args.run_dir, args.model_dir
    for needed in (CLIP_DIR, LDM_DIR, REFERENCE_NAME, "genes.json"):
        if not (run_dir / needed).exists():
            raise FileNotFoundError(f"{run_dir / needed} is missing: train the run fully before exporting.")
    out.mkdir(parents=True, exist_ok=True)
    for part in (CLIP_DIR, LDM_DIR):
        (out / part).mkdir(exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(run_dir / part / name, out / part / name)
    if args.half:
        from safetensors.torch import load_file, save_file

        path = out / LDM_DIR / "model.safetensors"
        tensors = load_file(str(path))
        tensors = {key: value.half() if key.startswith("unet.") else value for key, value in tensors.items()}
        save_file(tensors, str(path))
    shutil.copy2(run_dir / REFERENCE_NAME, out / REFERENCE_NAME)
    shutil.copy2(run_dir / "genes.json", out / "genes.json")
    write_json_atomically(out / MODEL_CARD, read_model_card(run_dir))
    if (run_dir / SPLIT_FILE).is_file():
        shutil.copy2(run_dir / SPLIT_FILE, out / SPLIT_FILE)
    evaluation = run_dir / "evaluate"
    if evaluation.is_dir():
        (out / "evaluation").mkdir(exist_ok=True)
        for name in ("metrics.json", "per_spot.csv", "report.md", SPLIT_FILE):
            if (evaluation / name).is_file():
                shutil.copy2(evaluation / name, out / "evaluation" / name)
    logger.info("Exported %s to %s", run_dir, out)


def _run_reconstruct_sample(args) -> None:
    from tqdm.auto import tqdm

    from . import settings
    from .io import open_tissue_image, read_visium
    from .patches import extract_patches
    from .pipeline import StdiffPipeline
    from .reconstruct import ReconstructConfig, reconstruct_to_file

    model_dir = args.model_dir or settings.model_dir()
    pipeline = StdiffPipeline.from_pretrained(model_dir)
    out_dir = args.out_dir or model_dir / "reconstructions"
    config = ReconstructConfig(n_per_spot=1, seed=args.seed, guidance_scale=args.guidance_scale,
                               num_inference_steps=args.num_inference_steps, init=args.init, strength=args.strength)
    for sample_dir in args.sample_dirs:
        adata = read_visium(sample_dir)
        real = extract_patches(adata, image=open_tissue_image(adata), patch_size=pipeline.patch_size,
                               resolution=pipeline.resolution)
        with tqdm(total=adata.n_obs, desc=sample_dir.name, unit="spot") as bar:
            path = reconstruct_to_file(pipeline, adata, out_dir / f"{sample_dir.name}.npz", config,
                                       callback=lambda done, total: bar.update(done - bar.n), real_patches=real)
        logger.info("Wrote %s", path)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "prepare":
            _run_prepare(args)
        elif args.command == "train-clip":
            from .training.clip import ClipTrainConfig, train_clip

            train_clip(args.run_dir, _dataclass_from_args(ClipTrainConfig, args))
        elif args.command == "train-ldm":
            from .training.ldm import LdmTrainConfig, train_ldm

            train_ldm(args.run_dir, _dataclass_from_args(LdmTrainConfig, args))
        elif args.command == "reconstruct":
            from .reconstruct import ReconstructConfig, reconstruct

            reconstruct(args.run_dir, _dataclass_from_args(ReconstructConfig, args), samples=args.samples,
                        overwrite=args.overwrite, name=args.name)
        elif args.command == "reconstruct-sample":
            _run_reconstruct_sample(args)
        elif args.command == "evaluate":
            from .evaluate import evaluate

            evaluate(args.run_dir, samples=args.samples, seed=args.seed, variants=args.variants)
            logger.info("Report: %s", args.run_dir / "evaluate" / "report.md")
        elif args.command == "export":
            _run_export(args)
        elif args.command == "arrange-geo":
            _run_arrange_geo(args)
        elif args.command == "cache":
            _run_cache(args)
    except (FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        logger.warning("Interrupted; the last checkpoint is kept and the same command resumes from it.")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
