"""Inpainting and uncropping masks: float32 tensors [1, H, W], 1 = region to generate, 0 = known.

Every random mask takes an explicit `numpy.random.Generator`, so a seed reproduces it:

    mask = make_mask("free_form_20_30", 256, 256, np.random.default_rng(0))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from PIL import Image, ImageDraw

from .imageio import BLACK, ImageError, open_image, save_image

MaskKind = Literal[
    "train",
    "free_form",
    "rectangles",
    "centre",
    "free_form_10_20",
    "free_form_20_30",
    "free_form_30_40",
    "left",
    "right",
    "top",
    "bottom",
    "frame",
    "uncrop",
]
MASK_KINDS: tuple[MaskKind, ...] = get_args(MaskKind)

UncropSide = Literal["left", "right", "top", "bottom", "frame"]
UNCROP_SIDES: tuple[UncropSide, ...] = get_args(UncropSide)

TrainingMaskKind = Literal["free_form", "rectangles"]

# Palette §5: inpainting is evaluated on free-form masks binned by masked area.
FREE_FORM_BUCKETS: dict[str, tuple[float, float]] = {
    "free_form_10_20": (0.1, 0.2),
    "free_form_20_30": (0.2, 0.3),
    "free_form_30_40": (0.3, 0.4),
}

# Palette App. B: training masks are free-form with probability 0.6, otherwise boxes.
TRAINING_FREE_FORM_PROBABILITY = 0.6

# Yu et al. 2019 (DeepFill v2), Alg. 1, with the constants of their released stroke generator;
# widths are given for a 256-pixel side and scale with the image.
STROKES = (1, 4)
VERTICES = (4, 12)
MEAN_ANGLE = 2 * math.pi / 5
ANGLE_JITTER = 2 * math.pi / 15
BRUSH_WIDTH = (12 / 256, 40 / 256)

BUCKET_ATTEMPTS = 20
STROKES_PER_ATTEMPT = 64
BOX_PLACEMENT_TRIES = 16

Box = tuple[int, int, int, int]  # top, left, bottom, right; bottom and right exclusive


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"mask size must be positive, got {height}x{width}")


def _to_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.float32))[None]


def _smallest_count(fraction: float, total: int) -> int:
    """Smallest pixel count c >= 0 with c / total >= fraction (exact, no float surprises)."""
    count = max(math.ceil(fraction * total), 0)
    while count > 0 and (count - 1) / total >= fraction:
        count -= 1
    while count / total < fraction:
        count += 1
    return count


def _stroke(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One DeepFill v2 brush stroke: a zig-zag polyline with round joints, as a bool array."""
    side = math.sqrt(height * width)
    mean_length = math.hypot(height, width) / 8
    brush = max(1, round(rng.uniform(*BRUSH_WIDTH) * side))
    # A random heading per stroke, so the zig-zag has no preferred direction.
    heading = rng.uniform(0, 2 * math.pi)
    points = [(rng.uniform(0, width - 1), rng.uniform(0, height - 1))]
    for vertex in range(rng.integers(VERTICES[0], VERTICES[1] + 1)):
        angle = rng.uniform(MEAN_ANGLE - ANGLE_JITTER, MEAN_ANGLE + ANGLE_JITTER)
        if vertex % 2 == 0:
            angle = 2 * math.pi - angle
        length = np.clip(rng.normal(mean_length, mean_length / 2), 0, 2 * mean_length)
        x, y = points[-1]
        points.append(
            (
                float(np.clip(x + length * math.cos(heading + angle), 0, width - 1)),
                float(np.clip(y + length * math.sin(heading + angle), 0, height - 1)),
            )
        )
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.line(points, fill=255, width=brush)
    radius = brush / 2
    for x, y in points:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.asarray(canvas) > 0


