"""Typed run configuration: frozen dataclasses, named network presets, YAML load/save, `key=value` overrides.

    config = load_config("configs/inpainting.yaml", overrides=["train.steps=100"])
    save_config(config, "run/config.yaml")

Unknown keys and invalid values raise ConfigError, naming the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .schema import ConfigError, build_dataclass


@dataclass(frozen=True)
class NetworkConfig:
    """The U-Net's shape; `preset` fills every field, explicit fields override it.

    The defaults are the `small` preset, so `NetworkConfig()` is the network that `preset="small"` names.
    """

    preset: str = "small"
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    layers_per_block: int = 2
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes (px) that get self-attention
    mid_attention: bool = True
    head_channels: int = 32
    norm_groups: int = 32
    dropout: float = 0.0
    gradient_checkpointing: bool = False
    # The mask (1 = generate) as one more input channel beside the condition. A residual model's condition is
    # the hole's OpenCV fill, which hides where the hole is; Palette's own condition marks it with noise.
    mask_input: bool = False


# Presets by name. `paper` is ADM-256 as used by Palette (App. A); `base` matches the
# 64-channel net shipped by the best-known reimplementation, so speed comparisons are fair.
NETWORK_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(base_channels=256, channel_mults=(1, 1, 2, 2, 4, 4), layers_per_block=2,
                  attention_resolutions=(32, 16, 8), mid_attention=True, head_channels=64),
    "base": dict(base_channels=64, channel_mults=(1, 2, 4, 8), layers_per_block=2,
                 attention_resolutions=(), mid_attention=True, head_channels=32),
    "small": dict(base_channels=64, channel_mults=(1, 2, 2, 4), layers_per_block=2,
                  attention_resolutions=(16,), mid_attention=True, head_channels=32, norm_groups=32),
    "compact": dict(base_channels=48, channel_mults=(1, 2, 3, 4), layers_per_block=1,
                    attention_resolutions=(16,), mid_attention=True, head_channels=32, norm_groups=16),
    "tiny": dict(base_channels=16, channel_mults=(1, 2), layers_per_block=1,
                 attention_resolutions=(), mid_attention=True, head_channels=16, norm_groups=8),
}

Objective = Literal["eps", "v", "regression"]
SamplerName = Literal["ddpm", "ddim", "dpmpp", "unipc"]
LossKind = Literal["l2", "l1"]


@dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedules and the training objective (Palette §2, App. A)."""

    objective: Objective = "eps"
    loss: LossKind = "l2"
    # Diffuse target - source_estimate(condition) instead of the target (as SRDiff, Li et al. 2022, does for
    # super-resolution): the input's own content is free, and the model only learns what it lacks.
    residual: bool = False
    # With `residual`: per task name, the factor its residual is multiplied by, so every task diffuses at about
    # the same scale (EDM's sigma_data = 0.5, Karras et al. 2022 §5) and weighs alike in the loss. Unlisted: 1.
    residual_scale: dict[str, float] = field(default_factory=dict)
    # With `residual`: per task name, a strength s that weighs each pixel's loss by 1 + s |residual| / 0.5
    # (diffusion.rebalance_weight): where the input leaves the answer open the model leans to the larger residual,
    # for colorization the more saturated colour, instead of the gray mean. Unlisted: 0 (plain loss).
    residual_rebalance: dict[str, float] = field(default_factory=dict)
    # Training: linear beta over 2000 steps, noise level drawn between steps (SR3 / WaveGrad).
    train_steps: int = 2000
    train_beta_start: float = 1e-6
    train_beta_end: float = 0.01
    # Inference: Palette App. A, 1000 steps, linear beta 1e-4 .. 0.09.
    sample_steps: int = 1000
    sample_beta_start: float = 1e-4
    sample_beta_end: float = 0.09


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and which tasks degrade them."""

    source: str = ""  # a folder (searched recursively), one image, a text file listing images, or .tar shards
    image_size: int = 64
    tasks: dict[str, float] = field(default_factory=lambda: {"inpainting": 1.0})
    crop_scale: tuple[float, float] = (0.5, 1.0)  # crop side as a fraction of the short side
    # A task's own crop_scale, e.g. JPEG's down to a photo's own pixel scale, where it runs (tiling.py); the
    # default recipe has none (MODEL_CARD.md, "JPEG at a photo's own scale").
    task_crop_scale: dict[str, tuple[float, float]] = field(default_factory=dict)
    flip: bool = True
    cache_images: bool = True  # keep decoded images in memory (for small pools)
    num_workers: int = 2
    preview_source: str = ""  # images for the periodic sample grid; empty = the training source


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, EMA, checkpointing and logging."""

    steps: int = 10000
    batch_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 500
    # The lr falls linearly to 0 over the last `decay_steps` of `steps` (warmup-stable-decay, Hägele et al. 2024):
    # a constant-lr run resumes with a larger `steps` and a short cool-down to give a model to export.
    decay_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    sample_every: int = 1000
    log_every: int = 50
    seed: int = 0
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast applies on CUDA only
    compile: bool = False
    # Start from these EMA weights (a run, checkpoint folder or .safetensors) instead of a random init; the
    # step count, optimiser and EMA warm-up start afresh (fine-tuning). A resumed run ignores it.
    init_from: str = ""


