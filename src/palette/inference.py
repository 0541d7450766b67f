"""Restoring images with a trained model: load a checkpoint, build the denoiser, sample batches and folders.

    model = load_model("runs/demo")                    # a run folder, checkpoint folder or .safetensors file
    outputs = restore(model, condition, mask, sampler="dpmpp", steps=20, seed=0)
    sample_folder("model.safetensors", "inpainting", "inputs/", "out/", mask="masks/")
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from .checkpoint import load_state, load_weights, resolve_weights
from .config import Config
from .diffusion import paste_known, x0_from_eps, x0_from_v
from .imageio import ImageError, list_images, load_image, resize_image, save_image
from .masks import load_mask
from .network import PaletteNet, autocast, regression_output
from .samplers import Denoiser, StepCallback, check_sampling, make_scheduler, run_sampler
from .tasks import Task, get_task, source_estimate


@dataclass
class Model:
    """A network with its config, ready to sample."""

    net: PaletteNet
    config: Config
    device: torch.device

    @property
    def image_size(self) -> int:
        return self.config.data.image_size


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(checkpoint: str | Path, device: str | torch.device | None = None) -> Model:
    """Load EMA weights and their config from a checkpoint; no config file is needed."""
    path = resolve_weights(checkpoint)
    state, config = load_weights(path)
    net = PaletteNet.from_config(config)
    load_state(net, state, path)
    device = torch.device(device) if device else default_device()
    return Model(net.to(device).eval().requires_grad_(False), config, device)


Precision = Literal["fp32", "bf16"]


def make_denoiser(net: torch.nn.Module, config: Config, condition: torch.Tensor, offset: torch.Tensor,
                  finish: Callable[[torch.Tensor], torch.Tensor], precision: Precision = "fp32") -> Denoiser:
    """Turn the network's eps or v output into an x0 prediction whose image, offset + x0, is finished.

    `offset` is the source estimate of a residual model, else zeros; `finish` makes an image agree with
    the input and clips it to [-1, 1], as SR3 and Palette clip the estimate. Sampling runs in float32 unless
    asked: with eps-prediction a bf16 error is amplified by up to 1/sqrt(gamma) in x0.
    """
    objective = config.diffusion.objective

    def denoise(noisy: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        with autocast(precision, condition.device):
            output = net(noisy, noise_level, condition).float()
        clean = x0_from_eps(noisy, noise_level, output) if objective == "eps" else x0_from_v(noisy, noise_level, output)
        return finish(offset + clean) - offset

    return denoise


def generators_for(seeds: int | Sequence[int], count: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample: from its own seed, or from (seed, position) when one seed covers the batch."""
    if isinstance(seeds, int):
        seeds = [derive_seed(seeds, str(index)) for index in range(count)]
    if len(seeds) != count:
        raise ValueError(f"{len(seeds)} seeds for a batch of {count}")
    return [torch.Generator(device).manual_seed(seed) for seed in seeds]


