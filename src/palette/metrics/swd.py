"""The sliced Wasserstein distance of PGGAN (Karras et al. 2018, App. D) on Laplacian-pyramid patches.

    sliced_wasserstein_distance(pred, target)  # {"value": mean x 1e3, "levels": {"64": ..., "32": ..., "16": ...}}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SWD_PATCH_SIZE = 7  # Karras et al. 2018, App. D: 7x7 neighbourhoods, 128 per image and level
SWD_PATCHES_PER_IMAGE = 128
SWD_DIRECTIONS = 128
SWD_REPEATS = 4
SWD_MIN_RESOLUTION = 16  # PGGAN's coarsest pyramid level
SWD_SEED = 0
SWD_SETTINGS = {"patch": SWD_PATCH_SIZE, "patches_per_image": SWD_PATCHES_PER_IMAGE, "directions": SWD_DIRECTIONS,
                "repeats": SWD_REPEATS, "seed": SWD_SEED, "scale": 1e3}  # as evaluation results record them


def _pyramid_filter(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """PGGAN's pyramid blur: separable binomial [1, 4, 6, 4, 1] / 16, mirrored borders."""
    channels = x.shape[1]
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16 * math.sqrt(gain)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(channels, 1, 1, 5), groups=channels)
    return F.conv2d(x, taps.view(1, 1, 5, 1).expand(channels, 1, 5, 1), groups=channels)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Finest band first; the last entry is the coarsest Gaussian level (Burt & Adelson, as in PGGAN)."""
    pyramid = []
    current = images
    for _ in range(levels - 1):
        smaller = _pyramid_filter(current)[:, :, ::2, ::2]
        upsampled = torch.zeros_like(current)
        upsampled[:, :, ::2, ::2] = smaller
        pyramid.append(current - _pyramid_filter(upsampled, gain=4.0))  # zeros hold 3 of 4 pixels
        current = smaller
    pyramid.append(current)
    return pyramid


def swd_levels(height: int, width: int) -> int:
    """Halve while the next level keeps both sides >= 16 px (PGGAN: 1024 -> 16 is 7 levels; 64 -> 16 is 3)."""
    levels, size = 1, min(height, width)
    while (size + 1) // 2 >= SWD_MIN_RESOLUTION:
        size = (size + 1) // 2
        levels += 1
    return levels


class SlicedWassersteinCollector:
    """Streams patch descriptors of two image sets; `compute` gives SWD x 1e3 per level and their mean.

    Karras et al. 2018 (PGGAN), App. D: 128 random 7x7 patches per image and Laplacian level, each set
    normalised per level and channel by its own mean and std, then the sliced Wasserstein distance over
    128 random unit directions (sorted 1-D projections), averaged over 4 repeats. The two sets draw patches
    at the same positions (one seed), so identical sets give exactly 0.
    """

    def __init__(self, height: int, width: int, seed: int = SWD_SEED) -> None:
        self.levels = swd_levels(height, width)
        self.resolutions = [height]
        while len(self.resolutions) < self.levels:
            self.resolutions.append((self.resolutions[-1] + 1) // 2)
        self.seed = seed
        self.generators = {name: torch.Generator().manual_seed(seed) for name in ("pred", "target")}
        self.descriptors = {name: [[] for _ in range(self.levels)] for name in ("pred", "target")}

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions and targets [N, C, H, W] (any common scale; each set is normalised)."""
        for name, images in (("pred", pred), ("target", target)):
            for store, level in zip(self.descriptors[name], laplacian_pyramid(images.float(), self.levels)):
                store.append(self._patches(level, self.generators[name]))

    @staticmethod
    def _patches(level: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, channels, height, width = level.shape
        size = SWD_PATCH_SIZE
        if height < size or width < size:
            raise ValueError(f"SWD needs images of at least {size}x{size} px, got {height}x{width}")
        rows = torch.randint(0, height - size + 1, (count, SWD_PATCHES_PER_IMAGE), generator=generator)
        cols = torch.randint(0, width - size + 1, (count, SWD_PATCHES_PER_IMAGE), generator=generator)
        windows = level.cpu().unfold(2, size, 1).unfold(3, size, 1)  # [N, C, H-6, W-6, 7, 7]
        picked = windows[torch.arange(count)[:, None], :, rows, cols]  # [N, 128, C, 7, 7]
        return picked.reshape(count * SWD_PATCHES_PER_IMAGE, channels, size * size)

    @staticmethod
    def _normalised(descriptors: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.cat(descriptors)
        mean = stacked.mean((0, 2), keepdim=True)
        std = stacked.std((0, 2), keepdim=True, correction=0).clamp_min(1e-8)
        return ((stacked - mean) / std).flatten(1)

    def compute(self) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed)
        per_level = {}
        for resolution, pred, target in zip(self.resolutions, self.descriptors["pred"], self.descriptors["target"]):
            pred_set, target_set = self._normalised(pred), self._normalised(target)
            distances = []
            for _ in range(SWD_REPEATS):
                directions = torch.randn(pred_set.shape[1], SWD_DIRECTIONS, generator=generator)
                directions = directions / directions.norm(dim=0, keepdim=True)
                projected_pred = (pred_set @ directions).sort(dim=0).values
                projected_target = (target_set @ directions).sort(dim=0).values
                distances.append((projected_pred - projected_target).abs().mean())
            per_level[str(resolution)] = float(torch.stack(distances).mean()) * 1e3
        return {"value": float(np.mean(list(per_level.values()))), "levels": per_level}


def sliced_wasserstein_distance(pred: torch.Tensor, target: torch.Tensor, seed: int = SWD_SEED) -> dict[str, Any]:
    """SWD x 1e3 (PGGAN App. D) between two equal-size sets [N, C, H, W]; see SlicedWassersteinCollector."""
    collector = SlicedWassersteinCollector(pred.shape[-2], pred.shape[-1], seed)
    collector.add(pred, target)
    return collector.compute()
