"""Benchmarks: training img/s and MFU, ms per network evaluation, sampler seconds per image, peak memory. The
benchmarks of a trained model on real images (--quality, --profile) are in bench_images.py.

    palette bench --preset base --size 256 --batch-size 16             # on a CUDA GPU; appends to BENCHMARKS.md
    palette bench --preset tiny --size 16 --device cpu --quick --no-compile --samplers ddim:4
    python -m palette bench --quick ...                                 # the same as `palette bench --quick ...`

    rows = run_bench(preset="base", image_size=256, batch_size=16)     # the same from Python

Each table is printed and appended to BENCHMARKS.md under a heading with the date, device, versions and the
equivalent `palette bench` command. The training step is the trainer's (`training.diffusion_loss`, backward,
clipping, AdamW, EMA; on CUDA bf16 autocast and fused AdamW), and the compiled variant compiles what the trainer
compiles: the network. Timings exclude warm-up and compilation and synchronise the device around the clock.
"""

from __future__ import annotations

import copy
import datetime
import platform
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from .checkpoint import check_device
from .config import Config, apply_overrides, config_from_dict
from .data import PaletteDataset, SampleNumbers
from .diffusion import training_noise_levels
from .inference import Model, restore
from .network import PaletteNet, autocast, count_parameters, network_input
from .samplers import SAMPLERS, check_positive
from .training import make_optimizer, optimization_step

Part = Literal["train", "nfe", "sample", "data"]
PARTS: tuple[str, ...] = get_args(Part)

DEFAULT_SAMPLERS = ("ddpm:1000", "ddim:20", "dpmpp:20", "unipc:10")

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, matched in this order against
# torch.cuda.get_device_name; "NVIDIA H100 80GB HBM3" is the SXM5 part. Unlisted devices get no MFU.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.4e12),
    ("H200 NVL", 835e12),
    ("H200", 989.4e12),
    ("A100", 312e12),
)


def peak_flops(device_name: str) -> float | None:
    """The bf16 dense peak FLOP/s of a CUDA device by name, or None when it is not in PEAK_BF16_FLOPS."""
    return next((peak for pattern, peak in PEAK_BF16_FLOPS if pattern in device_name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), model)
    return f"CPU {model}, {torch.get_num_threads()} thread(s)"


def parse_sampler(spec: str) -> tuple[str, int]:
    """"dpmpp:20" -> ("dpmpp", 20)."""
    name, _, steps = spec.partition(":")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"sampler {spec!r}: expected NAME:STEPS with NAME one of {', '.join(SAMPLERS)}, e.g. dpmpp:20")
    return name, int(steps)


