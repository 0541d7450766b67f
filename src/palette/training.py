"""The training loop: noise-level sampling, masked loss, AdamW with warm-up, EMA, checkpoints, logs.

    config = load_config("configs/tiny.yaml")
    train(config, "runs/tiny")                   # or train(None, "runs/tiny", resume=True)

Runs on CPU or one GPU as is, and on several, on one machine or many, under `torchrun` (DDP; NCCL on CUDA, gloo
on CPU). Every random stream is seeded from (seed, rank, step), so a resumed run repeats the uninterrupted one
exactly. A fresh run never writes into a directory that holds another run (see `prepare_run_dir`). A run killed at
any moment resumes (`train(None, run_dir, resume=True)`) from its last checkpoint, or from step 0 if it had none.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import (CheckpointError, latest_checkpoint, load_config_only, load_state, load_weights,
                         prune_checkpoints, read_checkpoint, remove_partial_checkpoints, resolve_weights,
                         write_checkpoint, write_text_atomic)
from .config import Config, TrainConfig, load_config, save_config
from .data import preview_examples, task_names, training_loader
from .diffusion import (masked_loss, paste_known, q_sample, rebalance_weight, sample_noise_level, training_noise_levels,
                        v_target)
from .files import write_atomic
from .imageio import save_image
from .guidance import load_guide
from .inference import Model, restore
from .network import PaletteNet, autocast, count_parameters, network_input, regression_output, with_mask_input
from .tasks import get_task, source_estimate


def diffusion_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor], config: Config, levels: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Palette's objective (eq. 3): per-sample error of the eps (or v, or direct x0) prediction, shape [N]."""
    target, condition, mask = batch["target"], batch["condition"], batch["mask"]
    pixel_weight = None
    if config.diffusion.residual:
        # The network sees the estimate it adds to (for holes, the OpenCV fill in place of Palette's noise).
        condition = source_estimate(condition, mask)
        scales = per_task(config.diffusion.residual_scale, 1.0, config, batch["task"])
        target = (target - condition) * scales.view(-1, 1, 1, 1)
        if config.diffusion.residual_rebalance:
            pixel_weight = rebalance_weight(target, per_task(config.diffusion.residual_rebalance, 0.0, config,
                                                             batch["task"]))
    condition = network_input(config, condition, mask)
    objective = config.diffusion.objective
    size = target.shape[0]
    if objective == "regression":
        return masked_loss(regression_output(net, condition), target, mask, config.diffusion.loss, pixel_weight)
    noise_level = sample_noise_level(levels, size, generator)
    noise = torch.randn(target.shape, generator=generator, device=target.device)
    # Known pixels enter clean, as they will at sampling time.
    noisy = paste_known(q_sample(target, noise_level, noise), target, mask)
    prediction = net(noisy, noise_level, condition)
    wanted = noise if objective == "eps" else v_target(target, noise_level, noise)
    return masked_loss(prediction, wanted, mask, config.diffusion.loss, pixel_weight)


def per_task(values: dict[str, float], default: float, config: Config, tasks: torch.Tensor) -> torch.Tensor:
    """A per-task setting for each sample of a batch, [N], from its task indices (tasks in sorted order, as the
    dataset numbers them)."""
    return torch.tensor([values.get(name, default) for name in task_names(config.data)], device=tasks.device)[tasks]


def ema_decay(base: float, step: int) -> float:
    """EMA decay with a warm-up so early averages are not dominated by the random init."""
    return min(base, (1 + step) / (10 + step))


def learning_rate(settings: TrainConfig, step: int) -> float:
    """Linear warm-up, constant, then a linear cool-down to 0 over the last `decay_steps` (WSD)."""
    warmup = (step + 1) / max(1, settings.warmup_steps)
    cooldown = (settings.steps - step) / settings.decay_steps if settings.decay_steps else 1.0
    return settings.lr * min(1.0, warmup, cooldown)


