"""The training loop: noise-level sampling, masked loss, AdamW with warm-up, EMA, checkpoints, logs.

    config = load_config("configs/tiny.yaml")
    train(config, "runs/tiny")                   # or train(None, "runs/tiny", resume=True)

Runs on CPU or one GPU as is, and on several under `torchrun` (DDP; NCCL on CUDA, gloo on CPU).
Every random stream is seeded from (seed, rank, step), so a resumed run repeats the uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoint import latest_checkpoint, load_state, load_weights, read_checkpoint, resolve_weights, write_checkpoint
from .config import Config, save_config
from .data import PaletteDataset, SampleNumbers
from .diffusion import masked_loss, q_sample, sample_noise_level, training_noise_levels, v_target
from .imageio import save_image
from .inference import Model, restore
from .network import PaletteNet, autocast, count_parameters
from .tasks import source_estimate


def diffusion_loss(net: torch.nn.Module, batch: dict[str, torch.Tensor], config: Config, levels: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Palette's objective (eq. 3): per-sample error of the eps (or v, or direct x0) prediction, shape [N]."""
    target, condition, mask = batch["target"], batch["condition"], batch["mask"]
    if config.diffusion.residual:
        target = target - source_estimate(condition, mask)
    objective = config.diffusion.objective
    size = target.shape[0]
    if objective == "regression":
        # Palette §5.1's regression baseline: same net, condition -> target, no noise.
        prediction = net(torch.zeros_like(target), torch.ones(size, device=target.device), condition)
        return masked_loss(prediction, target, mask, config.diffusion.loss)
    noise_level = sample_noise_level(levels, size, generator)
    noise = torch.randn(target.shape, generator=generator, device=target.device)
    noisy = q_sample(target, noise_level, noise)
    noisy = mask * noisy + (1 - mask) * target  # known pixels enter clean, as they will at sampling time
    prediction = net(noisy, noise_level, condition)
    wanted = noise if objective == "eps" else v_target(target, noise_level, noise)
    return masked_loss(prediction, wanted, mask, config.diffusion.loss)


def ema_decay(base: float, step: int) -> float:
    """EMA decay with a warm-up so early averages are not dominated by the random init."""
    return min(base, (1 + step) / (10 + step))


def make_optimizer(net: torch.nn.Module, config: Config, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(net.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay,
                             fused=device.type == "cuda")


def optimization_step(forward: torch.nn.Module, net: torch.nn.Module, ema: torch.nn.Module,
                      optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], config: Config,
                      levels: torch.Tensor, generator: torch.Generator, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm-up lr, loss, backward, clipping, AdamW, EMA; returns (per-sample losses, gradient norm).

    `forward` is `net` itself, or a compiled or DDP-wrapped view of it.
    """
    settings = config.train
    for group in optimizer.param_groups:
        group["lr"] = settings.lr * min(1.0, (step + 1) / max(1, settings.warmup_steps))
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


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7919 + step) % (2**63 - 1)


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _preview(model: Model, dataset: PaletteDataset, count: int, path: Path) -> None:
    """A grid with one row per example: condition | sample | target."""
    items = [dataset[i] for i in range(count)]
    condition = torch.stack([i["condition"] for i in items])
    mask = torch.stack([i["mask"] for i in items])
    output = restore(model, condition, mask, seed=0).cpu()
    rows = [torch.cat([c, o, i["target"]], dim=2) for c, o, i in zip(condition, output, items)]
    save_image(torch.cat(rows, dim=1), path)


@dataclass
class TrainResult:
    checkpoint: Path | None  # the last checkpoint folder (on rank 0)
    net: PaletteNet          # this rank's trained weights
    ema: PaletteNet


def train(config: Config | None, run_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) a run in `run_dir`."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    run_dir = Path(run_dir)
    rank, world, device = _distributed()
    state = None
    if resume:
        folder = latest_checkpoint(run_dir)
        if folder is None:
            raise FileNotFoundError(f"{run_dir}: nothing to resume, no checkpoints/latest")
        state = read_checkpoint(folder)
        config = config or state["config"]
    assert config is not None, "train() needs a config unless it resumes"
    settings = config.train
    torch.manual_seed(settings.seed)  # the same initial weights on every rank
    net = PaletteNet.from_config(config)
    ema = copy.deepcopy(net).requires_grad_(False)
    start = 0
    if state is None and settings.init_from:
        weights = resolve_weights(settings.init_from)
        initial, _ = load_weights(weights)
        load_state(net, initial, weights)
        ema.load_state_dict(net.state_dict())
    if state is not None:
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
    net.to(device)
    ema.to(device).eval()
    optimizer = make_optimizer(net, config, device)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else net
    forward = torch.compile(model) if settings.compile else model

    dataset = PaletteDataset(config.data, settings.seed)
    preview = PaletteDataset(replace(config.data, source=config.data.preview_source or config.data.source),
                             seed=settings.seed + 1) if rank == 0 else None
    loader = DataLoader(dataset, batch_size=settings.batch_size,
                        sampler=SampleNumbers(start, settings.batch_size, rank, world),
                        num_workers=config.data.num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=config.data.num_workers > 0)
    levels = training_noise_levels(config.diffusion).to(device)
    generator = torch.Generator(device)

    writer = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        writer = SummaryWriter(str(run_dir / "logs"))
        print(f"palette: {count_parameters(net) / 1e6:.2f}M parameters, {len(dataset)} images, "
              f"tasks {dataset.task_names}, device {device}, world size {world}, run {run_dir}")
    folder = latest_checkpoint(run_dir) if rank == 0 else None
    bar = tqdm(total=settings.steps, initial=start, disable=not progress or rank != 0, desc="training")
    batches = iter(loader)
    clock, seen = time.perf_counter(), 0
    for step in range(start, settings.steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        seed = step_seed(settings.seed, rank, step)
        torch.manual_seed(seed)  # dropout
        generator.manual_seed(seed)  # noise levels and noise
        losses, grad_norm = optimization_step(forward, net, ema, optimizer, batch, config, levels, generator, step)
        loss = losses.mean()
        done = step + 1
        seen += settings.batch_size * world
        bar.update(1)
        if writer is not None and (done % settings.log_every == 0 or done == settings.steps):
            elapsed = time.perf_counter() - clock
            with open(run_dir / "log.jsonl", "a") as log:
                log.write(json.dumps({"step": done, "loss": loss.item(), "images_per_second": seen / elapsed}) + "\n")
            writer.add_scalar("loss/train", loss.item(), done)
            for index, name in enumerate(dataset.task_names):
                chosen = batch["task"] == index
                if chosen.any():
                    writer.add_scalar(f"loss/{name}", losses[chosen].mean().item(), done)
            writer.add_scalar("lr", optimizer.param_groups[0]["lr"], done)
            writer.add_scalar("grad_norm", grad_norm.item(), done)
            writer.add_scalar("images_per_second", seen / elapsed, done)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / elapsed:.1f}")
            clock, seen = time.perf_counter(), 0
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            if rank == 0:
                folder = write_checkpoint(run_dir, done, config, net.state_dict(), ema.state_dict(),
                                          optimizer.state_dict(), keep=settings.keep_checkpoints)
            if world > 1:
                dist.barrier()
        if rank == 0 and (done % settings.sample_every == 0 or done == settings.steps):
            _preview(Model(ema, config, device), preview, 4, run_dir / "samples" / f"step_{done:08d}.png")
    bar.close()
    if writer is not None:
        writer.close()
    return TrainResult(folder, net, ema)