def bench_config(preset: str, image_size: int, batch_size: int, overrides: Sequence[str] = ()) -> Config:
    """The default config with this network preset, image size and batch size, plus `key=value` overrides."""
    values = {"network": {"preset": preset}, "data": {"image_size": image_size}, "train": {"batch_size": batch_size}}
    return config_from_dict(apply_overrides(values, list(overrides)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1,
           warm: Callable[[], Any] | None = None) -> tuple[float, float | None]:
    """Seconds per call of `run`, after `warmup` untimed calls of `warm` (default `run`), and peak GiB on CUDA."""
    for _ in range(warmup):
        (warm or run)()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, memory


def _compile(net: torch.nn.Module, backend: str, mode: str | None = None) -> Callable[..., torch.Tensor]:
    torch._dynamo.reset()  # a fresh cache per variant, so no variant hits another's recompile limit
    if backend != "inductor":
        mode = None  # modes are inductor options
    return torch.compile(net, backend=backend, mode=mode, dynamic=False)


def synthetic_batch(config: Config, batch_size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random targets and conditions with a centred box to generate (the cost does not depend on the pixels)."""
    size = config.data.image_size
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1
    mask = torch.zeros(batch_size, 1, size, size)
    mask[:, :, size // 4:size - size // 4, size // 4:size - size // 4] = 1
    batch = {"target": target, "condition": target * (1 - mask), "mask": mask,
             "task": torch.zeros(batch_size, dtype=torch.long)}
    return {k: v.to(device) for k, v in batch.items()}


def _copy_to(net: PaletteNet, device: torch.device) -> PaletteNet:
    """A copy on `device`; the master copy stays on the CPU so it never counts in a peak-memory figure."""
    return copy.deepcopy(net).to(device)


def training_step(net: PaletteNet, config: Config, device: torch.device,
                  forward: Callable[..., torch.Tensor] | None = None) -> Callable[[dict[str, torch.Tensor]], None]:
    """One optimizer step exactly as `training.train` takes it, on `net` (trained in place) via `forward`."""
    net.train()
    ema = copy.deepcopy(net).requires_grad_(False)
    optimizer = make_optimizer(net, config, device)
    levels = training_noise_levels(config.diffusion).to(device)
    generator = torch.Generator(device).manual_seed(config.train.seed)
    step_count = [0]

    def step(batch: dict[str, torch.Tensor]) -> None:
        optimization_step(net if forward is None else forward, net, ema, optimizer, batch, config, levels, generator,
                          step_count[0])
        step_count[0] += 1

    return step


def training_flops_per_image(net: PaletteNet, config: Config, batch: dict[str, torch.Tensor],
                             device: torch.device) -> float:
    """FLOPs (2 per multiply-add) of one training step, forward and backward, per image."""
    step = training_step(_copy_to(net, device), config, device)
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops() / batch["target"].shape[0]


def training_graph_breaks(net: PaletteNet, config: Config, batch: dict[str, torch.Tensor]) -> int:
    """Graph breaks torch._dynamo.explain finds in the region the trainer compiles (the network, training mode)."""
    torch._dynamo.reset()
    device = batch["target"].device
    noise_level = torch.full((batch["target"].shape[0],), 0.5, device=device)
    condition = network_input(config, batch["condition"], batch["mask"])
    explanation = torch._dynamo.explain(_copy_to(net, device).train())(batch["target"], noise_level, condition)
    torch._dynamo.reset()
    return explanation.graph_break_count


def _row(what: str, mode: str, batch: int, value: float, unit: str, mfu: float | None = None,
         memory: float | None = None) -> dict[str, Any]:
    return {"what": what, "mode": mode, "batch": batch, "value": value, "unit": unit, "mfu": mfu,
            "peak_memory_gib": memory}


def _train_rows(net: PaletteNet, config: Config, device: torch.device, modes: Sequence[str],
                backend: str, warmup: int, repeats: int, peak: float | None) -> list[dict[str, Any]]:
    batch_size = config.train.batch_size
    batch = synthetic_batch(config, batch_size, device)
    flops = training_flops_per_image(net, config, batch, device)
    rows = [_row("training FLOP per image (forward + backward)", "counted", batch_size, flops / 1e9, "GFLOP")]
    threads = torch.get_num_threads()
    for mode in modes:
        model, fed = _copy_to(net, device), batch
        if mode == "eager, channels_last":
            model = model.to(memory_format=torch.channels_last)
            fed = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in batch.items()}
        step = training_step(model, config, device, _compile(model, backend) if mode == "compiled" else None)
        torch.set_num_threads(1 if mode == "eager, 1 thread" else threads)
        try:
            seconds, memory = _timed(lambda: step(fed), device, repeats, warmup)
        finally:
            torch.set_num_threads(threads)
        images_per_second = batch_size / seconds
        mfu = flops * images_per_second / peak if peak else None
        rows.append(_row(f"training img/s, {config.data.image_size}²", mode, batch_size, images_per_second, "img/s",
                         mfu, memory))
    return rows


def _nfe_rows(forwards: dict[str, Callable[..., torch.Tensor]], config: Config, device: torch.device, warmup: int,
              repeats: int) -> list[dict[str, Any]]:
    rows = []
    size = config.data.image_size
    for mode, forward in forwards.items():
        for batch_size in (1, 8):
            noisy = torch.randn(batch_size, 3, size, size, device=device)
            noise_level = torch.full((batch_size,), 0.5, device=device)

            @torch.no_grad()
            def evaluate() -> None:
                with autocast(config.train.precision, device):
                    forward(noisy, noise_level, noisy)

            # Three warm-up calls: compilation, then CUDA-graph warm-up and recording under reduce-overhead.
            seconds, memory = _timed(evaluate, device, repeats, warmup=max(warmup, 3))
            rows.append(_row("ms per network evaluation", mode, batch_size, seconds * 1e3, "ms", memory=memory))
    return rows


def _sample_rows(forwards: dict[str, Callable[..., torch.Tensor]], config: Config, device: torch.device,
                 samplers: Sequence[str], batch_sizes: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for mode, forward in forwards.items():
        model = Model(forward, config, device)  # type: ignore[arg-type]  # maybe a compiled PaletteNet
        for batch_size in batch_sizes:
            batch = synthetic_batch(config, batch_size, device)
            for spec in samplers:
                name, steps = parse_sampler(spec)
                seconds, memory = _timed(
                    lambda: restore(model, batch["condition"], batch["mask"], sampler=name, steps=steps),
                    device, repeats=1, warmup=1,
                    warm=lambda: restore(model, batch["condition"], batch["mask"], sampler=name, steps=min(steps, 3)))
                rows.append(_row(f"sample {spec}, s/image", mode, batch_size, seconds / batch_size, "s/image",
                                 memory=memory))
    return rows


def _data_rows(net: PaletteNet, config: Config, device: torch.device, data: str | Path, warmup: int,
               repeats: int) -> list[dict[str, Any]]:
    """The eager training step fed by the trainer's DataLoader: img/s and time spent waiting in next(loader)."""
    batch_size, workers = config.train.batch_size, config.data.num_workers
    dataset = PaletteDataset(replace(config.data, source=str(data)), seed=config.train.seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=SampleNumbers(0, batch_size),
                        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    batches = iter(loader)
    step = training_step(_copy_to(net, device), config, device)
    waits: list[float] = []

    def fed_step() -> None:
        start = time.perf_counter()
        batch = next(batches)
        waits.append(time.perf_counter() - start)
        step({k: v.to(device, non_blocking=True) for k, v in batch.items()})

    seconds, memory = _timed(fed_step, device, repeats, warmup)
    wait = sum(waits[-repeats:]) / repeats
    mode = f"eager, {workers} worker(s)"
    return [_row(f"training img/s, {config.data.image_size}², with data loading", mode, batch_size,
                 batch_size / seconds, "img/s", memory=memory),
            _row("data loading: wait in next(loader) per step", mode, batch_size, wait * 1e3, "ms")]


def format_number(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of run_bench rows; MFU and memory show '–' where they were not measured."""
    lines = ["| what | mode | batch | value | unit | MFU | peak memory (GiB) |", "|---|---|---:|---:|---|---:|---:|"]
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "–"
        lines.append(f"| {row['what']} | {row['mode']} | {row['batch']} | {format_number(row['value'])} "
                     f"| {row['unit']} | {mfu} | {format_number(row['peak_memory_gib'])} |")
    return "\n".join(lines)


def section_heading(title: str, device: torch.device, command: str, notes: Sequence[str]) -> str:
    import diffusers

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### {title}", "", f"- date: {stamp}", f"- device: {device_name(device)}",
             f"- torch {torch.__version__} (built for CUDA {torch.version.cuda}), diffusers {diffusers.__version__}, "
             f"Python {platform.python_version()}",
             f"- command: `{command}`", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


def publish(section: str, append_to: str | Path | None) -> None:
    print(section)
    if append_to is not None:
        path = Path(append_to)
        text = path.read_text() if path.is_file() else "# Benchmarks\n"
        path.write_text(text.rstrip("\n") + "\n\n" + section + "\n")


def bench_command(arguments: Sequence[tuple[str, Any]]) -> str:
    """`palette bench` with the given flags; True is a bare flag, False and None are left out, lists repeat."""
    words = ["palette", "bench"]
    for flag, value in arguments:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is True:
                words.append(flag)
            elif item is not None and item is not False:
                words += [flag, str(item)]
    return shlex.join(words)


def run_bench(preset: str = "base", image_size: int = 256, batch_size: int = 16, device: str | None = None,
              steps: int = 20, samplers: Sequence[str] = DEFAULT_SAMPLERS, sample_batch: int = 32,
              compile: bool = True, backend: str = "inductor", parts: Sequence[str] = PARTS,
              data: str | Path | None = None, overrides: Sequence[str] = (), quick: bool = False,
              append_to: str | Path | None = "BENCHMARKS.md") -> list[dict[str, Any]]:
    """Measure the `preset` network at `image_size`: training img/s and MFU, ms per evaluation, sampler s/image.

    `quick` shrinks warm-up, repeats and the sampling batch for a smoke run (CPU tests). `parts` picks sections;
    "data" also needs `data`, a folder of images. Returns one dict per table row.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown bench parts {unknown}; expected some of {', '.join(PARTS)}")
    check_positive(("--steps", steps), ("--sample-batch", sample_batch), ("--batch-size", batch_size))
    for spec in samplers:
        parse_sampler(spec)
    device = check_device(device)
    config = bench_config(preset, image_size, batch_size, overrides)
    torch.manual_seed(config.train.seed)
    net = PaletteNet.from_config(config)
    peak = peak_flops(device_name(device)) if device.type == "cuda" else None
    warmup, repeats, nfe_repeats = (1, 2, 2) if quick else (5, steps, 50)
    sample_batches = (1, 2) if quick else (1, sample_batch)
    # Execution settings as ratios within one run: memory layout, and on a CPU the thread count.
    train_modes = ("eager", "eager, channels_last", *(("eager, 1 thread",) if device.type == "cpu" else ()),
                   *(("compiled",) if compile else ()))
    rows: list[dict[str, Any]] = []
    if "train" in parts:
        rows += _train_rows(net, config, device, train_modes, backend, warmup, repeats, peak)
    if "nfe" in parts or "sample" in parts:
        inference_net = _copy_to(net, device).eval().requires_grad_(False)
        forwards: dict[str, Callable[..., torch.Tensor]] = {"eager": inference_net}
        if compile:
            # CUDA graphs remove the launch overhead that dominates small batches.
            mode = "compiled, reduce-overhead" if device.type == "cuda" and backend == "inductor" else "compiled"
            forwards[mode] = _compile(inference_net, backend, "reduce-overhead")
        if "nfe" in parts:
            rows += _nfe_rows(forwards, config, device, warmup, nfe_repeats)
        if "sample" in parts:
            rows += _sample_rows(forwards, config, device, samplers, sample_batches)
    if "data" in parts and data is not None:
        rows += _data_rows(net, config, device, data, warmup, repeats)

    breaks = training_graph_breaks(net, config, synthetic_batch(config, 2, device)) if compile else "not checked"
    command = bench_command([("--preset", preset), ("--size", image_size), ("--batch-size", batch_size),
                        ("--device", str(device)), ("--steps", steps), ("--samplers", ",".join(samplers)),
                        ("--sample-batch", sample_batch), ("--parts", ",".join(parts)), ("--data", data),
                        ("--set", list(overrides)), ("--backend", backend if backend != "inductor" else None),
                        ("--no-compile", not compile), ("--quick", quick)])
    precision = "bf16 autocast" if device.type == "cuda" and config.train.precision == "bf16" else "fp32"
    notes = [f"network: preset {preset}, {count_parameters(net) / 1e6:.2f}M parameters, {image_size}², {precision}",
             f"graph breaks in the compiled training region (torch._dynamo.explain): {breaks}",
             f"MFU against {peak / 1e12:.0f} TFLOP/s (bf16 dense peak)" if peak else "MFU: no known peak FLOP/s"]
    if quick:
        notes.append("quick: 1 warm-up and 2 timed repeats, sampling batch 2; a smoke run, not a measurement")
    title = f"{device_name(device).split(',')[0]} · preset {preset}, {image_size}², batch {batch_size}"
    publish(section_heading(title, device, command, notes) + "\n\n" + format_table(rows), append_to)
    return rows