def make_optimizer(net: torch.nn.Module, config: Config, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(net.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay,
                             fused=device.type == "cuda")


def optimization_step(forward: torch.nn.Module, net: torch.nn.Module, ema: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], config: Config,
                      levels: torch.Tensor, generator: torch.Generator, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scheduled lr, loss, backward, clipping, AdamW, EMA; returns (per-sample losses, gradient norm).

    `forward` is `net` itself, or a compiled or DDP-wrapped view of it.
    """
    settings = config.train
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(settings, step)
    with autocast(settings.precision, levels.device):
        losses = diffusion_loss(forward, batch, config, levels, generator)
    optimizer.zero_grad(set_to_none=True)
    losses.mean().backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
    optimizer.step()
    with torch.no_grad():
        decay = ema_decay(settings.ema_decay, step)
        torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)
    return losses.detach(), grad_norm


def step_seeds(seed: int, rank: int, step: int) -> tuple[int, int]:
    """(dropout seed, noise seed) of one step on one rank: two 64-bit words hashed from (seed, rank, step).

    numpy's SeedSequence mixes the three numbers, so no (rank, step) pair repeats another's stream and the
    dropout and noise streams are independent of each other.
    """
    dropout, noise = np.random.SeedSequence([seed, rank, step]).generate_state(2, np.uint64)
    return int(dropout), int(noise)


@contextmanager
def _distributed() -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, device); under torchrun it starts the process group and destroys it on the way out."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        # Select this rank's GPU before NCCL starts, or every rank's communicator would open on GPU 0.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield (dist.get_rank() if world > 1 else 0), world, device
    finally:
        if started:
            dist.destroy_process_group()


class RunDirectoryError(ValueError):
    """A fresh run aimed at a directory that already holds a run."""


RUN_FILES = ("checkpoints", "log.jsonl", "config.yaml")  # any of them means a run lives in the directory


def prepare_run_dir(run_dir: Path, overwrite: bool) -> Path | None:
    """Make sure a fresh run starts in a directory of its own; returns where an older run was moved, if one was.

    A directory holding a run is refused, or with `overwrite` renamed whole to `<run_dir>.old-<YYYYmmdd-HHMMSS>`
    beside it: nothing is deleted, and the old run's checkpoints and log cannot mix with the new one's.
    """
    if not any((run_dir / name).exists() for name in RUN_FILES):
        return None
    if not overwrite:
        raise RunDirectoryError(f"{run_dir} already holds a run; continue it with --resume {run_dir}, or start "
                                f"afresh with --overwrite (which moves the old run to {run_dir}.old-<time>)")
    if Path.cwd().resolve().is_relative_to(run_dir.resolve()):
        raise RunDirectoryError(f"{run_dir}: cannot move aside the directory this process runs in")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, count = run_dir.with_name(f"{run_dir.name}.old-{stamp}"), 1
    while aside.exists():
        aside, count = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{count}"), count + 1
    run_dir.rename(aside)
    return aside


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after `step` (and a line cut short by a crash): a run resumed at `step` writes them again."""

    def logged_step(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return float("inf")

    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and logged_step(line) <= step]
    if len(kept) < len(lines):
        write_text_atomic(path, "".join(kept))


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Delete the temporary files and folders a killed run leaves behind (dot-names); returns what went."""
    left = [*run_dir.glob(".*.tmp"), *(run_dir / "samples").glob(".*.tmp")]
    for path in left:
        path.unlink()
    return left + remove_partial_checkpoints(run_dir)


def resume_config(run_dir: str | Path) -> Config:
    """The config a resumed run goes on with: its latest checkpoint's, or, killed before its first, config.yaml."""
    run_dir = Path(run_dir)
    folder = latest_checkpoint(run_dir)
    if folder is not None:
        return load_config_only(folder)
    pointer = run_dir / "checkpoints" / "latest"
    if pointer.is_file():
        raise CheckpointError(f"{pointer}: names {pointer.read_text().strip()!r}, which is not in {pointer.parent}")
    if (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml")
    raise FileNotFoundError(f"{run_dir}: nothing to resume, neither checkpoints/latest nor config.yaml")


class TrainingOutOfMemory(ValueError):
    """Training ran out of device memory; the message names the settings that lower the need."""


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or \
        (isinstance(error, RuntimeError) and "out of memory" in str(error))


@contextmanager
def _memory_advice(config: Config, step: int, device: torch.device) -> Iterator[None]:
    """Turn an out-of-memory error into one line saying what uses the memory and which settings lower it."""
    try:
        yield
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        batch_size, network = config.train.batch_size, config.network
        lower = ["train.batch_size", "data.image_size"] + \
            ([] if network.gradient_checkpointing else ["set network.gradient_checkpointing=true"])
        raise TrainingOutOfMemory(
            f"out of memory on {device} at step {step + 1} with train.batch_size={batch_size} per process, "
            f"data.image_size={config.data.image_size}, network.preset={network.preset}, "
            f"network.gradient_checkpointing={str(network.gradient_checkpointing).lower()}: lower "
            f"{', '.join(lower[:-1])} or {lower[-1]} (e.g. --set train.batch_size={max(1, batch_size // 2)})"
        ) from error


def _load_run_weights(net: PaletteNet, ema: PaletteNet, state: dict, folder: Path, config: Config) -> None:
    """Load a resumed run's raw and EMA weights; where they do not fit, the CheckpointError also names the network
    settings that `config` changes from the checkpoint's."""
    try:
        load_state(net, state["model"], folder / "model.safetensors")
        load_state(ema, state["ema"], folder / "ema.safetensors")
    except CheckpointError as error:
        old, new = asdict(state["config"].network), asdict(config.network)
        changed = [f"network.{name} {value} -> {new[name]}" for name, value in old.items() if value != new[name]]
        if not changed:
            raise
        raise CheckpointError(f"{error}; this config changes {', '.join(changed)}") from error


def _preview(model: Model, items: list[dict[str, torch.Tensor]], names: list[str], path: Path) -> None:
    """A grid with one row per example: condition | sample | target."""
    condition = [i["condition"] for i in items]
    output = [restore(model, c[None], i["mask"][None], seed=0, task=get_task(names[int(i["task"])]))[0].cpu()
              for c, i in zip(condition, items)]
    rows = [torch.cat([c, o, i["target"]], dim=2) for c, o, i in zip(condition, output, items)]
    save_image(torch.cat(rows, dim=1), path)


@dataclass
class TrainResult:
    checkpoint: Path | None  # the last checkpoint folder (on rank 0)
    net: PaletteNet          # this rank's trained weights
    ema: PaletteNet


def train(config: Config | None, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> TrainResult:
    """Train a fresh run in `run_dir`, or resume the one there.

    A fresh run into a directory that holds a run raises RunDirectoryError, unless `overwrite` moves the old run
    aside (see `prepare_run_dir`). A resumed run drops log lines past its checkpoint and what a kill left half
    written before it goes on; one already at `train.steps` says so and returns its weights, config.yaml
    untouched. Out of device memory raises TrainingOutOfMemory, naming what to lower.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    if resume and overwrite:
        raise ValueError("resume continues the run in run_dir and overwrite moves it aside; choose one")
    run_dir = Path(run_dir)
    state = None
    if resume:
        config = config or resume_config(run_dir)
        folder = latest_checkpoint(run_dir)
        state = read_checkpoint(folder) if folder is not None else None
    assert config is not None, "train() needs a config unless it resumes"
    settings = config.train
    with _distributed() as (rank, world, device):
        if rank == 0:
            if resume:
                remove_leftovers(run_dir)
                _truncate_log(run_dir / "log.jsonl", state["step"] if state is not None else 0)
                if state is not None:
                    prune_checkpoints(run_dir, state["step"], settings.keep_checkpoints)
            elif (moved := prepare_run_dir(run_dir, overwrite)) is not None:
                print(f"palette: moved the previous run in {run_dir} to {moved}")
        torch.manual_seed(settings.seed)  # the same initial weights on every rank
        net = PaletteNet.from_config(config)
        ema = copy.deepcopy(net).requires_grad_(False)
        start = 0
        if state is None and settings.init_from:
            weights = resolve_weights(settings.init_from)
            initial, _ = load_weights(weights)
            load_state(net, with_mask_input(initial, config.network), weights)
            ema.load_state_dict(net.state_dict())
        if state is not None:
            _load_run_weights(net, ema, state, folder, config)
            start = state["step"]
        net.to(device)
        ema.to(device).eval()
        if start >= settings.steps:  # a finished run resumed: its config.yaml stays the one it trained with
            if rank == 0:
                print(f"palette: {run_dir} is already at step {start} of train.steps={settings.steps}; nothing to do "
                      f"(raise train.steps to train on)")
            return TrainResult(folder, net, ema)
        optimizer = make_optimizer(net, config, device)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
            if world > 1 else net
        forward = torch.compile(model) if settings.compile else model

        loader, source = training_loader(config.data, settings.seed, start, settings.batch_size, rank, world,
                                         pin_memory=device.type == "cuda")
        preview = preview_examples(config.data, settings.seed + 1, 4) if rank == 0 else []
        names = task_names(config.data)
        levels = training_noise_levels(config.diffusion).to(device)
        generator = torch.Generator(device)
        guide = load_guide(config, device=device) if rank == 0 else None  # guidance's twin, for the previews

        writer = None
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run_dir / "config.yaml", lambda temporary: save_config(config, temporary))
            writer = SummaryWriter(str(run_dir / "logs"))
            print(f"palette: {count_parameters(net) / 1e6:.2f}M parameters, {source}, "
                  f"tasks {names}, device {device}, world size {world}, run {run_dir}")
        folder = latest_checkpoint(run_dir) if rank == 0 else None
        # A bar redrawn with carriage returns on a terminal; in a log file (nohup, a batch job) a line per log step.
        interactive = sys.stderr.isatty()
        bar = tqdm(total=settings.steps, initial=start, disable=not progress or not interactive or rank != 0,
                   desc="training")
        batches = iter(loader)
        clock, seen = time.perf_counter(), 0
        try:
            for step in range(start, settings.steps):
                batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
                dropout_seed, noise_seed = step_seeds(settings.seed, rank, step)
                torch.manual_seed(dropout_seed)
                generator.manual_seed(noise_seed)  # noise levels and noise
                with _memory_advice(config, step, device):
                    losses, grad_norm = optimization_step(forward, net, ema, optimizer, batch, config, levels,
                                                          generator, step)
                loss = losses.mean()
                done = step + 1
                seen += settings.batch_size * world
                bar.update(1)
                if writer is not None and (done % settings.log_every == 0 or done == settings.steps):
                    value, rate, lr = loss.item(), seen / (time.perf_counter() - clock), optimizer.param_groups[0]["lr"]
                    with open(run_dir / "log.jsonl", "a") as log:
                        log.write(json.dumps({"step": done, "loss": value, "images_per_second": rate}) + "\n")
                    writer.add_scalar("loss/train", value, done)
                    for index, name in enumerate(names):
                        chosen = batch["task"] == index
                        if chosen.any():
                            writer.add_scalar(f"loss/{name}", losses[chosen].mean().item(), done)
                    writer.add_scalar("lr", lr, done)
                    writer.add_scalar("grad_norm", grad_norm.item(), done)
                    writer.add_scalar("images_per_second", rate, done)
                    bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.1f}")
                    if progress and not interactive:
                        print(f"palette: step {done}/{settings.steps}, loss {value:.4f}, {rate:.1f} img/s, lr {lr:.3g}",
                              flush=True)
                    clock, seen = time.perf_counter(), 0
                if done % settings.checkpoint_every == 0 or done == settings.steps:
                    if rank == 0:
                        folder = write_checkpoint(run_dir, done, config, net.state_dict(), ema.state_dict(),
                                                  optimizer.state_dict(), keep=settings.keep_checkpoints)
                    if world > 1:
                        dist.barrier()
                if rank == 0 and (done % settings.sample_every == 0 or done == settings.steps):
                    _preview(Model(ema, config, device, guide), preview, names,
                             run_dir / "samples" / f"step_{done:08d}.png")
        finally:  # also on an error, so that its message starts a line of its own
            bar.close()
            if writer is not None:
                writer.close()
    return TrainResult(folder, net, ema)