# Beyond a few, guidance only oversaturates (MODEL_CARD.md); a typo like 20 would return noise.
MAX_GUIDANCE = 10
# More steps than the paper's 1000-step chain never helps, and a typo like 5000 would run for hours.
MAX_STEPS = 1000
# A chroma filter (SamplingConfig.chroma_filter) wider than this washes out the colour it smooths.
MAX_CHROMA_FILTER = 8


@dataclass(frozen=True)
class SamplingConfig:
    """The default sampler of `palette sample` and the preview grids; each task_* dict overrides its default for
    the tasks it names (chosen on validation data; MODEL_CARD.md)."""

    sampler: SamplerName = "dpmpp"
    steps: int = 20
    task_steps: dict[str, int] = field(default_factory=dict)
    # Guidance weight w: the x0 estimate is weak + w (full - weak); 1 is off and costs one network call per step,
    # any other weight two. The weak model (guidance.py) is the network with perturbed attention, or where `guide`
    # names a weights file (beside the model's, else bundled), that less-trained twin of it (autoguidance).
    guidance: float = 1.0
    task_guidance: dict[str, float] = field(default_factory=dict)
    guide: str = ""
    # Below 1, sampling starts from the input's own estimate (source_estimate) re-noised this share of the way and
    # runs this share of the steps (SDEdit, Meng et al. 2022); 1 starts from pure noise.
    strength: float = 1.0
    task_strength: dict[str, float] = field(default_factory=dict)
    # Above 0, the finished sample, taken as x_t at this timestep of the training schedule with no noise added,
    # gets one more x0 prediction: it removes fine noise the last steps leave (a final Tweedie denoising step,
    # Jolicoeur-Martineau et al. 2021). One more network call per sample (two with guidance); 0 is off.
    final_denoise: int = 0
    task_final_denoise: dict[str, int] = field(default_factory=dict)
    # True keeps the colour of the input's own estimate (source_estimate, e.g. a hole's OpenCV fill) and takes
    # only the luma of what the network adds: a small model's colours in holes are speckle and blotches.
    estimate_chroma: bool = False
    task_estimate_chroma: dict[str, bool] = field(default_factory=dict)
    # Above 0, the output's chroma is smoothed by a guided filter of this radius with its luma as the guide
    # (filters.smooth_chroma): it takes out a small model's colour speckle (radius 1) and blotches (radius 8) and
    # keeps colour edges on luma edges.
    chroma_filter: int = 0
    task_chroma_filter: dict[str, int] = field(default_factory=dict)
    # Above 0, each hole whose farthest pixel lies at least this many px from a known one has its colour smoothed
    # along the luma by the chroma filter at radius 8 (filters.smooth_deep_hole_colour): OpenCV's fill, whose colour
    # a hole keeps with estimate_chroma, can streak one colour of the border across a wide hole.
    hole_colour_depth: float = 0.0
    task_hole_colour_depth: dict[str, float] = field(default_factory=dict)

    def for_task(self, name: str, task: str | None) -> Any:
        """The default `name` ("steps", "guidance", "strength", ...: a task_* field) for `task`; None: model-wide."""
        default = getattr(self, name)
        return getattr(self, f"task_{name}").get(task, default) if task is not None else default

    def resolve(self, task: str | None, steps: int | None = None, guidance: float | None = None,
                strength: float | None = None) -> tuple[int, float, float]:
        """(steps, guidance, strength) for `task`: each value given, or where it is None the default for the task."""
        return (self.for_task("steps", task) if steps is None else steps,
                self.for_task("guidance", task) if guidance is None else guidance,
                self.for_task("strength", task) if strength is None else strength)

    def describe(self, task: str | None) -> str:
        """The defaults for `task` in words, e.g. "20 steps from its estimate re-noised 20%, guidance 1.5"."""
        names = ("steps", "strength", "guidance", "final_denoise", "estimate_chroma", "chroma_filter",
                 "hole_colour_depth")
        steps, strength, guidance, final, chroma, radius, depth = (self.for_task(name, task) for name in names)
        words = f"{steps} step{'s' * (steps != 1)}"
        if strength < 1:
            words += f" from its estimate re-noised {strength:.0%}"
        if guidance != 1:
            words += f", {'auto' * bool(self.guide)}guidance {guidance:g}"
        if final:
            words += f", then denoised at t = {final}"
        words += ", colour from its estimate" * chroma
        words += f", colour smoothed (radius {radius})" if radius else ""
        return words + (f", colour smoothed in holes {depth:g} px deep or more" if depth else "")


