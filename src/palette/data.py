"""Image folders and file lists -> clean crops -> (condition, mask, target) through the configured tasks.

Sample number n of a run is a pure function of (seed, n): the image, crop, flip, task and degradation all
come from `np.random.default_rng([seed, n])`, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .config import DataConfig
from .imageio import ImageError, list_images, open_image, pil_to_tensor
from .tasks import get_task


def resolve_sources(source: str | Path) -> list[Path]:
    """A folder (searched recursively) or a text file with one image path per line, relative to the file."""
    path = Path(source)
    if path.is_dir():
        return list_images(path)
    if path.is_file():
        lines = [line.strip() for line in path.read_text().splitlines()]
        return [(path.parent / line) for line in lines if line and not line.startswith("#")]
    raise ImageError(f"{path}: data source is neither a folder nor a list file")


def usable_images(paths: list[Path], source: str | Path) -> list[Path]:
    """Drop files that cannot be decoded, warning with each name; error when none is left."""
    good = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
            good.append(path)
        except Exception as error:  # Pillow raises many types for broken files
            warnings.warn(f"skipping unreadable image {path}: {error}", stacklevel=2)
    skipped = len(paths) - len(good)
    if skipped:
        warnings.warn(f"{source}: skipped {skipped} unreadable image(s) of {len(paths)}", stacklevel=2)
    if not good:
        raise ImageError(f"{source}: no usable image found")
    return good


def random_crop(image: Image.Image, size: int, scale: tuple[float, float], flip: bool,
                rng: np.random.Generator) -> Image.Image:
    """A square crop whose side is a random fraction of the short side, resized to `size`, maybe mirrored."""
    width, height = image.size
    short = min(width, height)
    side = max(1, min(short, round(short * rng.uniform(*scale))))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = image.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side), reducing_gap=3.0)
    if flip and rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return crop


def centre_crop(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square, resized to `size` (the fixed crop used for validation)."""
    width, height = image.size
    short = min(width, height)
    left, top = (width - short) // 2, (height - short) // 2
    return image.resize((size, size), Image.BICUBIC, box=(left, top, left + short, top + short), reducing_gap=3.0)


class PaletteDataset(Dataset):
    """Item n: a random crop of a random image, degraded by a task drawn from the configured mixture."""

    def __init__(self, config: DataConfig, seed: int):
        self.config = config
        self.seed = seed
        self.paths = usable_images(resolve_sources(config.source), config.source)
        self.task_names = sorted(config.tasks)
        weights = np.array([config.tasks[name] for name in self.task_names], dtype=np.float64)
        self.task_probabilities = weights / weights.sum()
        self.tasks = [get_task(name) for name in self.task_names]
        self._cache: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> Image.Image:
        """The decoded image; cached copies are shrunk to the largest size any crop can use."""
        if index in self._cache:
            return self._cache[index]
        image = open_image(self.paths[index])
        if self.config.cache_images:
            # The smallest crop (crop_scale[0] of the short side) still maps at least 1:1 onto image_size.
            short = math.ceil(self.config.image_size / self.config.crop_scale[0])
            if min(image.size) > short:
                factor = short / min(image.size)
                image = image.resize((round(image.width * factor), round(image.height * factor)), Image.BICUBIC,
                                     reducing_gap=3.0)
            self._cache[index] = image
        return image

    def __getitem__(self, sample_number: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, sample_number])
        image = self.image(int(rng.integers(len(self.paths))))
        clean = pil_to_tensor(random_crop(image, self.config.image_size, self.config.crop_scale, self.config.flip, rng))
        task_index = int(rng.choice(len(self.tasks), p=self.task_probabilities))
        degraded = self.tasks[task_index].degrade(clean, rng)
        return {"target": clean, "condition": degraded.condition, "mask": degraded.mask,
                "task": torch.tensor(task_index)}


class SampleNumbers(Sampler[int]):
    """Endless global sample numbers for one rank, starting after `start_step` optimizer steps."""

    def __init__(self, start_step: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.start_step, self.batch_size, self.rank, self.world_size = start_step, batch_size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            step += 1
