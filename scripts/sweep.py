"""Network width and training resolution at a fixed CPU budget: which gives the best validation?

    python scripts/sweep.py --minutes 12 --out runs/sweep        # needs pip install -e '.[report]' for the plot

Every point trains the default recipe (configs/default-cpu.yaml) from scratch with one change, at a constant lr
(no cool-down, so that each quarter is a point of one run), for as many steps as its throughput on this machine,
measured first in a short pilot run, fits in the budget. Each quarter of the budget is a checkpoint; its EMA
weights restore 64 validation crops (the centre and three random crops of each validation image) for every set of
scripts/validate.sh, with the shipped model's sampling defaults. Each row of OUT/results.jsonl is one (point,
checkpoint, set); OUT/sweep.png plots them. A point whose run is complete is not trained again, so a stopped sweep
goes on where it was. Run it on an otherwise idle machine: the budget is wall time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from palette.checkpoint import load_config_only
from palette.config import SamplingConfig, load_config
from palette.data import evaluation_crops
from palette.imageio import pil_to_tensor
from palette.inference import Model, load_model, restore
from palette.metrics import sliced_wasserstein_distance
from palette.metrics.pixel import colourfulness, psnr
from palette.tasks import Task, get_task, source_estimate
from palette.training import train

SHIPPED = "src/palette/assets/palette-multitask-64.safetensors"  # its per-task sampling defaults are used
# label -> overrides of the default recipe; 32 px crops at half the crop scale see the same pixel scale.
POINTS = {
    "16 ch, 64 px (default)": [],
    "24 ch, 64 px": ["network.base_channels=24"],
    "32 ch, 64 px": ["network.base_channels=32"],
    "16 ch, 32 px": ["data.image_size=32", "data.crop_scale=[0.175,0.5]"],
}
SETS = {  # as scripts/validate.sh
    "colorization": ("colorization", {}),
    "inpainting_free_form_20_30": ("inpainting", {"mask_kind": "free_form_20_30"}),
    "inpainting_centre": ("inpainting", {"mask_kind": "centre"}),
    "uncropping_right": ("uncropping", {"side": "right"}),
    "jpeg_q10": ("jpeg", {"quality": 10}),
    "jpeg_q20": ("jpeg", {"quality": 20}),
}
CHECKPOINTS = 4


def validation_crops(val_list: Path, size: int = 64, seed: int = 123) -> torch.Tensor:
    """The centre crop and three random crops (scale 0.35-1, as in training) of each listed image, [N, 3, H, W]."""
    paths = [val_list.parent / line.strip() for line in val_list.read_text().splitlines() if line.strip()]
    return torch.stack([pil_to_tensor(crop) for crop in evaluation_crops(paths, size, 4, seed)])


@dataclass(frozen=True)
class DegradedSet:
    """One validation set: the crops degraded once, and the scores of the estimate a model starts from."""

    task: Task
    condition: torch.Tensor
    mask: torch.Tensor
    estimate: dict[str, float]


def scores(output: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """PSNR, SWD and colourfulness ÷ the targets' of images [N, 3, H, W] in [-1, 1]."""
    output = output.clamp(-1, 1)
    return {"psnr": float(psnr((output + 1) / 2, (clean + 1) / 2).mean()),
            "swd": float(sliced_wasserstein_distance(output, clean)["value"]),
            "colour": float(colourfulness((output + 1) / 2).mean() / colourfulness((clean + 1) / 2).mean())}


def degraded_sets(clean: torch.Tensor) -> dict[str, DegradedSet]:
    """Every set of SETS, degraded with fixed seeds."""
    sets = {}
    for name, (task_name, options) in SETS.items():
        task = get_task(task_name, **options)
        degraded = [task.degrade(image, np.random.default_rng([1, i])) for i, image in enumerate(clean)]
        condition, mask = torch.stack([d.condition for d in degraded]), torch.stack([d.mask for d in degraded])
        sets[name] = DegradedSet(task, condition, mask, scores(source_estimate(condition, mask), clean))
    return sets