def free_form_mask(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """Free-form brush-stroke mask (Yu et al. 2019, Alg. 1): 1-4 strokes of 4-12 vertices."""
    _check_size(height, width)
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(rng.integers(STROKES[0], STROKES[1] + 1)):
        mask |= _stroke(height, width, rng)
    return _to_tensor(mask)


def _grow(mask: np.ndarray, target: int) -> np.ndarray:
    """Add the unmasked pixels nearest the mask (8-neighbour rings, then raster order) up to `target`."""
    if not mask.any():
        mask = mask.copy()
        mask[mask.shape[0] // 2, mask.shape[1] // 2] = True
    height, width = mask.shape
    ring_of = np.where(mask, 0, np.iinfo(np.int64).max)
    reached, ring = mask, 0
    while reached.sum() < target:
        ring += 1
        padded = np.pad(reached, 1)
        grown = reached.copy()
        for dy in range(3):
            for dx in range(3):
                grown |= padded[dy : dy + height, dx : dx + width]
        ring_of[grown & ~reached] = ring
        reached = grown
    order = np.argsort(ring_of.ravel(), kind="stable")
    result = np.zeros(mask.size, dtype=bool)
    result[order[:target]] = True
    return result.reshape(mask.shape)


def free_form_mask_in_bucket(
    height: int, width: int, rng: np.random.Generator, bucket: tuple[float, float]
) -> torch.Tensor:
    """Free-form mask whose area fraction lies in [low, high).

    Strokes are added until the area reaches `low`; an overshoot first tries dropping one earlier
    stroke, then redraws. After BUCKET_ATTEMPTS redraws the last mask is grown or shrunk
    deterministically (nearest pixels first) to the middle of the bucket, so it always lands.
    """
    _check_size(height, width)
    low, high = bucket
    if not 0 <= low < high <= 1:
        raise ValueError(f"bucket must satisfy 0 <= low < high <= 1, got {bucket}")
    total = height * width
    smallest, largest = _smallest_count(low, total), _smallest_count(high, total) - 1
    if smallest > largest:
        raise ValueError(f"bucket {bucket} holds no pixel count of a {height}x{width} mask")
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(BUCKET_ATTEMPTS):
        strokes: list[np.ndarray] = []
        mask = np.zeros((height, width), dtype=bool)
        while mask.sum() < smallest and len(strokes) < STROKES_PER_ATTEMPT:
            strokes.append(_stroke(height, width, rng))
            mask |= strokes[-1]
        if smallest <= mask.sum() <= largest:
            return _to_tensor(mask)
        for dropped in range(len(strokes) - 1):
            without = np.logical_or.reduce([s for i, s in enumerate(strokes) if i != dropped])
            if smallest <= without.sum() <= largest:
                return _to_tensor(without)
    middle = (smallest + largest) // 2
    if mask.sum() < middle:
        return _to_tensor(_grow(mask, middle))
    return _to_tensor(~_grow(~mask, total - middle))


def _box_shape(box_area: int, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
    """Height and width of a box of at most `box_area` pixels, aspect ratio log-uniform in [1/2, 2]."""
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    box_height = min(max(round(math.sqrt(box_area * aspect)), 1), height, box_area)
    box_width = min(max(box_area // box_height, 1), width)
    return box_height, box_width


def _place_box(covered: np.ndarray, box_height: int, box_width: int, rng: np.random.Generator) -> Box:
    """The random position, of a few tried, where the box overlaps `covered` least."""
    height, width = covered.shape
    candidates: list[tuple[int, Box]] = []
    for _ in range(BOX_PLACEMENT_TRIES):
        top = int(rng.integers(0, height - box_height + 1))
        left = int(rng.integers(0, width - box_width + 1))
        overlap = int(covered[top : top + box_height, left : left + box_width].sum())
        candidates.append((overlap, (top, left, top + box_height, left + box_width)))
        if overlap == 0:
            break
    return min(candidates, key=lambda candidate: candidate[0])[1]


def _grow_box(box: Box, height: int, width: int) -> Box:
    """The box one row or column larger, growing its relatively shorter side."""
    top, left, bottom, right = box
    if (bottom - top) / height <= (right - left) / width and bottom - top < height:
        return (top, left, bottom + 1, right) if bottom < height else (top - 1, left, bottom, right)
    return (top, left, bottom, right + 1) if right < width else (top, left - 1, bottom, right)


def random_boxes(
    height: int,
    width: int,
    rng: np.random.Generator,
    count: tuple[int, int] = (1, 5),
    area: tuple[float, float] = (0.1, 0.4),
) -> list[Box]:
    """Axis-aligned boxes whose union covers a fraction of the image drawn uniformly in `area`.

    Each box takes an equal share of the area still missing and is placed where it overlaps the
    earlier boxes least, so the union never exceeds the drawn target; if clipping left it below
    area[0], the last box grows until the union reaches it.
    """
    _check_size(height, width)
    total = height * width
    smallest, largest = _smallest_count(area[0], total), _smallest_count(area[1], total)
    if largest / total > area[1]:
        largest -= 1
    if largest - smallest < max(height, width):
        raise ValueError(f"area range {area} is too narrow for boxes on a {height}x{width} image")
    target = min(max(math.floor(rng.uniform(*area) * total), smallest), largest)
    box_count = int(rng.integers(count[0], count[1] + 1))
    covered = np.zeros((height, width), dtype=bool)
    boxes: list[Box] = []
    for index in range(box_count):
        missing = target - int(covered.sum())
        if missing <= 0:
            break
        box_height, box_width = _box_shape(max(missing // (box_count - index), 1), height, width, rng)
        boxes.append(_place_box(covered, box_height, box_width, rng))
        top, left, bottom, right = boxes[-1]
        covered[top:bottom, left:right] = True
    while covered.sum() < smallest:
        boxes[-1] = _grow_box(boxes[-1], height, width)
        top, left, bottom, right = boxes[-1]
        covered[top:bottom, left:right] = True
    return boxes


def rectangles_mask(
    height: int,
    width: int,
    rng: np.random.Generator,
    count: tuple[int, int] = (1, 5),
    area: tuple[float, float] = (0.1, 0.4),
) -> torch.Tensor:
    """Union of `count` random boxes covering an area fraction drawn uniformly in `area`."""
    mask = np.zeros((height, width), dtype=bool)
    for top, left, bottom, right in random_boxes(height, width, rng, count, area):
        mask[top:bottom, left:right] = True
    return _to_tensor(mask)


def training_mask_kind(rng: np.random.Generator) -> TrainingMaskKind:
    """Which family a training inpainting mask comes from (Palette App. B: free-form w.p. 0.6)."""
    return "free_form" if rng.random() < TRAINING_FREE_FORM_PROBABILITY else "rectangles"


def training_inpainting_mask(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """Palette App. B training mask: free-form strokes with p=0.6, otherwise rectangles."""
    if training_mask_kind(rng) == "free_form":
        return free_form_mask(height, width, rng)
    return rectangles_mask(height, width, rng)


def centre_box_mask(height: int, width: int) -> torch.Tensor:
    """A centred box of half the height and half the width (area exactly 0.25 for even sizes)."""
    _check_size(height, width)
    mask = torch.zeros(1, height, width)
    box_height, box_width = height // 2, width // 2
    top, left = (height - box_height) // 2, (width - box_width) // 2
    mask[:, top : top + box_height, left : left + box_width] = 1
    return mask


def uncropping_mask(
    height: int, width: int, rng: np.random.Generator, side: UncropSide | None = None
) -> torch.Tensor:
    """Mask half the image: one side (left, right, top, bottom) or a frame; uniform side if None.

    A side masks floor(W/2) columns or floor(H/2) rows, exactly 50% for even sizes. The frame keeps a
    centred box of round(H/√2) x round(W/√2), offset (H - box_height) // 2; its masked fraction is
    within (1/H + 1/W) / (2√2) + 1/(4HW) of 0.5.
    """
    _check_size(height, width)
    if side is None:
        side = UNCROP_SIDES[int(rng.integers(len(UNCROP_SIDES)))]
    if side not in UNCROP_SIDES:
        raise ValueError(f"unknown uncropping side {side!r}; valid sides: {', '.join(UNCROP_SIDES)}")
    mask = torch.zeros(1, height, width)
    if side == "left":
        mask[:, :, : width // 2] = 1
    elif side == "right":
        mask[:, :, width - width // 2 :] = 1
    elif side == "top":
        mask[:, : height // 2, :] = 1
    elif side == "bottom":
        mask[:, height - height // 2 :, :] = 1
    else:
        box_height, box_width = round(height / math.sqrt(2)), round(width / math.sqrt(2))
        top, left = (height - box_height) // 2, (width - box_width) // 2
        mask[:] = 1
        mask[:, top : top + box_height, left : left + box_width] = 0
    return mask


def check_mask_kind(kind: str) -> None:
    """Raise ValueError naming `kind` and the valid kinds unless it is a MaskKind."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; valid kinds: {', '.join(MASK_KINDS)}")


def _mask_makers() -> dict[str, Callable[[int, int, np.random.Generator], torch.Tensor]]:
    makers: dict[str, Callable[[int, int, np.random.Generator], torch.Tensor]] = {
        "train": training_inpainting_mask,
        "free_form": free_form_mask,
        "rectangles": rectangles_mask,
        "centre": lambda height, width, rng: centre_box_mask(height, width),
        "uncrop": uncropping_mask,
    }
    for kind, bucket in FREE_FORM_BUCKETS.items():
        makers[kind] = partial(free_form_mask_in_bucket, bucket=bucket)
    for side in UNCROP_SIDES:
        makers[side] = partial(uncropping_mask, side=side)
    return makers


_MASK_MAKERS = _mask_makers()


def make_mask(kind: MaskKind, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """A mask of the named kind; see MaskKind for the choices."""
    check_mask_kind(kind)
    return _MASK_MAKERS[kind](height, width, rng)


class EmptyMaskError(ImageError):
    """A mask with no pixel to generate: the output is the input, so a sampler may copy it and warn."""


def check_mask_coverage(mask: torch.Tensor, path: str | Path) -> None:
    """Refuse a mask that leaves nothing to do: all black (EmptyMaskError) or all white (no known pixels)."""
    if not mask.any():
        raise EmptyMaskError(f"{path}: mask is all black: nothing to generate, the output would be the input")
    if mask.all():
        raise ImageError(f"{path}: mask is all white: no known pixels to work from (white = generate)")


def load_mask(path: str | Path, height: int | None = None, width: int | None = None,
              check_coverage: bool = False) -> torch.Tensor:
    """Read a mask image as float32 [1, H, W]: 1 (white) = generate, 0 (black) = known.

    Any image works: colour is converted to gray, transparent pixels count as black (known), and the gray is
    thresholded at 50% (>= 128 = generate), so a mask saved as JPEG, whose edges are no longer pure black and
    white, reads as the binary mask it was. A size other than `height` x `width` is an ImageError (resizing
    would move the hole's edge); `check_coverage` also refuses all-black and all-white masks (check_mask_coverage).
    """
    image = open_image(path, "L", background=BLACK)
    expected = (image.height if height is None else height, image.width if width is None else width)
    if (image.height, image.width) != expected:
        raise ImageError(
            f"{path}: mask is {image.height}x{image.width} (HxW) but the image is "
            f"{expected[0]}x{expected[1]}; a mask must match its image pixel for pixel"
        )
    mask = _to_tensor(np.asarray(image) >= 128)
    if check_coverage:
        check_mask_coverage(mask, path)
    return mask


def save_mask(mask: torch.Tensor, path: str | Path) -> None:
    """Write a [1, H, W] mask as a black-and-white PNG (white = generate), atomically."""
    save_image(mask.float() * 2 - 1, path)
