"""Filling an unknown region at any size, window by window and coarse to fine (inpainting, uncropping, extend).

    FillWindows("holes", reach=20)        # a window around each hole (inpainting)
    FillWindows("outward", reach=32)      # windows marching out of the known part (uncropping, `palette extend`)

Like the tile strategies in tiling.py, it asks a WindowSampler for every piece it samples and knows no model,
task or sampler.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .tiling import Preview, TileGrid, WindowSampler, resize, scaled_size, shrink_mask, tile_origins

# A window must hold known and unknown pixels side by side: the outward plan's are at least this wide.
MIN_OUTWARD_SIDE = 8


@dataclass(frozen=True)
class Box:
    top: int
    left: int
    bottom: int
    right: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def union(self, other: Box) -> Box:
        return Box(min(self.top, other.top), min(self.left, other.left), max(self.bottom, other.bottom),
                   max(self.right, other.right))


def hole_windows(unknown: torch.Tensor, margin: int, context: float) -> list[Box]:
    """One box per hole of `unknown` [H, W]: its bounding box grown by max(margin, context * its long side);
    boxes that overlap or touch are merged into their bounding box until none do."""
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(unknown.numpy().astype(np.uint8), connectivity=8)
    height, width = unknown.shape
    boxes = []
    for left, top, box_width, box_height, _ in stats[1:count].tolist():
        grow = max(margin, round(context * max(box_width, box_height)))
        boxes.append(Box(max(0, top - grow), max(0, left - grow), min(height, top + box_height + grow),
                         min(width, left + box_width + grow)))
    while True:  # painted boxes that connect form a group; a group's bounding box may meet another: repeat
        canvas = np.zeros((height, width), np.uint8)
        for box in boxes:
            canvas[box.slices] = 1
        labels = cv2.connectedComponents(canvas, connectivity=4)[1]
        groups: dict[int, Box] = {}
        for box in boxes:
            label = int(labels[box.top, box.left])
            groups[label] = groups[label].union(box) if label in groups else box
        if len(groups) == len(boxes):
            return boxes
        boxes = list(groups.values())


def outward_windows(unknown: torch.Tensor, min_known: float = 0.5) -> Iterator[Box]:
    """Windows, each filling the most unknown pixels while at least `min_known` of it is known.

    `unknown` [H, W] is read again before each window, so the caller marks what a window filled. A window is a
    square whose side is the known region's long side, within the image; where that is under MIN_OUTWARD_SIDE px
    (a tiny known region, a strip one pixel high), it grows to that side as far as the image allows. When no
    window is known enough, the best-known one goes.
    """
    height, width = unknown.shape
    rows, cols = torch.nonzero(~unknown, as_tuple=True)
    side = max(MIN_OUTWARD_SIDE, min(height, width, max(int(rows.max() - rows.min()) + 1,
                                                        int(cols.max() - cols.min()) + 1)))
    window_height, window_width = min(height, side), min(width, side)
    tops = torch.tensor(tile_origins(height, window_height, window_height - max(1, window_height // 8)))
    lefts = torch.tensor(tile_origins(width, window_width, window_width - max(1, window_width // 8)))
    while unknown.any():
        integral = F.pad(unknown.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
        bottoms, rights = tops + window_height, lefts + window_width
        counts = (integral[bottoms][:, rights] - integral[tops][:, rights] - integral[bottoms][:, lefts]
                  + integral[tops][:, lefts])
        known_enough = (counts > 0) & (counts <= (1 - min_known) * window_height * window_width)
        score = torch.where(known_enough, counts, torch.where(counts > 0, -counts, -math.inf))
        best = int(score.argmax())
        top, left = int(tops[best // len(lefts)]), int(lefts[best % len(lefts)])
        yield Box(top, left, top + window_height, left + window_width)


def distance_to_known(unknown: torch.Tensor) -> torch.Tensor:
    """Euclidean distance in px from each pixel of `unknown` [H, W] (bool) to the nearest known one; 0 if known."""
    import cv2

    return torch.from_numpy(cv2.distanceTransform(unknown.numpy().astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE))


def farthest_unknown(unknown: torch.Tensor) -> float:
    """The largest distance in px from an unknown pixel of `unknown` [H, W] to a known one."""
    if unknown.all():
        return float(max(unknown.shape))
    return float(distance_to_known(unknown).max())


def coarsest_scale(generates: torch.Tensor, reach: float) -> float:
    """The scale at which a window that generates `generates` [H, W] (bool) is first sampled: where its farthest
    unknown pixel lies `reach` px from a known one, doubled until some pixel of the shrunk window is wholly known
    (a known strip thinner than a shrunk pixel would leave the model nothing to start from)."""
    scale = reach / farthest_unknown(generates)
    while scale < 1 and shrink_mask(generates[None].float(), *scaled_size(*generates.shape, scale)).amin() > 0.5:
        scale *= 2
    return min(scale, 1.0)


def scale_ladder(coarsest: float) -> list[float]:
    """Scales from `coarsest` up to 1, doubling each time."""
    if coarsest >= 1:
        return [1.0]
    levels = math.ceil(math.log2(1 / coarsest) - 1e-9)
    return [coarsest * 2 ** level for level in range(levels)] + [1.0]


def seam_band(own: torch.Tensor, generated: torch.Tensor, width: float) -> torch.Tensor:
    """Blend weights [h, w] for a window: 1 on `own`, falling linearly to 0 over `width` px of `generated`.

    `own` [h, w] is what the window is the first to fill and `generated` [h, w] what earlier windows filled. The
    window samples its band of earlier output again and crossfades into it, so two windows meet without a step.
    """
    weight = own.float()
    if width <= 0 or not generated.any() or own.all():
        return weight
    distance = distance_to_known(~own)
    ramp = (1 - distance / width).clamp(0, 1)
    return torch.where(generated & ~own, ramp, weight)


@dataclass
class _Window:
    box: Box
    weight: torch.Tensor  # [h, w]: 1 where this window generates, a ramp into earlier windows' output, 0 elsewhere
    scales: list[float] = field(default_factory=list)
    output: torch.Tensor | None = None  # [3, h, w]: its latest sample, at full size

    @property
    def generates(self) -> torch.Tensor:
        return (self.weight > 0).float()[None]


@dataclass(frozen=True)
class FillWindows:
    """Fill the unknown region window by window: sampled small where the hole fits the model, refined up to full size.

    plan "holes": a window per hole (connected components of the mask) with `margin` px of context, or
    `context` times the hole's long side if more; windows that meet are merged (IOPaint crops around a mask with a
    128 px margin). plan "outward": square windows marching out of the known region, each at least half known
    and conditioned on what earlier windows made (Palette §5.4 builds panoramas by repeated uncropping); each also
    samples `feather` × its side of earlier windows' output again and crossfades into it (`seam_band`).

    A window is first sampled at the scale where its farthest unknown pixel lies `reach` px from a known one
    (holes of the size the model was trained on), then upsampled 2x at a time and refined by SDEdit (Meng et al.
    2022): re-noised `refine_strength` of the way and denoised, the strength halving at each finer scale. Known
    pixels are pasted exactly at every scale. All windows are sampled coarse first, which is the preview.
    """

    plan: Literal["holes", "outward"]
    reach: float = 20.0
    margin: int = 128
    context: float = 0.5
    refine_strength: float = 0.2
    feather: float = 0.125
    grid: TileGrid = TileGrid(tile=128, overlap=32)

    def __post_init__(self) -> None:
        if self.plan not in ("holes", "outward"):
            raise ValueError(f"unknown window plan {self.plan!r}; expected holes or outward")
        if not 0 < self.refine_strength <= 1:
            raise ValueError(f"refine_strength must be in (0, 1], got {self.refine_strength}")

    def restore(self, sampler: WindowSampler, image: torch.Tensor, mask: torch.Tensor | None,
                preview: Preview | None = None) -> torch.Tensor:
        if mask is None:
            raise ValueError("filling windows needs a mask")
        result = image.clone().float()
        unknown = mask[0].cpu() > 0.5
        generated = torch.zeros_like(unknown)
        boxes = hole_windows(unknown, self.margin, self.context) if self.plan == "holes" else outward_windows(unknown)
        windows = []
        for box in boxes:
            own = unknown[box.slices].clone()
            if not own.any():
                continue
            band = self.feather * max(box.bottom - box.top, box.right - box.left)
            weight = seam_band(own, generated[box.slices], band)
            windows.append(_Window(box, weight, scale_ladder(coarsest_scale(weight > 0, self.reach))))
            self._level(sampler, result, windows[-1], len(windows) - 1, 0)
            unknown[box.slices] = False
            generated[box.slices] |= own
        if preview is not None:
            preview(result)
        for index, window in enumerate(windows):
            for level in range(1, len(window.scales)):
                self._level(sampler, result, window, index, level)
        # A refinement overwrites the band a later window had crossfaded into it: lay the windows down again.
        for window in windows:
            result[(slice(None), *window.box.slices)].lerp_(window.output, window.weight[None])
        return result

    def _level(self, sampler: WindowSampler, result: torch.Tensor, window: _Window, index: int, level: int) -> None:
        """Sample (level 0) or refine one window at one scale, writing its pixels into `result`."""
        crop = result[(slice(None), *window.box.slices)]
        if window.output is not None:  # an earlier window's refinement may have overwritten this one's band
            crop.lerp_(window.output, window.weight[None])
        height, width = crop.shape[1:]
        size = scaled_size(height, width, window.scales[level])
        generates = shrink_mask(window.generates, *size)
        small = resize(crop, *size)
        label = f"window {index} scale {size[1]}x{size[0]}"
        if level == 0:
            filled = sampler.sample(small, generates, self.grid, label)
        else:
            filled = sampler.sample(small, generates, self.grid, label, init=small,
                                    strength=self.refine_strength / 2 ** (level - 1))
        window.output = resize(filled, height, width)
        crop.lerp_(window.output, window.weight[None])
