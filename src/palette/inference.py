"""Restoring images with a trained model: load a checkpoint, build the denoiser, sample batches and photos.

    model = load_model("runs/demo")                    # a run folder, checkpoint folder or .safetensors file
    models = load_models(None)                         # the shipped model and the bundled JPEG model, by name
    outputs = restore(model, condition, mask, sampler="dpmpp", steps=20, seed=0)   # a batch at the model's grid
    photo = restore_image(model, get_task("jpeg"), image)                        # one image at its own size
    wider = extend_image(model, image, right=512)                                 # grow an image
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .checkpoint import (bundled_model_path, bundled_name, check_device, load_state, load_weights,
                         resolve_weights)
from .config import Config
from .diffusion import paste_known, training_noise_levels, x0_from_eps, x0_from_v
from .filters import smooth_chroma, smooth_deep_hole_colour
from .guidance import load_guide, weak_network
from .imageio import MAX_PIXELS_ENV, max_pixels
from .network import PaletteNet, autocast, network_input, regression_output
from .samplers import Denoiser, StepCallback, check_sampling, make_scheduler, run_sampler, sdedit_start_step
from .tasks import Task, get_task, luma, source_estimate
from .tiling import Preview, TiledNetwork, TileGrid


@dataclass
class Model:
    """A network with its config, ready to sample; `guide`: the weights of its guidance twin (load_guide)."""

    net: PaletteNet
    config: Config
    device: torch.device
    guide: list[torch.Tensor] | None = None

    @property
    def image_size(self) -> int:
        return self.config.data.image_size


def load_model(checkpoint: str | Path, device: str | torch.device | None = None) -> Model:
    """Load EMA weights and their config from a checkpoint; no config file is needed."""
    path = resolve_weights(checkpoint)
    state, config = load_weights(path)
    net = PaletteNet.from_config(config)
    load_state(net, state, path)
    device = check_device(device)
    return Model(net.to(device).eval().requires_grad_(False), config, device, load_guide(config, path.parent, device))


def load_models(checkpoint: str | Path | None, device: str | torch.device | None = None) -> dict[str, Model]:
    """The model at `checkpoint` (None: the shipped multi-task model) by its name, the default first. With the
    shipped model comes the bundled JPEG model: on a heavy JPEG of a whole photo it takes out the blocks the
    multi-task model leaves (MODEL_CARD.md), so `palette demo` and `palette serve` offer it beside it."""
    weights = resolve_weights(checkpoint or bundled_model_path("multitask"))
    name = bundled_name(weights) or str(checkpoint)
    models = {name: load_model(weights, device)}
    if name == "multitask":
        models["jpeg"] = load_model(bundled_model_path("jpeg"), device)
    return models


def trained_tasks(model: Model) -> list[str]:
    """The tasks a model was trained on (its config's data.tasks)."""
    return [name for name, weight in model.config.data.tasks.items() if weight > 0]


Precision = Literal["fp32", "bf16"]


def make_denoiser(net: torch.nn.Module, config: Config, condition: torch.Tensor, offset: torch.Tensor,
                  finish: Callable[[torch.Tensor], torch.Tensor], precision: Precision = "fp32",
                  scale: float = 1.0, guidance: float = 1.0, guide: list[torch.Tensor] | None = None) -> Denoiser:
    """Turn the network's eps or v output into an x0 prediction whose image, offset + x0 / scale, is finished.

    `offset` is the source estimate of a residual model, else zeros, and `scale` the task's residual scale
    (DiffusionConfig.residual_scale); `finish` makes an image agree with
    the input and clips it to [-1, 1], as SR3 and Palette clip the estimate. Sampling runs in float32 unless
    asked: with eps-prediction a bf16 error is amplified by up to 1/sqrt(gamma) in x0. With `guidance` w != 1
    the output is weak + w (output - weak), weak being the network with perturbed attention, or with the weights
    `guide` of its twin (guidance.weak_network).
    """
    objective = config.diffusion.objective

    def denoise(noisy: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        with autocast(precision, condition.device):
            output = net(noisy, noise_level, condition).float()
            if guidance != 1:
                with weak_network(net, guide):
                    weak = net(noisy, noise_level, condition).float()
                output = weak + guidance * (output - weak)
        clean = x0_from_eps(noisy, noise_level, output) if objective == "eps" else x0_from_v(noisy, noise_level, output)
        return (finish(offset + clean / scale) - offset) * scale

    return denoise


def residual_scale(config: Config, task: Task | None) -> float:
    """The factor a model's residual target was scaled by for `task` in training (1 for other models)."""
    scales = config.diffusion.residual_scale
    if scales and task is None:
        raise ValueError("this model scales its residual per task (diffusion.residual_scale): pass the task")
    return scales.get(task.name, 1.0) if task is not None and config.diffusion.residual else 1.0


def final_level(config: Config, task: str | None) -> float | None:
    """The noise level of the final denoising step for `task` (SamplingConfig.final_denoise), None for none."""
    timestep = config.sampling.for_task("final_denoise", task)
    return training_noise_levels(config.diffusion)[timestep + 1].item() if timestep else None


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
            task: Task | None = None, precision: Precision = "fp32", init: torch.Tensor | None = None,
            strength: float | None = None, guidance: float | None = None) -> torch.Tensor:
    """Restore a batch: condition [N,3,H,W], mask [N,1,H,W] (1 = generate) -> images [N,3,H,W] in [-1,1].

    `seed` is one seed per sample, or one int from which each sample's is derived by its position.
    `steps`, `guidance` and `strength` default to the model's for `task` (SamplingConfig).
    With `task`, every estimate is made to agree with what the input fixes (Task.keep_input).
    `callback` sees x_t and the x0 prediction as images, also for a residual model. With `init` [N,3,H,W],
    sampling starts from it re-noised `strength` of the way (SDEdit, Meng et al. 2022) and runs that share of
    the steps; a residual model then adds its output to `init` (known pixels pasted), its best estimate so far.
    Without `init`, a strength below 1 starts from the input's own estimate (source_estimate).
    Where the model's sampling defaults say `estimate_chroma` for `task`, only the luma of the change is kept,
    holes at least `hole_colour_depth` px deep have it smoothed along the luma (filters.smooth_deep_hole_colour),
    and with a `chroma_filter` radius the colour is smoothed along the luma (filters.smooth_chroma);
    the task then keeps as much of the change as it trusts (Task.temper: a JPEG by its quality).
    """
    config, name = model.config, task.name if task is not None else None
    sampler = sampler or config.sampling.sampler
    steps, guidance, strength = config.sampling.resolve(name, steps, guidance, strength)
    check_sampling(sampler, steps, guidance, strength)
    condition, mask = condition.to(model.device), mask.to(model.device)
    if init is None and strength < 1:
        init = source_estimate(condition, mask)

    def finish(image: torch.Tensor) -> torch.Tensor:
        return (image if task is None else task.keep_input(image, condition)).clamp(-1, 1)

    # A residual model works on target - offset, its known region is then zero, and it sees the offset.
    residual_model = config.diffusion.residual
    if residual_model and init is not None:
        offset = paste_known(init.to(model.device), condition, mask)
    else:
        offset = source_estimate(condition, mask) if residual_model else torch.zeros_like(condition)
    network_condition = network_input(config, offset if residual_model else condition, mask)
    scale = residual_scale(config, task)
    has_known = bool(mask.amin() < 1)
    if config.diffusion.objective == "regression":
        residual = regression_output(model.net, network_condition)
    else:
        scheduler = make_scheduler(sampler, config.diffusion, steps)
        denoise = make_denoiser(model.net, config, network_condition, offset, finish, precision, scale, guidance,
                                model.guide)
        as_images = None if callback is None else \
            lambda index, x, predicted: callback(index, offset + x / scale, offset + predicted / scale)
        residual = run_sampler(denoise, scheduler, condition.shape,
                               known=(condition - offset) * scale if has_known else None,
                               mask=mask if has_known else None,
                               generator=generators_for(seed, condition.shape[0], model.device),
                               device=model.device, callback=as_images,
                               start=None if init is None else (init.to(model.device) - offset) * scale,
                               start_step=sdedit_start_step(steps, strength),
                               final_level=final_level(config, name))
    restored = offset + residual / scale
    if config.sampling.for_task("estimate_chroma", name):
        estimate = offset if residual_model else source_estimate(condition, mask) if init is None else init
        restored = estimate + luma(restored - estimate)  # the estimate's colour, the restored luma
    if has_known and (depth := config.sampling.for_task("hole_colour_depth", name)):
        restored = smooth_deep_hole_colour(restored, mask, depth)
    if radius := config.sampling.for_task("chroma_filter", name):
        restored = smooth_chroma(restored, radius)
    restored = finish(restored) if task is None else task.temper(finish(restored), condition)
    return paste_known(restored, condition if has_known else None, mask)


def size_multiple(config: Config) -> int:
    """What the U-Net's input sides must be a multiple of: 2 per downsampling."""
    return 2 ** (len(config.network.channel_mults) - 1)


@dataclass
class TaskSampler:
    """Samples the pieces a full-size strategy asks for (tiling.WindowSampler) with one model, task and options."""

    model: Model
    task: Task
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    precision: Precision = "fp32"
    tile_batch: int = 8
    progress: bool = True
    guidance: float | None = None
    strength: float | None = None  # where a strategy passes none: None is the model's default for the task

    def sample(self, image: torch.Tensor, mask: torch.Tensor | None, grid: TileGrid, label: str,
               init: torch.Tensor | None = None, strength: float | None = None,
               on_estimate: Preview | None = None) -> torch.Tensor:
        from tqdm import tqdm

        seed = derive_seed(self.seed, label)
        degraded = self.task.condition_from_input(image, mask, np.random.default_rng(seed))
        config = self.model.config
        steps, guidance, strength = config.sampling.resolve(self.task.name, self.steps, self.guidance,
                                                            self.strength if strength is None else strength)
        final_step = bool(config.sampling.for_task("final_denoise", self.task.name))
        denoising_steps = steps - sdedit_start_step(steps, strength) + final_step
        calls = 1 if config.diffusion.objective == "regression" else denoising_steps * (1 if guidance == 1 else 2)
        net = TiledNetwork(self.model.net, grid, size_multiple(config), active=degraded.mask[None] > 0.5,
                           batch_size=self.tile_batch)
        tiles = len(net.layout(1, *image.shape[1:])[2])
        callback = None if on_estimate is None else \
            lambda index, x, predicted: on_estimate(predicted[0].cpu()) if index == 0 else None
        with tqdm(total=tiles * calls, desc=label, unit="tile", disable=not self.progress, leave=False) as bar:
            net.on_tiles = bar.update
            restored = restore(replace(self.model, net=net), degraded.condition[None], degraded.mask[None],
                               sampler=self.sampler, steps=steps, seed=[seed], callback=callback, task=self.task,
                               precision=self.precision, init=None if init is None else init[None], strength=strength,
                               guidance=guidance)
        return restored[0].cpu()

    def finish(self, image: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        return self.task.keep_input(image, given).clamp(-1, 1)


@torch.no_grad()
def restore_image(model: Model, task: Task, image: torch.Tensor, mask: torch.Tensor | None = None,
                  sampler: str | None = None, steps: int | None = None, seed: int = 0, precision: Precision = "fp32",
                  progress: bool = True, preview: Preview | None = None, tile: int | None = None,
                  overlap: int | None = None, tile_batch: int = 8, guidance: float | None = None,
                  strength: float | None = None) -> torch.Tensor:
    """Restore one user image [3, H, W] (mask [1, H, W], 1 = generate) at its own size -> [3, H, W] in [-1, 1].

    The task's full-size strategy (Task.full_size: tiles, a small view, or windows coarse to fine) decides how;
    each piece it samples is seeded from (seed, the piece's label). `preview` gets the coarse result first.
    `tile` and `overlap` override the strategy's tile grid; `tile_batch` tiles go through the network at once.
    `guidance` and `strength` override the model's defaults (SamplingConfig) where the strategy starts a sample.
    """
    check_sampling(sampler, steps, guidance, strength)
    image = image.float().cpu()
    task.check_input(image, mask)  # a missing, misshapen or full mask fails before any sampling
    image = task.take_input(image)  # a colour photo for colorization: its gray version
    strategy = task.full_size
    if tile is not None or overlap is not None:
        grid = replace(strategy.grid, tile=strategy.grid.tile if tile is None else tile,
                       overlap=strategy.grid.overlap if overlap is None else overlap)
        strategy = replace(strategy, grid=grid)
    pieces = TaskSampler(model, task, sampler, steps, seed, precision, tile_batch, progress, guidance, strength)
    restored = strategy.restore(pieces, image, mask, preview)
    return torch.where(mask > 0.5, restored, image) if task.has_known_region else restored


SIDES = ("left", "right", "top", "bottom")


def extend_image(model: Model, image: torch.Tensor, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
                 **options) -> torch.Tensor:
    """Grow an image [3, H, W] by the given px on each side: uncropping, window by window (`restore_image` options)."""
    for side, amount in zip(SIDES, (left, right, top, bottom)):
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ValueError(f"--{side} must be a non-negative number of pixels, got {amount!r}")
    if not left + right + top + bottom:
        raise ValueError("nothing to extend: give --left, --right, --top or --bottom")
    height, width = image.shape[1:]
    if (pixels := (top + height + bottom) * (left + width + right)) > max_pixels():
        raise ValueError(f"the extended image would be {left + width + right}x{top + height + bottom}, "
                         f"{pixels / 1e6:.1f} megapixels, over the limit of {max_pixels():,} pixels "
                         f"({MAX_PIXELS_ENV}=<pixels> raises it)")
    canvas = torch.zeros(3, top + height + bottom, left + width + right)
    canvas[:, top:top + height, left:left + width] = image
    mask = torch.ones(1, *canvas.shape[1:])
    mask[:, top:top + height, left:left + width] = 0
    return restore_image(model, get_task("uncropping"), canvas, mask, **options)