def derive_seed(seed: int, *names: str) -> int:
    """A 63-bit seed from a base seed and names (a file name, a sample index), independent of batching."""
    words = [seed % 2**32, seed // 2**32 % 2**32]
    for name in names:
        words += np.frombuffer(hashlib.sha256(name.encode()).digest(), dtype=np.uint32).tolist()
    return int(np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> np.uint64(1))


@torch.no_grad()
def restore(model: Model, condition: torch.Tensor, mask: torch.Tensor, sampler: str | None = None,
            steps: int | None = None, seed: int | Sequence[int] = 0, callback: StepCallback | None = None,
            task: Task | None = None, precision: Precision = "fp32") -> torch.Tensor:
    """Restore a batch: condition [N,3,H,W], mask [N,1,H,W] (1 = generate) -> images [N,3,H,W] in [-1,1].

    `seed` is one seed per sample, or one int from which each sample's is derived by its position.
    With `task`, every estimate is made to agree with what the input fixes (Task.keep_input).
    `callback` sees x_t and the x0 prediction as images, also for a residual model.
    """
    config = model.config
    sampler = sampler or config.sampling.sampler
    steps = config.sampling.steps if steps is None else steps
    check_sampling(sampler, steps)
    condition, mask = condition.to(model.device), mask.to(model.device)

    def finish(image: torch.Tensor) -> torch.Tensor:
        return (image if task is None else task.keep_input(image, condition)).clamp(-1, 1)

    # A residual model works on target - offset, its known region is then zero, and it sees the offset.
    residual_model = config.diffusion.residual
    offset = source_estimate(condition, mask) if residual_model else torch.zeros_like(condition)
    network_condition = offset if residual_model else condition
    has_known = bool(mask.amin() < 1)
    if config.diffusion.objective == "regression":
        residual = regression_output(model.net, network_condition)
    else:
        scheduler = make_scheduler(sampler, config.diffusion, steps)
        denoise = make_denoiser(model.net, config, network_condition, offset, finish, precision)
        as_images = None if callback is None else \
            lambda index, x, predicted: callback(index, offset + x, offset + predicted)
        residual = run_sampler(denoise, scheduler, condition.shape, known=condition - offset if has_known else None,
                               mask=mask if has_known else None,
                               generator=generators_for(seed, condition.shape[0], model.device),
                               device=model.device, callback=as_images)
    return paste_known(finish(offset + residual), condition if has_known else None, mask)


@dataclass
class PreparedInput:
    """One user input at the model's size, plus what is needed to go back to its own size."""

    path: Path
    task: Task
    condition: torch.Tensor  # [3, S, S]
    mask: torch.Tensor       # [1, S, S], 1 = generate
    original: torch.Tensor   # the input as given, [3, H, W]
    original_mask: torch.Tensor | None


def prepare_input(task_name: str, image_path: Path, mask_path: Path | None, size: int, seed: int) -> PreparedInput:
    """A user's degraded image (and mask) -> model-size condition and mask."""
    task = get_task(task_name)
    original = load_image(image_path, "RGB")
    height, width = original.shape[1:]
    original_mask = None
    if task.has_known_region:
        if mask_path is None:
            raise ImageError(f"{image_path}: task {task_name} needs a mask PNG with the same stem (--mask)")
        original_mask = load_mask(mask_path, height, width)
    image, mask = original, original_mask
    if (height, width) != (size, size):
        warnings.warn(f"{image_path}: {width}x{height} is resized to the model's {size}x{size} and back", stacklevel=2)
        image = resize_image(original, size, size)
        if mask is not None:
            mask = (resize_image(mask * 2 - 1, size, size, Image.NEAREST) > 0).float()
    # Each input's hole noise is its own, from (seed, file name).
    degraded = task.condition_from_input(image, mask, np.random.default_rng(derive_seed(seed, image_path.name)))
    return PreparedInput(image_path, task, degraded.condition, degraded.mask, original, original_mask)


def to_original_size(output: torch.Tensor, prepared: PreparedInput) -> torch.Tensor:
    """Resize an output back to the input's size; what the input fixes (known pixels, luma) comes from it untouched."""
    height, width = prepared.original.shape[1:]
    if output.shape[1:] != (height, width):
        output = prepared.task.keep_input(resize_image(output, height, width), prepared.original).clamp(-1, 1)
    if prepared.original_mask is not None:
        output = prepared.original_mask * output + (1 - prepared.original_mask) * prepared.original
    return output


def find_mask(mask_dir: Path | None, image_path: Path) -> Path | None:
    """The mask PNG with the image's stem: in `mask_dir` (a folder or a single file)."""
    if mask_dir is None:
        return None
    if mask_dir.is_file():
        return mask_dir
    candidate = mask_dir / f"{image_path.stem}.png"
    if not candidate.is_file():
        raise ImageError(f"{candidate}: missing mask for input {image_path}")
    return candidate


def sample_folder(checkpoint: str | Path, task: str, input: str | Path, output: str | Path,
                  mask: str | Path | None = None, sampler: str | None = None, steps: int | None = None,
                  num_samples: int = 1, seed: int = 0, batch_size: int = 8, device: str | None = None,
                  precision: Precision = "fp32", progress: bool = True) -> list[Path]:
    """Restore every image in `input` (a file or folder) and write `output/<stem>.png` (or `<stem>_<k>.png`).

    Sample k of an image is seeded from (seed, file name, k), so it does not depend on the batch size or on
    the other files in the folder.
    """
    from tqdm import tqdm

    # Fail on bad options before loading anything.
    task_to_run = get_task(task)
    check_sampling(sampler, steps)
    for flag, value in (("--num-samples", num_samples), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    model = load_model(checkpoint, device)
    if task not in model.config.data.tasks:
        warnings.warn(f"task {task} was not in this model's training mixture {sorted(model.config.data.tasks)}",
                      stacklevel=2)
    input, output = Path(input), Path(output)
    paths = [input] if input.is_file() else list_images(input)
    if not paths:
        raise ImageError(f"{input}: no input images")
    mask_dir = Path(mask) if mask is not None else None
    jobs = []  # (prepared input, sample index)
    for path in paths:
        prepared = prepare_input(task, path, find_mask(mask_dir, path), model.image_size, seed)
        jobs += [(prepared, k) for k in range(num_samples)]
    written = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="sampling", disable=not progress):
        batch = jobs[start:start + batch_size]
        seeds = [derive_seed(seed, p.path.name, str(k)) for p, k in batch]
        images = restore(model, torch.stack([p.condition for p, _ in batch]), torch.stack([p.mask for p, _ in batch]),
                         sampler=sampler, steps=steps, seed=seeds, task=task_to_run, precision=precision)
        for (prepared, k), image in zip(batch, images.cpu()):
            name = f"{prepared.path.stem}_{k}.png" if num_samples > 1 else f"{prepared.path.stem}.png"
            save_image(to_original_size(image, prepared), output / name)
            written.append(output / name)
    return written