def score(model: Model, clean: torch.Tensor, sets: dict[str, DegradedSet], sampling: SamplingConfig
          ) -> dict[str, dict[str, float]]:
    """Scores per set of the model's restorations (`SET/model`) and of the estimate it starts from (`SET/estimate`)."""
    rows = {}
    for name, item in sets.items():
        steps, guidance, strength = sampling.resolve(item.task.name)
        output = restore(model, item.condition, item.mask, steps=steps, task=item.task, seed=0, guidance=guidance,
                         strength=strength)
        rows[f"{name}/model"], rows[f"{name}/estimate"] = scores(output, clean), item.estimate
    return rows


def throughput(config_overrides: list[str], base: str) -> float:
    """Training images per second of this point, from the last 20 of 40 steps of a throw-away run."""
    overrides = config_overrides + ["train.steps=40", "train.log_every=20", "train.checkpoint_every=40",
                                    "train.sample_every=1000000"]
    with tempfile.TemporaryDirectory() as scratch:
        train(load_config(base, overrides), Path(scratch) / "pilot", progress=False)
        last = (Path(scratch) / "pilot" / "log.jsonl").read_text().splitlines()[-1]
    return json.loads(last)["images_per_second"]


def run_point(label: str, overrides: list[str], args: argparse.Namespace, clean: torch.Tensor,
              sets: dict[str, DegradedSet], sampling: SamplingConfig) -> list[dict]:
    """Train one point for the budget (unless its run is complete) and score its checkpoints."""
    run_dir = args.out / label.split(" (")[0].replace(", ", "-").replace(" ", "")
    done = run_dir / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    overrides = overrides + ["train.decay_steps=0"]
    images_per_second = throughput(overrides, args.config)
    batch = load_config(args.config).train.batch_size
    steps = max(CHECKPOINTS, round(args.minutes * 60 * images_per_second / batch / CHECKPOINTS) * CHECKPOINTS)
    config = load_config(args.config, overrides + [
        f"train.steps={steps}", f"train.checkpoint_every={steps // CHECKPOINTS}",
        f"train.keep_checkpoints={CHECKPOINTS}", "train.sample_every=1000000"])
    started = time.perf_counter()
    train(config, run_dir, overwrite=True, progress=False)
    wall = time.perf_counter() - started
    rows = []
    for quarter in range(1, CHECKPOINTS + 1):
        step = steps // CHECKPOINTS * quarter
        model = load_model(run_dir / "checkpoints" / f"step_{step:08d}", "cpu")
        rows.append({"point": label, "step": step, "images": step * batch,
                     "minutes": args.minutes * quarter / CHECKPOINTS,
                     "parameters": sum(p.numel() for p in model.net.parameters()),
                     "pilot_images_per_second": images_per_second, "train_wall_seconds": wall,
                     "results": score(model, clean, sets, sampling)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "results"}), flush=True)
    done.write_text(json.dumps(rows, indent=1))
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for axis, name in zip(axes.flat, SETS):
        for label in POINTS:
            points = [row for row in rows if row["point"] == label]
            if name == "colorization":
                values = [100 * row["results"][f"{name}/model"]["colour"] for row in points]
            else:
                values = [row["results"][f"{name}/model"]["psnr"] - row["results"][f"{name}/estimate"]["psnr"]
                          for row in points]
            axis.plot([row["minutes"] for row in points], values, marker="o", label=label)
        axis.axhline(0, color="gray", linewidth=0.8)
        axis.set_title(name)
        axis.set_xlabel("training minutes (2-core CPU)")
        axis.set_ylabel("colourfulness, % of the targets'" if name == "colorization"
                        else "PSNR over the input's estimate, dB")
    axes.flat[0].legend(fontsize=8)
    figure.savefig(path, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12, help="training budget per point (default: 12)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--config", default="configs/default-cpu.yaml")
    parser.add_argument("--val", type=Path, default=Path("data/wallpapers/val.txt"))
    args = parser.parse_args()
    clean = validation_crops(args.val)
    sampling = load_config_only(SHIPPED).sampling
    sets = degraded_sets(clean)
    rows = [row for label, overrides in POINTS.items()
            for row in run_point(label, overrides, args, clean, sets, sampling)]
    (args.out / "results.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    plot(rows, args.out / "sweep.png")


if __name__ == "__main__":
    main()
