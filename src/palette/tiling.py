"""Any-size restoration: overlapping tiles blended inside one sampling run, and a small view of the whole.

A model trained on 64 px crops meets a photo of any size in one of three ways; each task names its way as data
(`Task.full_size` in tasks.py):

    Tiled(TileGrid(64, 16, align=16))     # the input's own pixel grid, in tiles (JPEG restoration)
    LowResolution(short_side=128)         # a small view, its change upsampled onto the full input (colorization)
    FillWindows("holes", reach=20)        # windows around the unknown region, coarse to fine (windows.py)

A strategy asks a WindowSampler (inference.py builds one from a model and a task) for every piece it samples,
so this module knows no model, no task and no sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

Preview = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of `tile` px overlapping by at least `overlap` px, their origins on multiples of `align`."""

    tile: int = 128
    overlap: int = 32
    align: int = 1

    def __post_init__(self) -> None:
        if self.tile < 1 or self.align < 1 or self.tile % self.align:
            raise ValueError(f"tile size {self.tile} must be a positive multiple of the alignment {self.align}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"tile overlap must be from 0 to {self.tile - 1} px, got {self.overlap}")


class WindowSampler(Protocol):
    """What a strategy needs from a model and a task: sample one piece, and make an image agree with the input."""

    def sample(self, image: torch.Tensor, mask: torch.Tensor | None, grid: TileGrid, label: str,
               init: torch.Tensor | None = None, strength: float | None = None,
               on_estimate: Preview | None = None) -> torch.Tensor:
        """The user's image [3, h, w] (mask [1, h, w], 1 = generate) restored at its size, tiled on `grid`.

        With `init`, sampling starts from it re-noised `strength` of the way (SDEdit; None: the model's default
        for the task, which may start from the input's own estimate without `init`). `label` names the piece
        (its seed derives from it) and `on_estimate` sees the first full estimate.
        """

    def finish(self, image: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """`image` made to agree with what the user's input `given` fixes, in [-1, 1]."""


def tile_origins(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Origins of tiles of `tile` px covering [0, length), stride at most tile - overlap, on multiples of `align`.

    The last tile ends at `length`; it is aligned too when `length` is a multiple of `align`.
    """
    if length <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    return list(range(0, length - tile, stride)) + [length - tile]


def blend_ramp(size: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """A tile's weight along one axis: raised-cosine ramps over `overlap` px on the sides it shares, else 1.

    Two tiles overlapping by exactly `overlap` px get weights summing to 1 (sin^2 + cos^2); every weight is
    positive, so a pixel any tile covers can be normalised.
    """
    weight = torch.ones(size)
    overlap = min(overlap, size)
    if overlap:
        ramp = torch.sin(0.5 * math.pi * (torch.arange(overlap) + 0.5) / overlap) ** 2
        if rise:
            weight[:overlap] = ramp
        if fall:
            weight[-overlap:] = torch.minimum(weight[-overlap:], ramp.flip(0))
    return weight


class TiledNetwork(torch.nn.Module):
    """A network (x_t, noise_level, condition) -> output called on overlapping tiles, outputs blended smoothly.

    The sampler runs once over the whole image, so every tile shares the noise field and the steps and
    overlapping tiles agree as far as the network lets them; network memory is bounded by the tile and
    `batch_size`. Tiles are laid on the input padded (edge pixels repeated, bottom and right) to a multiple of
    the alignment and of `multiple`, the U-Net's downsampling factor. Tiles without an `active` pixel are skipped.
    """

    def __init__(self, net: Callable[..., torch.Tensor], grid: TileGrid, multiple: int,
                 active: torch.Tensor | None = None, batch_size: int = 8,
                 on_tiles: Callable[[int], object] | None = None):
        super().__init__()
        if grid.tile % multiple:
            raise ValueError(f"tile size {grid.tile} must be a multiple of the network's {multiple}")
        self.net, self.grid, self.multiple, self.active = net, grid, multiple, active
        self.batch_size, self.on_tiles = batch_size, on_tiles

    def layout(self, count: int, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int],
                                                                 list[tuple[int, int, int]]]:
        """Padded size, tile size and the (image, top, left) of every tile that is run."""
        # One tile needs only the network's multiple; several need the last origin aligned too.
        padded = tuple(math.ceil(length / step) * step for length, step in
                       ((length, self.multiple if length <= self.grid.tile else math.lcm(self.grid.align, self.multiple))
                        for length in (height, width)))
        tile = (self.tile_length(padded[0]), self.tile_length(padded[1]))
        rows = tile_origins(padded[0], tile[0], self.grid.overlap, self.grid.align)
        cols = tile_origins(padded[1], tile[1], self.grid.overlap, self.grid.align)
        jobs = []
        for index in range(count):
            active = None if self.active is None else self.active[index % self.active.shape[0], 0]
            jobs += [(index, top, left) for top in rows for left in cols
                     if active is None or active[top:top + tile[0], left:left + tile[1]].any()]
        return padded, tile, jobs

    def tile_length(self, padded: int) -> int:
        """The tile side along an axis of `padded` px: the shortest that needs no more tiles than the grid's size.

        A 160 px window takes two 96 px tiles rather than two 128 px ones, which would overlap by 96.
        """
        if padded <= self.grid.tile:
            return padded
        step = math.lcm(self.grid.align, self.multiple)
        count = len(tile_origins(padded, self.grid.tile, self.grid.overlap, self.grid.align))
        return next(length for length in range(step, self.grid.tile + 1, step) if length > self.grid.overlap
                    and len(tile_origins(padded, length, self.grid.overlap, self.grid.align)) <= count)

    def forward(self, noisy: torch.Tensor, noise_level: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        count, _, height, width = noisy.shape
        (padded_h, padded_w), (tile_h, tile_w), jobs = self.layout(count, height, width)
        # Ramps per tile row and column; a tile's weight is their outer product, cut where the image ends.
        row_ramps = {top: blend_ramp(tile_h, self.grid.overlap, top > 0, top + tile_h < padded_h)[:height - top]
                     for _, top, _ in jobs}
        col_ramps = {left: blend_ramp(tile_w, self.grid.overlap, left > 0, left + tile_w < padded_w)[:width - left]
                     for _, _, left in jobs}
        output: torch.Tensor | None = None
        total = torch.zeros(count, 1, height, width, device=noisy.device)
        for first in range(0, len(jobs), self.batch_size):
            chunk = jobs[first:first + self.batch_size]
            results = self.net(torch.stack([_tile(noisy[i], y, x, tile_h, tile_w) for i, y, x in chunk]),
                               noise_level[[index for index, _, _ in chunk]],
                               torch.stack([_tile(condition[i], y, x, tile_h, tile_w) for i, y, x in chunk])).float()
            if output is None:
                output = torch.zeros(count, results.shape[1], height, width, device=noisy.device)
            for (index, top, left), result in zip(chunk, results):
                weight = torch.outer(row_ramps[top], col_ramps[left]).to(noisy.device)
                rows, cols = weight.shape
                output[index, :, top:top + rows, left:left + cols] += weight * result[:, :rows, :cols]
                total[index, 0, top:top + rows, left:left + cols] += weight
            if self.on_tiles is not None:
                self.on_tiles(len(chunk))
        if output is None:  # nothing active: the output is never used, only its shape
            return torch.zeros_like(noisy)
        # Pixels no run tile covers are known pixels that the sampler pastes over; they get 0.
        return output.div_(total.clamp_(min=1e-12))


def _tile(image: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """A tile of an image [C, H, W]; where it reaches past the bottom or right edge, the edge pixels repeat."""
    piece = image[:, top:top + height, left:left + width]
    missing_rows, missing_cols = height - piece.shape[1], width - piece.shape[2]
    if missing_rows or missing_cols:
        piece = F.pad(piece[None], (0, missing_cols, 0, missing_rows), mode="replicate")[0]
    return piece


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of [C, H, W] in float (antialiased when shrinking), with no 8-bit rounding."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    return F.interpolate(image[None].float(), size=(height, width), mode="bicubic", antialias=True,
                         align_corners=False)[0]


def shrink_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A mask [1, H, W] at a smaller size, 1 wherever any pixel to generate falls."""
    if tuple(mask.shape[-2:]) == (height, width):
        return (mask > 0.5).float()
    return (F.interpolate((mask[None] > 0.5).float(), size=(height, width), mode="area")[0] > 0).float()


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


@dataclass(frozen=True)
class Tiled:
    """Sample at the input's own pixel grid: one sampling run whose network calls are tiled on `grid`."""

    grid: TileGrid = TileGrid()

    def restore(self, sampler: WindowSampler, image: torch.Tensor, mask: torch.Tensor | None,
                preview: Preview | None = None) -> torch.Tensor:
        return sampler.sample(image, mask, self.grid, "tiles", on_estimate=preview)


@dataclass(frozen=True)
class LowResolution:
    """Sample a view whose short side is `short_side` px, then add what the model changed, upsampled, to the full input.

    For outputs that differ from their input only smoothly, as chroma does from luma: the full-resolution input
    keeps all its detail (DeOldify, DDColor and Zhang et al. 2016 likewise upsample chroma onto the full L).
    """

    short_side: int = 128
    grid: TileGrid = TileGrid(tile=256, overlap=64)

    def restore(self, sampler: WindowSampler, image: torch.Tensor, mask: torch.Tensor | None,
                preview: Preview | None = None) -> torch.Tensor:
        height, width = image.shape[1:]
        size = scaled_size(height, width, min(1.0, self.short_side / min(height, width)))
        small = resize(image, *size)
        restored = sampler.sample(small, None if mask is None else shrink_mask(mask, *size), self.grid,
                                  "low resolution")
        if size != (height, width):
            restored = sampler.finish(image + resize(restored - small, height, width), image)
        if preview is not None:
            preview(restored)
        return restored
