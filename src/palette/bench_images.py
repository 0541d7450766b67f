"""Benchmarks of a trained model on real images: the quality-versus-steps curve of the samplers, and where the
time of `palette sample` on a folder goes.

    palette bench --quality runs/demo --data photos/ --task inpainting  # PSNR, SWD and s/image per sampler:steps
    palette bench --profile model.safetensors --data crops/ --task jpeg  # network, conditioning, pasting, I/O

Both print a table and append it to BENCHMARKS.md under a heading with the date, device, versions and the command.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from . import folders, inference, samplers
from .bench import bench_command, device_name, format_number, parse_sampler, publish, section_heading, synchronize
from .folders import prepare_input
from .inference import derive_seed, load_model, restore
from .samplers import check_positive
from .tasks import get_task

QUALITY_SAMPLERS = tuple(f"{name}:{steps}" for name in ("ddim", "dpmpp", "unipc") for steps in (10, 20, 25, 50, 100))


def _unit_8bit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] through 8-bit rounding, as a saved PNG would be evaluated."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 255


def run_quality(checkpoint: str | Path, data: str | Path, task: str | None = None,
                samplers: Sequence[str] = QUALITY_SAMPLERS, reference: str = "ddpm:1000", count: int | None = None,
                batch_size: int = 16, device: str | None = None, seed: int = 0,
                append_to: str | Path | None = "BENCHMARKS.md") -> list[dict[str, Any]]:
    """PSNR, SWD and s/image of each sampler:steps on one validation set, against the `reference` sampler.

    The set is `data` degraded by `task` (default: the model's first training task) with degrade_folder, at the
    model's size, so every sampler restores exactly the same inputs with the same seed.
    """
    from .degrade import degrade_folder
    from .metrics.pixel import psnr
    from .metrics.swd import sliced_wasserstein_distance
    from .imageio import list_images, load_image

    for spec in (reference, *samplers):
        parse_sampler(spec)
    check_positive(("--count", count), ("--batch-size", batch_size))
    model = load_model(checkpoint, device)
    task = task or next(iter(model.config.data.tasks))
    size = model.image_size
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        degrade_folder(task, data, folder, seed=seed, size=size)
        inputs = list_images(folder / "inputs")[:count]
        prepared, targets, seeds = [], [], []
        for path in inputs:
            name = path.relative_to(folder / "inputs").with_suffix(".png")
            mask = folder / "masks" / name
            prepared.append(prepare_input(task, path, mask if mask.is_file() else None, size, seed))
            seeds.append(derive_seed(seed, path.name, "0"))
            targets.append(load_image(folder / "targets" / name))
    restored_task = prepared[0].task  # keep_input as `palette sample` applies it
    condition = torch.stack([p.condition for p in prepared])
    mask = torch.stack([p.mask for p in prepared])
    target = _unit_8bit(torch.stack(targets))
    name, steps = parse_sampler(samplers[0] if samplers else reference)
    restore(model, condition[:batch_size], mask[:batch_size], sampler=name, steps=min(steps, 3),
            task=restored_task)  # warm-up

    rows = []
    for spec in (reference, *samplers):
        name, steps = parse_sampler(spec)
        outputs = []
        synchronize(model.device)
        start = time.perf_counter()
        for first in range(0, len(prepared), batch_size):
            outputs.append(restore(model, condition[first:first + batch_size], mask[first:first + batch_size],
                                   sampler=name, steps=steps, seed=seeds[first:first + batch_size],
                                   task=restored_task).cpu())
        synchronize(model.device)
        seconds = (time.perf_counter() - start) / len(prepared)
        output = _unit_8bit(torch.cat(outputs))
        rows.append({"sampler": name, "steps": steps, "psnr": float(psnr(output, target).mean()),
                     "swd": sliced_wasserstein_distance(output, target)["value"], "seconds_per_image": seconds})
    for row in rows:
        row["psnr_change_percent"] = 100 * (row["psnr"] / rows[0]["psnr"] - 1)
        row["swd_change_percent"] = 100 * (row["swd"] / rows[0]["swd"] - 1) if rows[0]["swd"] else math.nan

    lines = ["| sampler | steps | PSNR (dB) | SWD ×1e3 | s/image | PSNR vs reference | SWD vs reference |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['sampler']} | {row['steps']} | {row['psnr']:.2f} | {format_number(row['swd'])} "
                     f"| {format_number(row['seconds_per_image'])} | {row['psnr_change_percent']:+.1f}% "
                     f"| {row['swd_change_percent']:+.1f}% |")
    command = bench_command([("--quality", checkpoint), ("--data", data), ("--task", task),
                        ("--samplers", ",".join(samplers)), ("--reference", reference), ("--count", count),
                        ("--batch-size", batch_size), ("--device", str(model.device)), ("--seed", seed)])
    notes = [f"{len(prepared)} image(s) at {size}², task {task}, reference {reference}; "
             "SWD is lower-better, so a positive SWD change is a loss"]
    title = f"Sampler quality · {device_name(model.device).split(',')[0]} · {task}"
    publish(section_heading(title, model.device, command, notes) + "\n\n" + "\n".join(lines), append_to)
    return rows


class Stopwatch:
    """Wall seconds per part of a run, from wrapped functions and network hooks; a part inside another counts
    for the outer one only, so the parts add up to no more than the run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.depth += 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth:
                self.seconds[name] += time.perf_counter() - start

    def wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return function(*args, **kwargs)
        return timed

    def time_network(self, net: torch.nn.Module) -> None:
        """Count every forward pass of `net` as "network" (two hooks per call, no change to the module); on
        CUDA the hooks synchronise, so the clock sees the kernels and not only their launch."""
        parts: list[Any] = []
        device = next(net.parameters()).device

        def start(module: torch.nn.Module, args: Any) -> None:
            synchronize(device)
            parts.append(self.part("network"))
            parts[-1].__enter__()

        def stop(module: torch.nn.Module, args: Any, output: Any) -> None:
            synchronize(device)
            parts.pop().__exit__(None, None, None)
        net.register_forward_pre_hook(start)
        net.register_forward_hook(stop)


PROFILE_PARTS = ("network", "conditioning", "pasting and clipping", "reading and writing images", "model loading")


def run_profile(checkpoint: str | Path, data: str | Path, task: str, sampler: str | None = None,
                device: str | None = None, seed: int = 0,
                append_to: str | Path | None = "BENCHMARKS.md") -> list[dict[str, Any]]:
    """Where `palette sample`'s time goes on the folder `data`: sample_folder itself, with its parts timed.

    The parts are the functions sample_folder calls, wrapped for the run: the network's forward passes (hooks),
    conditioning (Task.condition_from_input, source_estimate), pasting and clipping (paste_known,
    Task.keep_input), image reading and writing, and model loading. The rest ("sampler and the rest") is the
    scheduler's arithmetic, tiling and the loop. `sampler` is NAME:STEPS (default: the model's own, per task).
    One row per part: seconds, seconds per image, share of the total.
    """
    from .imageio import list_images

    sampler_name, steps = parse_sampler(sampler) if sampler else (None, None)
    images = list_images(data)
    task_class = type(get_task(task))
    watch = Stopwatch()

    def load_and_watch(*args: Any, **kwargs: Any) -> inference.Model:
        model = load_model(*args, **kwargs)
        watch.time_network(model.net)
        return model

    with tempfile.TemporaryDirectory() as output, ExitStack() as patches:
        for target, attribute, part in ((folders, "load_input", "reading and writing images"),
                                        (folders, "save_image", "reading and writing images"),
                                        (inference, "source_estimate", "conditioning"),
                                        (task_class, "condition_from_input", "conditioning"),
                                        (inference, "paste_known", "pasting and clipping"),
                                        (samplers, "paste_known", "pasting and clipping"),
                                        (task_class, "keep_input", "pasting and clipping")):
            patches.enter_context(mock.patch.object(target, attribute, watch.wrap(part, getattr(target, attribute))))
        patches.enter_context(mock.patch.object(folders, "load_model",
                                                watch.wrap("model loading", load_and_watch)))
        start = time.perf_counter()
        folders.sample_folder(checkpoint, task, data, output, sampler=sampler_name, steps=steps, seed=seed,
                              device=device, progress=False)
        total = time.perf_counter() - start
    seconds = {part: watch.seconds[part] for part in PROFILE_PARTS}
    seconds["sampler and the rest"] = total - sum(seconds.values())
    rows = [{"part": part, "seconds": value, "seconds_per_image": value / len(images), "share": value / total}
            for part, value in (*seconds.items(), ("total", total))]

    lines = ["| part | seconds | s/image | share |", "|---|---:|---:|---:|"]
    lines += [f"| {row['part']} | {row['seconds']:.2f} | {format_number(row['seconds_per_image'])} "
              f"| {row['share']:.1%} |"
              for row in rows]
    outside = 1 - seconds["network"] / total
    command = bench_command([("--profile", checkpoint), ("--data", data), ("--task", task), ("--samplers", sampler),
                        ("--device", device), ("--seed", seed)])
    model_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    notes = [f"`palette sample` on {len(images)} image(s), task {task}, "
             f"sampler {sampler or 'the model default for the task'}, progress bars off",
             f"time outside the network: {outside:.1%} of the total"]
    title = f"Where `palette sample` spends its time · {device_name(model_device).split(',')[0]} · {task}"
    publish(section_heading(title, model_device, command, notes) + "\n\n" + "\n".join(lines), append_to)
    return rows
