"""Image folders, file lists and shards -> clean crops -> (condition, mask, target) through the configured tasks.

    loader, summary = training_loader(config.data, seed=0, start_step=0, batch_size=16)

Sample number n of a run is a pure function of (seed, n): the image, crop, flip, task and degradation all
come from `np.random.default_rng([seed, n])`, so a resumed run sees exactly the batches it would have seen.
WebDataset shards stream instead (shards.py), deterministically per (seed, step, world size, workers).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import DataConfig
from .imageio import IMAGE_SUFFIXES, ImageError, frame_count, image_inputs, open_image, pil_to_tensor
from .shards import ShardStream, first_images, is_shard_source, resolve_shards
from .tasks import get_task


# What data.source takes, in the words of its errors.
SOURCE_KINDS = "a folder of images, one image, a text file listing image paths, or .tar shards"


def resolve_sources(source: str | Path) -> list[Path]:
    """The images of `data.source`: a folder's (searched recursively), one image, or those a list file names (one
    path per line, relative to the file; a UTF-8 byte order mark, as Windows editors save, is not part of a path)."""
    path = Path(source)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return image_inputs(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file or folder; data.source takes {SOURCE_KINDS}")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError as error:
        raise ImageError(f"{path}: neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a UTF-8 list of image paths "
                         f"(byte {error.start} is not UTF-8); data.source takes {SOURCE_KINDS}") from error
    return [(path.parent / line) for line in lines if line and not line.startswith("#")]


def usable_images(paths: list[Path], source: str | Path) -> list[Path]:
    """The files that fully decode, each decoded once; the rest are skipped with a warning naming each.

    Decoding (not Image.verify, which passes a truncated JPEG) finds a broken file here rather than at the step
    that first draws it. An animated image is used by its first frame; how many are is counted in a warning.
    """
    good, animated = [], 0
    for path in paths:
        try:
            open_image(path)
        except ImageError as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
            continue
        good.append(path)
        animated += frame_count(path) > 1
    skipped = len(paths) - len(good)
    if skipped:
        warnings.warn(f"{source}: skipped {skipped} unreadable image(s) of {len(paths)}", stacklevel=2)
    if animated:
        warnings.warn(f"{source}: {animated} animated image(s) are used by their first frame", stacklevel=2)
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


# The random crops an evaluation adds to each image's centre crop: 35-100% of the short side, the crops the shipped
# model's first stages trained on (its later chunks draw 20-100%).
EVALUATION_CROP_SCALE = (0.35, 1.0)


def evaluation_crops(paths: list[Path], size: int, count: int, seed: int) -> list[Image.Image]:
    """Of each image, its centre crop and `count` - 1 random crops (EVALUATION_CROP_SCALE, never mirrored; rng
    (seed, the image's index)), at `size`: the fixed crops the shipped-model test, scripts/sweep.py and
    scripts/unseen_photos.py take."""
    crops = []
    for index, path in enumerate(paths):
        image, rng = open_image(path), np.random.default_rng([seed, index])
        crops.append(centre_crop(image, size))
        crops += [random_crop(image, size, EVALUATION_CROP_SCALE, False, rng) for _ in range(count - 1)]
    return crops


def task_names(config: DataConfig) -> list[str]:
    """The configured tasks in sorted order; a batch's `task` entry is an index into this list."""
    return sorted(config.tasks)


class Examples:
    """Clean image + rng -> one training example: a task drawn from the mixture, a random crop at that task's
    scale (data.task_crop_scale, else data.crop_scale), degraded by the task."""

    def __init__(self, config: DataConfig):
        self.config = config
        self.task_names = task_names(config)
        weights = np.array([config.tasks[name] for name in self.task_names], dtype=np.float64)
        self.task_probabilities = weights / weights.sum()
        self.tasks = [get_task(name) for name in self.task_names]
        self.crop_scales = [config.task_crop_scale.get(name, config.crop_scale) for name in self.task_names]

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        task_index = int(rng.choice(len(self.tasks), p=self.task_probabilities))
        crop = random_crop(image, self.config.image_size, self.crop_scales[task_index], self.config.flip, rng)
        clean = pil_to_tensor(crop)
        degraded = self.tasks[task_index].degrade(clean, rng)
        return {"target": clean, "condition": degraded.condition, "mask": degraded.mask,
                "task": torch.tensor(task_index)}


class PaletteDataset(Dataset):
    """Item n: a random crop of a random image, degraded by a task drawn from the configured mixture."""

    def __init__(self, config: DataConfig, seed: int):
        self.config = config
        self.seed = seed
        self.paths = usable_images(resolve_sources(config.source), config.source)
        self.examples = Examples(config)
        self.task_names, self.tasks = self.examples.task_names, self.examples.tasks
        self._cache: dict[int, Image.Image] = {}
        self._failed: set[int] = set()  # files that stopped decoding after usable_images checked them

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> Image.Image:
        """The decoded image; cached copies are shrunk to the largest size any crop can use."""
        if index in self._cache:
            return self._cache[index]
        image = open_image(self.paths[index])
        if self.config.cache_images:
            # The smallest crop (the least crop scale of any task) still maps at least 1:1 onto image_size.
            short = math.ceil(self.config.image_size / min(low for low, _ in self.examples.crop_scales))
            if min(image.size) > short:
                factor = short / min(image.size)
                image = image.resize((round(image.width * factor), round(image.height * factor)), Image.BICUBIC,
                                     reducing_gap=3.0)
            self._cache[index] = image
        return image

    def draw_image(self, rng: np.random.Generator) -> Image.Image:
        """A random image; one that no longer decodes is skipped with a warning and another is drawn.

        The draws come from `rng`, so a file that fails on every read is skipped the same way on every resume.
        """
        while len(self._failed) < len(self.paths):
            index = int(rng.integers(len(self.paths)))
            if index in self._failed:
                continue
            try:
                return self.image(index)
            except ImageError as error:
                self._failed.add(index)
                warnings.warn(f"skipping {error}; drawing another image", stacklevel=2)
        raise ImageError(f"{self.config.source}: none of its {len(self.paths)} image(s) decodes any more")

    def __getitem__(self, sample_number: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, sample_number])
        return self.examples(self.draw_image(rng), rng)


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


def training_loader(config: DataConfig, seed: int, start_step: int, batch_size: int, rank: int = 0,
                    world_size: int = 1, pin_memory: bool = False) -> tuple[DataLoader, str]:
    """Endless batches of one rank from optimizer step `start_step` on, and what they are drawn from, in words."""
    if is_shard_source(config.source):
        dataset = ShardStream(config, seed, start_step, batch_size, rank, world_size)
        sampler, summary = None, f"{len(dataset.shards)} shards ({len(dataset.rank_shards)} read by rank {rank})"
    else:
        dataset = PaletteDataset(config, seed)
        sampler, summary = SampleNumbers(start_step, batch_size, rank, world_size), f"{len(dataset)} images"
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=config.num_workers,
                        pin_memory=pin_memory, persistent_workers=config.num_workers > 0)
    return loader, summary


def preview_examples(config: DataConfig, seed: int, count: int) -> list[dict[str, torch.Tensor]]:
    """The fixed examples of the preview grids, from `preview_source` (else the training source)."""
    source = config.preview_source or config.source
    if is_shard_source(source):
        examples = Examples(config)
        return [examples(image, np.random.default_rng([seed, number]))
                for number, image in enumerate(first_images(resolve_shards(source), count))]
    dataset = PaletteDataset(replace(config, source=source), seed)
    return [dataset[number] for number in range(count)]
