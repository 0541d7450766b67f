"""`palette` command line: each subcommand parses its flags and calls one library function.

    palette train --config configs/tiny.yaml --set train.steps=200 --run-dir runs/tiny
    palette sample --checkpoint runs/tiny --task inpainting --input inputs/ --mask masks/ --output out/
    palette sample --task jpeg --input photo.jpg --output restored.png        # the shipped model
    palette extend photo.jpg --right 512 --output wider.png
    palette degrade --task jpeg --input photos/ --output evalset/ --size 64
    palette evaluate --pred out/ --target evalset/targets --out results.json
    palette demo
    palette serve
    palette study serve --real eval/targets --fake out/palette-64_inpainting
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import SamplerName
from .masks import MASK_KINDS
from .tasks import TASKS

SAMPLERS = list(SamplerName.__args__)
PRECISIONS = ["fp32", "bf16"]


def _train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .training import train

    if args.resume:
        if args.config or args.overwrite or args.run_dir:
            raise SystemExit("palette train: --resume RUN_DIR continues that run; it takes no --config, "
                             "--overwrite or --run-dir")
        from .config import apply_overrides, config_from_dict, config_to_dict
        from .training import resume_config

        config = config_from_dict(apply_overrides(config_to_dict(resume_config(args.resume)), args.set))
        train(config, args.resume, resume=True)
        return
    if not args.config:
        raise SystemExit("palette train: --config FILE is required (or --resume RUN_DIR)")
    config = load_config(args.config, args.set)
    run_dir = args.run_dir or Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    train(config, run_dir, overwrite=args.overwrite)


def _sample(args: argparse.Namespace) -> None:
    from .demo import shipped_model_path
    from .folders import sample_folder

    written = sample_folder(args.checkpoint or shipped_model_path(), args.task, args.input, args.output, mask=args.mask,
                            sampler=args.sampler, steps=args.steps, num_samples=args.num_samples, seed=args.seed,
                            batch_size=args.batch_size, device=args.device, precision=args.precision,
                            preview=args.preview, tile=args.tile, overlap=args.overlap, overwrite=args.overwrite,
                            guidance=args.guidance, strength=args.strength)
    print(f"wrote {len(written)} image(s) to {args.output}")


def _extend(args: argparse.Namespace) -> None:
    from .demo import shipped_model_path
    from .folders import extend_file

    written = extend_file(args.checkpoint or shipped_model_path(), args.image, args.output, left=args.left,
                          right=args.right, top=args.top, bottom=args.bottom, sampler=args.sampler, steps=args.steps,
                          seed=args.seed, device=args.device, precision=args.precision, preview=args.preview,
                          overwrite=args.overwrite)
    print(f"wrote {written}")


def _degrade(args: argparse.Namespace) -> None:
    from .degrade import degrade_folder

    count = degrade_folder(args.task, args.input, args.output, seed=args.seed, size=args.size,
                           mask_kind=args.mask_kind, quality=args.quality)
    print(f"wrote {count} degraded example(s) to {args.output}")


def _evaluate(args: argparse.Namespace) -> None:
    from .baselines import evaluate_baselines
    from .evaluate import evaluate_folders, format_table
    from .report import baseline_table

    options = dict(metrics=args.metrics.split(",") if args.metrics else None, inception_weights=args.inception_weights,
                   resnet50_weights=args.resnet50_weights, inception_v1_weights=args.inception_v1_weights,
                   lpips_weights=args.lpips_weights, reference_stats=args.reference_stats, labels=args.labels,
                   device=args.device, batch_size=args.batch_size)
    results = evaluate_folders(args.pred, args.target, input_dir=args.input, save_stats=args.save_stats,
                               model=args.model, task=args.task, **options)
    if args.input and not args.no_baselines:
        results["baselines"] = evaluate_baselines(args.task, args.input, args.target, **options)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(format_table(results))
    if "baselines" in results:
        print("\n" + baseline_table(results))


def _baseline(args: argparse.Namespace) -> None:
    from .baselines import baseline_folder

    written = baseline_folder(args.task, args.method, args.input, args.output, mask_dir=args.mask)
    print(f"wrote {len(written)} image(s) to {args.output}")


def _report(args: argparse.Namespace) -> None:
    from .report import render_report

    print(f"wrote {render_report(args.results, args.out)}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(output=args.output, input=args.input, checkpoint=args.checkpoint, steps=args.steps, device=args.device,
             full_size=not args.no_full_size)


def _export(args: argparse.Namespace) -> None:
    from .checkpoint import export_weights

    written = export_weights(args.checkpoint, args.out, half=not args.fp32, overrides=args.set,
                             overwrite=args.overwrite)
    print(f"wrote {written}")


def _data(args: argparse.Namespace) -> None:
    if args.dataset == "shard":
        from .shards import write_shards

        shards = write_shards(args.input, args.output, shard_size=args.shard_size, seed=args.seed)
        print(f"wrote {len(shards)} shard(s) to {args.output}")
        return
    import logging

    from .wallpapers import build_wallpapers

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = build_wallpapers(args.out, short_side=args.short_side, seed=args.seed, val_fraction=args.val_fraction,
                           install=not args.no_install)
    print(f"dataset written to {out}")


def _bench(args: argparse.Namespace) -> None:
    from .bench import DEFAULT_SAMPLERS, PARTS, run_bench
    from .bench_images import QUALITY_SAMPLERS, run_profile, run_quality

    samplers = args.samplers.split(",") if args.samplers else None
    for flag, checkpoint in (("--quality", args.quality), ("--profile", args.profile)):
        if checkpoint and not args.data:
            raise SystemExit(f"palette bench: {flag} CHECKPOINT needs --data DIR")
    if args.profile:
        if not args.task or (samplers and len(samplers) > 1):
            raise SystemExit("palette bench: --profile needs --task, and at most one --samplers NAME:STEPS")
        run_profile(args.profile, args.data, args.task, sampler=samplers[0] if samplers else None,
                    device=args.device, seed=args.seed, append_to=args.out)
        return
    if args.quality:
        run_quality(args.quality, args.data, task=args.task, samplers=samplers or QUALITY_SAMPLERS,
                    reference=args.reference, count=args.count, batch_size=args.batch_size, device=args.device,
                    seed=args.seed, append_to=args.out)
        return
    run_bench(preset=args.preset, image_size=args.size, batch_size=args.batch_size, device=args.device,
              steps=args.steps, samplers=samplers or DEFAULT_SAMPLERS, sample_batch=args.sample_batch,
              compile=not args.no_compile, backend=args.backend,
              parts=args.parts.split(",") if args.parts else PARTS, data=args.data, overrides=args.set,
              quick=args.quick, append_to=args.out)


def _ui_ready(command: str) -> None:
    """Stop with one line when the ui extra (gradio) is missing, before any model loads."""
    from .serve import import_gradio

    try:
        import_gradio()
    except ModuleNotFoundError as error:
        raise SystemExit(f"palette {command}: error: {error}") from None


def _serve(args: argparse.Namespace) -> None:
    from .serve import serve

    _ui_ready("serve")
    serve(args.checkpoint, host=args.host, port=args.port, device=args.device)


def _study(args: argparse.Namespace) -> None:
    if args.action == "report":
        from .study import format_report, fool_rates

        print(format_report(fool_rates(args.db)))
        return
    from .study import serve_study

    _ui_ready("study serve")
    serve_study(args.real, args.fake, db=args.db, seconds=args.seconds, seed=args.seed, model=args.model,
                task=args.task, host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palette", description="Palette image-to-image diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model from a YAML config, or resume a run")
    train.add_argument("--config", help="YAML config file (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. train.steps=1000 (repeatable)")
    train.add_argument("--run-dir", type=Path, help="where checkpoints, logs and samples go")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="if --run-dir holds a run, rename it to RUN_DIR.old-<time> and start afresh")
    train.set_defaults(handler=_train)

    sample = commands.add_parser("sample", help="restore degraded images with a trained model (no ground truth)")
    sample.add_argument("--checkpoint", help="a .safetensors file, checkpoint or run folder, or a bundled model: "
                        "multitask (the default) or jpeg (more of a heavy JPEG's blocks out of a whole photo)")
    sample.add_argument("--task", required=True, choices=list(TASKS))
    sample.add_argument("--input", required=True, help="a degraded image or a folder of them")
    sample.add_argument("--mask", help="mask PNG or folder of masks named like the inputs (white = generate)")
    sample.add_argument("--output", required=True,
                        help="a folder (gets <stem>.png per input), or for one input file an image path (photo.png)")
    sample.add_argument("--sampler", choices=SAMPLERS, help="default: the model's configured sampler")
    sample.add_argument("--steps", type=int, help="sampling steps, 1 to 1000 (default: the model's configured steps)")
    sample.add_argument("--guidance", type=float,
                        help="guidance weight, 1 (off) to 10, away from the model's twin (sampling.guide) or else its "
                             "perturbed-attention self (default: the model's for the task)")
    sample.add_argument("--strength", type=float,
                        help="start from the input's own estimate re-noised this share of the way, in (0, 1]; "
                             "1 starts from pure noise (default: the model's for the task)")
    sample.add_argument("--num-samples", type=int, default=1, help="samples per input, written as <stem>_<k>.png")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch-size", type=int, default=8, help="tiles per network call (default: 8)")
    sample.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    sample.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="network precision while sampling (bf16 autocast applies on CUDA only)")
    sample.add_argument("--preview", metavar="DIR", help="write each coarse result here first, named like the output")
    sample.add_argument("--overwrite", action="store_true",
                        help="redo outputs that exist (default: skip them, so a rerun resumes an interrupted folder)")
    sample.add_argument("--tile", type=int, help="tile size in px (default: the task's)")
    sample.add_argument("--overlap", type=int, help="tile overlap in px (default: the task's)")
    sample.set_defaults(handler=_sample)

    extend = commands.add_parser("extend", help="grow an image by any number of pixels per side (uncropping)")
    extend.add_argument("image")
    for side in ("left", "right", "top", "bottom"):
        extend.add_argument(f"--{side}", type=int, default=0, metavar="PIXELS")
    extend.add_argument("--output", required=True, help="the grown image (PNG)")
    extend.add_argument("--checkpoint", help="a file, folder or bundled model name (default: multitask)")
    extend.add_argument("--sampler", choices=SAMPLERS, help="default: the model's configured sampler")
    extend.add_argument("--steps", type=int, help="sampling steps, 1 to 1000 (default: the model's configured steps)")
    extend.add_argument("--seed", type=int, default=0)
    extend.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    extend.add_argument("--precision", choices=PRECISIONS, default="fp32")
    extend.add_argument("--preview", metavar="PATH", help="write the coarse result here first")
    extend.add_argument("--overwrite", action="store_true", help="replace an existing --output or --preview")
    extend.set_defaults(handler=_extend)

    degrade = commands.add_parser("degrade", help="make an evaluation set: inputs/, masks/, targets/")
    degrade.add_argument("--task", required=True, choices=list(TASKS))
    degrade.add_argument("--input", required=True, help="a clean image or a folder of them")
    degrade.add_argument("--output", required=True)
    degrade.add_argument("--seed", type=int, default=0)
    degrade.add_argument("--size", type=int, help="centre-crop and resize to SIZE x SIZE")
    degrade.add_argument("--mask-kind", choices=MASK_KINDS, help="inpainting masks or uncropping side")
    degrade.add_argument("--quality", type=int, help="JPEG quality (default: drawn from Palette's distribution)")
    degrade.set_defaults(handler=_degrade)

    evaluate = commands.add_parser("evaluate", help="metrics of predictions against targets")
    evaluate.add_argument("--pred", required=True)
    evaluate.add_argument("--target", required=True)
    evaluate.add_argument("--input", help="the degraded inputs: also scored, with OpenCV's restorations, beside it")
    evaluate.add_argument("--no-baselines", action="store_true",
                          help="with --input, do not score the input and OpenCV's restorations")
    evaluate.add_argument("--metrics", help="comma-separated metric names (default: all available)")
    for flag in ("inception-weights", "resnet50-weights", "inception-v1-weights", "lpips-weights",
                 "reference-stats", "labels", "save-stats"):
        evaluate.add_argument(f"--{flag}")
    evaluate.add_argument("--out", help="write the results as JSON here")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--model", help="model name recorded in the results (for reports)")
    evaluate.add_argument("--task", help="task name recorded in the results (for reports)")
    evaluate.set_defaults(handler=_evaluate)

    baseline = commands.add_parser("baseline", help="classical OpenCV restoration of a folder, to compare against")
    baseline.add_argument("--task", required=True, choices=list(TASKS))
    baseline.add_argument("--method", required=True, help="one of the task's methods (a wrong name lists them)")
    baseline.add_argument("--input", required=True, help="a degraded input (<stem>.png or .jpg) or a folder of them")
    baseline.add_argument("--mask", help="folder of masks named <stem>.png (white = fill); inpainting methods")
    baseline.add_argument("--output", required=True, help="writes <stem>.png per input")
    baseline.set_defaults(handler=_baseline)

    report = commands.add_parser("report", help="paper-style tables from evaluate results")
    report.add_argument("results", nargs="+")
    report.add_argument("--out", required=True)
    report.set_defaults(handler=_report)

    demo = commands.add_parser("demo", help="all four tasks on example images (or --input) -> demo/index.html")
    demo.add_argument("--input", help="your own image instead of the bundled examples")
    demo.add_argument("--output", default="demo")
    demo.add_argument("--checkpoint", help="a file, folder or bundled model name (default: multitask)")
    demo.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--no-full-size", action="store_true", help="only the model-size grids (faster)")
    demo.set_defaults(handler=_demo)

    export = commands.add_parser("export", help="EMA weights of a checkpoint as one self-contained .safetensors file")
    export.add_argument("--checkpoint", required=True, action="append",
                        help="a run folder, checkpoint folder or .safetensors file; given more than once, the "
                             "uniform mean of their weights (branches of one trunk)")
    export.add_argument("--out", required=True)
    export.add_argument("--fp32", action="store_true", help="keep float32 storage (default: float16)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    export.add_argument("--set", action="append", default=[], metavar="sampling.KEY=VALUE",
                        help="change a stored sampling default, e.g. sampling.task_steps.jpeg=1 (repeatable)")
    export.set_defaults(handler=_export)

    data = commands.add_parser("data", help="build a benchmark dataset, or write images as WebDataset shards")
    datasets = data.add_subparsers(dest="dataset", required=True, metavar="KIND")
    wallpapers = datasets.add_parser("wallpapers", help="the wallpaper benchmark set (Debian's wallpaper packages)")
    wallpapers.add_argument("--out", required=True)
    wallpapers.add_argument("--short-side", type=int, default=768)
    wallpapers.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    wallpapers.add_argument("--val-fraction", type=float, default=0.2)
    wallpapers.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    shard = datasets.add_parser("shard", help="write a folder of images as WebDataset .tar shards for training")
    shard.add_argument("--input", required=True, help="folder of images (searched recursively)")
    shard.add_argument("--output", required=True, help="an empty folder; gets shard-000000.tar, ...")
    shard.add_argument("--shard-size", type=int, default=1000, help="images per shard (default: 1000)")
    shard.add_argument("--seed", type=int, default=0, help="seed of the shuffle applied while writing")
    data.set_defaults(handler=_data)

    bench = commands.add_parser("bench", help="speed benchmarks (or --quality: PSNR/SWD per sampler and steps)")
    bench.add_argument("--preset", default="base", help="network preset (default: base)")
    bench.add_argument("--size", type=int, default=256, help="image size (default: 256)")
    bench.add_argument("--batch-size", type=int, default=16, help="training batch; with --quality, sampling batch")
    bench.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    bench.add_argument("--steps", type=int, default=20, help="timed training steps (default: 20)")
    bench.add_argument("--samplers", help="comma-separated NAME:STEPS, e.g. ddpm:1000,dpmpp:20")
    bench.add_argument("--sample-batch", type=int, default=32, help="the larger sampling batch (default: 32)")
    bench.add_argument("--parts", help="comma-separated subset of train,nfe,sample,data (default: all)")
    bench.add_argument("--data", help="image folder: adds data-loading rows; with --quality, the validation images")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. network.gradient_checkpointing=true (repeatable)")
    bench.add_argument("--backend", default="inductor", help="torch.compile backend (default: inductor)")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    bench.add_argument("--quick", action="store_true", help="few repeats and small sampling batches (smoke test)")
    bench.add_argument("--out", default="BENCHMARKS.md", help="append the table here (default: BENCHMARKS.md)")
    bench.add_argument("--quality", metavar="CHECKPOINT", help="measure PSNR/SWD/time per sampler on --data")
    bench.add_argument("--profile", metavar="CHECKPOINT",
                       help="time `palette sample` on --data by part: network, conditioning, pasting, I/O")
    bench.add_argument("--task", choices=list(TASKS),
                       help="with --quality: task (default: the model's first); with --profile: required")
    bench.add_argument("--reference", default="ddpm:1000", help="with --quality: reference sampler")
    bench.add_argument("--count", type=int, help="with --quality: use the first COUNT images")
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(handler=_bench)

    serve = commands.add_parser("serve", help="the browser UI (gradio) on this machine; needs pip install -e '.[ui]'")
    serve.add_argument("--checkpoint", action="append",
                       help="a file, folder or bundled model name; repeatable (default: multitask and jpeg)")
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, help="default: 7860")
    serve.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    serve.set_defaults(handler=_serve)

    study = commands.add_parser("study", help="the paper's human evaluation: raters tell photos from model outputs")
    actions = study.add_subparsers(dest="action", required=True, metavar="ACTION")
    study_serve = actions.add_parser("serve", help="show raters real/model pairs in the browser, answers to SQLite")
    study_serve.add_argument("--real", required=True, help="folder of real photos (<stem>.png, .jpg …)")
    study_serve.add_argument("--fake", required=True, action="append",
                             help="folder of model outputs named like the real photos (repeatable); its name "
                                  "gives the model and task, e.g. palette-64_inpainting")
    study_serve.add_argument("--seconds", type=float, default=3.0, help="how long each pair is shown (default: 3)")
    study_serve.add_argument("--db", default="study.sqlite", help="SQLite file the answers go to")
    study_serve.add_argument("--seed", type=int, default=0, help="seed of the pair order and sides")
    study_serve.add_argument("--model", help="model name (default: from the --fake folder name)")
    study_serve.add_argument("--task", choices=list(TASKS), help="task (default: from the --fake folder name)")
    study_serve.add_argument("--host", help="address to bind (default: 127.0.0.1, this machine only)")
    study_serve.add_argument("--port", type=int, help="default: 7861")
    study_report = actions.add_parser("report", help="fool rate per model and task with 95%% Wilson intervals")
    study_report.add_argument("db")
    study.set_defaults(handler=_study)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a subcommand; a bad input, checkpoint, config, option or file is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, OSError) as error:  # ImageError, CheckpointError and ConfigError are ValueErrors
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        print(f"palette {args.command}: error: {' '.join(lines)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