@dataclass(frozen=True)
class Config:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


def _network_values(values: dict[str, Any]) -> dict[str, Any]:
    """Expand a network section: preset values first, explicit keys on top."""
    values = dict(values)
    preset = values.get("preset", NetworkConfig.preset)
    if preset not in NETWORK_PRESETS:
        raise ConfigError(f"network.preset: unknown preset {preset!r}; expected one of {', '.join(NETWORK_PRESETS)}")
    return {**NETWORK_PRESETS[preset], **values, "preset": preset}


# Numbers that must be positive (a count, a period, a rate) or at least not negative, checked here so that a
# zero fails at load time with its key rather than as a ZeroDivisionError deep in training.
_POSITIVE = ("train.steps", "train.batch_size", "train.lr", "train.grad_clip", "train.checkpoint_every",
             "train.keep_checkpoints", "train.sample_every", "train.log_every", "diffusion.train_steps",
             "diffusion.sample_steps", "data.image_size")
_NON_NEGATIVE = ("train.warmup_steps", "train.decay_steps", "train.weight_decay", "train.seed", "data.num_workers")


# Each sampling default, also per task: its allowed values in words and as a test given the last training timestep.
_SAMPLING_RANGES = {"steps": (f"from 1 to {MAX_STEPS}", lambda value, last: 1 <= value <= MAX_STEPS),
                    "guidance": (f"from 1 (off) to {MAX_GUIDANCE}", lambda value, last: 1 <= value <= MAX_GUIDANCE),
                    "strength": ("in (0, 1]", lambda value, last: 0 < value <= 1),
                    "final_denoise": ("from 0 (off) to {last}", lambda value, last: 0 <= value <= last),
                    "estimate_chroma": ("true or false", lambda value, last: isinstance(value, bool)),
                    "chroma_filter": (f"from 0 (off) to {MAX_CHROMA_FILTER}",
                                      lambda value, last: 0 <= value <= MAX_CHROMA_FILTER),
                    "hole_colour_depth": ("0 (off) or more", lambda value, last: value >= 0)}


def _check_finite(values: Any, key: str) -> None:
    """Refuse inf and NaN anywhere in the (plain, nested) config: NaN slips past every `value < 0` check."""
    if isinstance(values, dict):
        for name, value in values.items():
            _check_finite(value, f"{key}.{name}" if key else name)
    elif isinstance(values, list):
        for value in values:
            _check_finite(value, key)
    elif isinstance(values, float) and not math.isfinite(values):
        raise ConfigError(f"{key}: must be a finite number, got {values}")


def _validate(config: Config) -> Config:
    """Ranges and cross-field checks that a single annotation cannot express."""
    _check_finite(config_to_dict(config), "")
    for key in _POSITIVE + _NON_NEGATIVE:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value < 0 or (value == 0 and key in _POSITIVE):
            bound = ">= 0" if key in _NON_NEGATIVE else ">= 1" if isinstance(value, int) else "> 0"
            raise ConfigError(f"{key}: must be {bound}, got {value}")
    if config.train.decay_steps > config.train.steps:
        raise ConfigError(f"train.decay_steps: must be at most train.steps ({config.train.steps}), "
                          f"got {config.train.decay_steps}")
    if not 0 <= config.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: expected 0 <= decay < 1, got {config.train.ema_decay}")
    diffusion = config.diffusion
    for schedule, start, end in (("train", diffusion.train_beta_start, diffusion.train_beta_end),
                                 ("sample", diffusion.sample_beta_start, diffusion.sample_beta_end)):
        if not 0 < start <= end < 1:
            raise ConfigError(f"diffusion.{schedule}_beta_start, diffusion.{schedule}_beta_end: "
                              f"expected 0 < start <= end < 1, got {start}, {end}")
    from .tasks import TASKS  # the registry is the one list of task names; imported here, not at start-up

    sampling = config.sampling
    per_task = {"data.tasks": config.data.tasks, "data.task_crop_scale": config.data.task_crop_scale,
                "diffusion.residual_scale": config.diffusion.residual_scale,
                "diffusion.residual_rebalance": config.diffusion.residual_rebalance,
                **{f"sampling.task_{name}": getattr(sampling, f"task_{name}") for name in _SAMPLING_RANGES}}
    for key, values in per_task.items():
        for name in values:
            if name not in TASKS:
                raise ConfigError(f"{key}: unknown task {name!r}; expected some of {', '.join(TASKS)}")
    for name, weight in config.data.tasks.items():
        if weight < 0:
            raise ConfigError(f"data.tasks.{name}: weight must be >= 0, got {weight}")
    if not config.data.tasks or sum(config.data.tasks.values()) <= 0:
        raise ConfigError("data.tasks: give at least one task with a positive weight")
    last = config.diffusion.train_steps - 1
    for name, (words, allowed) in _SAMPLING_RANGES.items():
        overrides = getattr(sampling, f"task_{name}")
        values = {name: getattr(sampling, name), **{f"task_{name}.{task}": value for task, value in overrides.items()}}
        for key, value in values.items():
            if not allowed(value, last):
                raise ConfigError(f"sampling.{key}: must be {words.format(last=last)}, got {value}")
    for name, factor in config.diffusion.residual_scale.items():
        if factor <= 0:
            raise ConfigError(f"diffusion.residual_scale.{name}: must be > 0, got {factor}")
    for name, strength in config.diffusion.residual_rebalance.items():
        if strength < 0:
            raise ConfigError(f"diffusion.residual_rebalance.{name}: must be >= 0, got {strength}")
    if config.diffusion.residual_rebalance and not config.diffusion.residual:
        raise ConfigError("diffusion.residual_rebalance weighs the residual's loss: set diffusion.residual: true")
    size = config.data.image_size
    if size % 2 ** (len(config.network.channel_mults) - 1):
        raise ConfigError(f"data.image_size: {size} is not divisible by the U-Net's downsampling factor")
    scales = {"crop_scale": config.data.crop_scale,
              **{f"task_crop_scale.{name}": scale for name, scale in config.data.task_crop_scale.items()}}
    for key, (low, high) in scales.items():
        if not 0 < low <= high <= 1:
            raise ConfigError(f"data.{key}: expected 0 < low <= high <= 1, got {[low, high]}")
    return config


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from plain nested mappings."""
    values = dict(values or {})
    values["network"] = _network_values(values.get("network") or {})
    return _validate(build_dataclass(Config, values, ""))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested mappings (tuples as lists) for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {section: plain(values) for section, values in dataclasses.asdict(config).items()}


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings (values parsed as YAML) to nested mappings; an empty section (None, as
    YAML reads `train:` alone) is an empty mapping. `values` itself is left as it is."""
    values = {k: {} if v is None else v for k, v in values.items()}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {override!r}: expected section.key=value")
        section = key.partition(".")[0]
        if section not in {f.name for f in dataclasses.fields(Config)}:
            raise ConfigError(f"override {override!r}: unknown section {section!r}")
        target = values
        *parents, leaf = key.split(".")
        for depth, parent in enumerate(parents, 1):
            child = target.get(parent)
            if child is not None and not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {'.'.join(parents[:depth])} is not a section")
            target[parent] = dict(child or {})  # a copy: the caller's mappings stay as they are
            target = target[parent]
        target[leaf] = yaml.safe_load(text) if text else ""  # `key=` is the empty string
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or defaults when `path` is None) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return config_from_dict(apply_overrides(values, overrides or []))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path else str(error)) from None


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
