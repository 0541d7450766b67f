"""Image-to-image tasks as data: a clean image and an rng become a condition and a mask.

    task = get_task("inpainting", mask_kind="free_form_20_30")
    degraded = task.degrade(image, np.random.default_rng(0))  # training / evaluation
    degraded = task.condition_from_input(user_image, user_mask, rng)  # inference, no ground truth

Adding a task means one class decorated with @register_task; every other place (CLI choices, config checks)
derives task names from the registry TASKS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

import numpy as np
import torch

from .imageio import encode_image
from .jpeg import (check_quality, correction_share, file_quality, jpeg_bytes, jpeg_roundtrip, low_pass,
                   sample_jpeg_quality)
from .masks import UNCROP_SIDES, MaskKind, UncropSide, check_mask_kind, make_mask, uncropping_mask
from .tiling import LowResolution, TileGrid, Tiled
from .windows import FillWindows

# How a task meets a photo of any size: tiles on its own grid, a small view of the whole, or windows.
FullSize = Tiled | LowResolution | FillWindows

# ITU-R BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
GRAY_TOLERANCE = 2 / 255  # one 8-bit level in [-1, 1]: channels this close everywhere make a gray image


@dataclass(frozen=True)
class Degraded:
    """The network's conditioning: condition [3, H, W] in [-1, 1] and mask [1, H, W], 1 = generate."""

    condition: torch.Tensor
    mask: torch.Tensor


def source_estimate(condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The input's own guess of the target, [N, 3, H, W]: what a residual model adds its output to.

    A task without a known region marks every pixel to generate, and its condition is already a full
    estimate (the gray luma, the decoded JPEG). A task with one has noise in its hole; the hole is filled
    from the known pixels by OpenCV's Navier-Stokes inpainting (what a user already has), and the known
    pixels stay exact.
    """
    known = mask < 0.5
    estimate = condition.clone()
    for index in range(condition.shape[0]):
        if known[index].any() and not known[index].all():
            fill = inpaint_fill(condition[index], mask[index])
            estimate[index] = torch.where(known[index], condition[index], fill.to(condition))
    return estimate


def inpaint_fill(image: torch.Tensor, mask: torch.Tensor, method: Literal["navier_stokes", "telea"] = "navier_stokes"
                 ) -> torch.Tensor:
    """OpenCV's inpainting of an image [3, H, W] in [-1, 1] where mask [1, H, W] is 1, on 8-bit values.

    Navier-Stokes is Bertalmio et al. 2001, Telea is Telea 2004; radius 3 px as in OpenCV's own example.
    """
    import cv2

    pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    holes = (mask.detach().cpu()[0] > 0.5).to(torch.uint8).numpy() * 255
    rows = pixels.shape[1]
    if rows == 1:  # OpenCV reads past a one-row image (another fill at each call): it gets the row three times
        pixels, holes = pixels.expand(-1, 3, -1), np.repeat(holes, 3, axis=0)
    flag = cv2.INPAINT_NS if method == "navier_stokes" else cv2.INPAINT_TELEA
    filled = cv2.inpaint(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()), holes, 3, flag)
    filled = filled[1:2] if rows == 1 else filled
    return torch.from_numpy(np.ascontiguousarray(filled)).permute(2, 0, 1).float().to(image.device) / 127.5 - 1


@dataclass(frozen=True)
class UserInput:
    """The degraded file a user would bring: encoded bytes, their file suffix, and the mask if any."""

    data: bytes
    suffix: Literal[".png", ".jpg"]
    mask: torch.Tensor | None


class Task(ABC):
    """One image-to-image task; subclasses are frozen dataclasses whose fields are the task's options."""

    name: ClassVar[str]
    # True where known pixels are pasted back at sampling time and the loss counts only the mask.
    has_known_region: ClassVar[bool]
    # The option that picks the mask (`palette degrade --mask-kind`), or None if the task has no mask.
    mask_option: ClassVar[str | None] = None
    # How a photo of any size is restored (tiling.py): tiles on its own grid, a small view, or windows.
    full_size: ClassVar[FullSize]

    @abstractmethod
    def degrade(self, image: torch.Tensor, rng: np.random.Generator) -> Degraded:
        """Clean image [3, H, W] in [-1, 1] -> condition and mask, for training and evaluation."""

    @abstractmethod
    def condition_from_input(
        self, degraded_image: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator
    ) -> Degraded:
        """A user's degraded image (and mask) -> condition and mask, for inference."""

    def check_input(self, degraded_image: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Raise ValueError unless condition_from_input takes this image and mask (cheap: draws nothing)."""
        _check_no_mask(self, mask)

    @property
    def label(self) -> str:
        """The name plus the mask option's value when set, e.g. `inpainting_centre`: for file names and rows."""
        option = getattr(self, self.mask_option) if self.mask_option else None
        return self.name if option is None else f"{self.name}_{option}"

    def keep_input(self, image: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """Images [..., 3, H, W] made to agree with what the degraded input (or its condition) `given` fixes.

        Known pixels are pasted by the sampler; this is for what an input fixes beyond them.
        """
        return image

    def temper(self, image: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        """A finished restoration [..., 3, H, W] of the input `given`, with as much of its change as is trusted."""
        return image

    def for_file(self, path: str | Path) -> Task:
        """The task as a user's input file describes it (a JPEG its quality); the same task for most."""
        return self

    def input_note(self, image: torch.Tensor) -> str | None:
        """What the task sets aside of a user's image [3, H, W] before it starts, as a sentence; None for nothing."""
        return None

    def take_input(self, image: torch.Tensor) -> torch.Tensor:
        """A user's image [3, H, W] without what input_note says is set aside: what restoration starts from."""
        return image

    @abstractmethod
    def simulate_input(self, image: torch.Tensor, rng: np.random.Generator) -> UserInput:
        """The file a user would have for this clean image.

        Decoding it and calling condition_from_input with the same rng, continued, gives degrade's
        output up to 8-bit rounding.
        """


TASKS: dict[str, type[Task]] = {}

TaskClass = TypeVar("TaskClass", bound=type[Task])


def register_task(task_class: TaskClass) -> TaskClass:
    """Class decorator adding a task (a frozen dataclass) to TASKS under its name."""
    if not is_dataclass(task_class):
        raise TypeError(f"task {task_class.__name__} must be a dataclass")
    TASKS[task_class.name] = task_class
    return task_class


def get_task(name: str, **options: object) -> Task:
    """The task called `name`, built with `options`; unknown names or options raise ValueError."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    task_class = TASKS[name]
    valid = [field.name for field in fields(task_class)]
    for option in options:
        if option not in valid:
            raise ValueError(
                f"task {name!r} has no option {option!r}; its options: {', '.join(valid) or 'none'}"
            )
    return task_class(**options)


def _check_image(image: torch.Tensor, channels: tuple[int, ...]) -> None:
    if image.ndim != 3 or image.shape[0] not in channels:
        raise ValueError(f"expected an image [C, H, W] with C in {channels}, got shape {tuple(image.shape)}")


def _check_no_mask(task: Task, mask: torch.Tensor | None) -> None:
    if mask is not None:
        raise ValueError(f"{task.name} takes no mask")


def _full_mask(image: torch.Tensor) -> torch.Tensor:
    return torch.ones(1, *image.shape[1:], dtype=torch.float32)


def is_gray(images: torch.Tensor) -> torch.Tensor:
    """Whether each image [..., 3, H, W] is gray (its channels within GRAY_TOLERANCE everywhere), [..., 1, 1, 1]."""
    spread = images.amax(dim=-3, keepdim=True) - images.amin(dim=-3, keepdim=True)
    return spread.amax(dim=(-2, -1), keepdim=True) <= GRAY_TOLERANCE


def luma(image: torch.Tensor) -> torch.Tensor:
    """BT.601 luma [..., 1, H, W] of RGB images [..., 3, H, W] (gray [..., 1, H, W] images are returned as is)."""
    if image.ndim < 3 or image.shape[-3] not in (1, 3):
        raise ValueError(f"expected images [..., C, H, W] with C in (1, 3), got shape {tuple(image.shape)}")
    if image.shape[-3] == 1:
        return image
    weights = torch.tensor(LUMA_WEIGHTS, dtype=image.dtype, device=image.device)
    return (image * weights[:, None, None]).sum(dim=-3, keepdim=True)


@register_task
@dataclass(frozen=True)
class Colorization(Task):
    """Gray -> colour; the condition is the BT.601 luma on all three channels."""

    name: ClassVar[str] = "colorization"
    has_known_region: ClassVar[bool] = False
    # Chroma is smooth: sampled on a view at the training scale (64 px crops of images 64-183 px on the short
    # side), upsampled onto the full-resolution luma. 128 px measured best of 64/96/128/192 (BENCHMARKS.md).
    full_size: ClassVar[FullSize] = LowResolution(short_side=128)

    def degrade(self, image: torch.Tensor, rng: np.random.Generator) -> Degraded:
        _check_image(image, (3,))
        return Degraded(luma(image).repeat(3, 1, 1), _full_mask(image))

    def condition_from_input(
        self, degraded_image: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator
    ) -> Degraded:
        self.check_input(degraded_image, mask)
        return Degraded(luma(degraded_image).repeat(3, 1, 1), _full_mask(degraded_image))

    def simulate_input(self, image: torch.Tensor, rng: np.random.Generator) -> UserInput:
        _check_image(image, (3,))
        return UserInput(encode_image(luma(image), "PNG"), ".png", None)

    def input_note(self, image: torch.Tensor) -> str | None:
        if is_gray(image):
            return None
        return "The photo is in colour: colorization starts from its gray version (BT.601 luma), so it was " \
               "converted to gray first and its colours are not used."

    def take_input(self, image: torch.Tensor) -> torch.Tensor:
        return luma(image).repeat(3, 1, 1)

    def keep_input(self, image: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        # Only chroma is generated; the luma is given (as colorization tools keep L of Lab). The BT.601
        # weights sum to 1, so luma + chroma has that luma exactly; where it leaves [-1, 1] the chroma is
        # shortened (not the channels clipped), so the luma stays exact there too.
        given_luma = luma(given)
        chroma = image - luma(image)
        room = torch.where(chroma > 0, (1 - given_luma) / chroma,
                           torch.where(chroma < 0, (-1 - given_luma) / chroma, torch.inf))
        return given_luma + room.amin(dim=-3, keepdim=True).clamp(0, 1) * chroma


class _KnownRegionTask(Task):
    """Inpainting-like tasks: the mask is generated, the rest of the image is known."""

    has_known_region: ClassVar[bool] = True

    @abstractmethod
    def draw_mask(self, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
        """The mask for one image."""

    def degrade(self, image: torch.Tensor, rng: np.random.Generator) -> Degraded:
        _check_image(image, (3,))
        return self.condition_from_input(image, self.draw_mask(*image.shape[1:], rng), rng)

    def check_input(self, degraded_image: torch.Tensor, mask: torch.Tensor | None) -> None:
        if mask is None:
            raise ValueError(f"{self.name} needs a mask")
        _check_image(degraded_image, (3,))
        if mask.shape != (1, *degraded_image.shape[1:]):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match image {tuple(degraded_image.shape)}"
            )
        if mask.amin() > 0.5:
            raise ValueError(f"the {self.name} mask covers the whole image: no known pixels to work from")

    def condition_from_input(
        self, degraded_image: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator
    ) -> Degraded:
        self.check_input(degraded_image, mask)
        # Palette fills the unknown region of the condition with standard Gaussian noise; not clipped.
        noise = torch.from_numpy(rng.standard_normal(degraded_image.shape, dtype=np.float32))
        condition = torch.where(mask > 0.5, noise.to(degraded_image), degraded_image)
        return Degraded(condition, mask.float())

    def simulate_input(self, image: torch.Tensor, rng: np.random.Generator) -> UserInput:
        _check_image(image, (3,))
        mask = self.draw_mask(*image.shape[1:], rng)
        # The user's hole holds no information: mid-gray (0 in [-1, 1]).
        with_hole = torch.where(mask > 0.5, torch.zeros_like(image), image)
        return UserInput(encode_image(with_hole, "PNG"), ".png", mask)


@register_task
@dataclass(frozen=True)
class Inpainting(_KnownRegionTask):
    """Fill a masked region; `mask_kind` picks the masks (default: the Palette training mix)."""

    name: ClassVar[str] = "inpainting"
    mask_option: ClassVar[str | None] = "mask_kind"
    # A window per hole, sampled where the hole reaches 20 px (the 32 px centre box of a 64 px crop reaches 16).
    full_size: ClassVar[FullSize] = FillWindows("holes", reach=20)
    mask_kind: MaskKind = "train"

    def __post_init__(self) -> None:
        check_mask_kind(self.mask_kind)

    def draw_mask(self, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
        return make_mask(self.mask_kind, height, width, rng)


@register_task
@dataclass(frozen=True)
class Uncropping(_KnownRegionTask):
    """Extend an image by half; `side` picks which half (None: uniform over sides and frame)."""

    name: ClassVar[str] = "uncropping"
    mask_option: ClassVar[str | None] = "side"
    # Windows marching outward, each half known as in training, where the unknown half reaches 32 px.
    full_size: ClassVar[FullSize] = FillWindows("outward", reach=32)
    side: UncropSide | None = None

    def __post_init__(self) -> None:
        if self.side is not None and self.side not in UNCROP_SIDES:
            raise ValueError(f"unknown uncropping side {self.side!r}; valid sides: {', '.join(UNCROP_SIDES)}")

    def draw_mask(self, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
        return uncropping_mask(height, width, rng, self.side)


@register_task
@dataclass(frozen=True)
class JpegRestoration(Task):
    """Remove JPEG artefacts; `quality` fixes Q, None samples it as in Palette App. B."""

    name: ClassVar[str] = "jpeg"
    has_known_region: ClassVar[bool] = False
    # Never resized: artefacts live on the 8 px block grid (16 px for 4:2:0 chroma), which tile origins keep.
    # 64 px tiles (the training size) measured best against 128 and 256 (BENCHMARKS.md).
    full_size: ClassVar[FullSize] = Tiled(TileGrid(tile=64, overlap=16, align=16))
    quality: int | None = None

    def __post_init__(self) -> None:
        if self.quality is not None:
            check_quality(self.quality)

    def draw_quality(self, rng: np.random.Generator) -> int:
        """The quality for one image."""
        return sample_jpeg_quality(rng) if self.quality is None else self.quality

    def degrade(self, image: torch.Tensor, rng: np.random.Generator) -> Degraded:
        _check_image(image, (3,))
        return Degraded(jpeg_roundtrip(image, self.draw_quality(rng)), _full_mask(image))

    def check_input(self, degraded_image: torch.Tensor, mask: torch.Tensor | None) -> None:
        _check_no_mask(self, mask)
        _check_image(degraded_image, (3,))

    def condition_from_input(
        self, degraded_image: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator
    ) -> Degraded:
        self.check_input(degraded_image, mask)
        return Degraded(degraded_image, _full_mask(degraded_image))

    def simulate_input(self, image: torch.Tensor, rng: np.random.Generator) -> UserInput:
        _check_image(image, (3,))
        return UserInput(jpeg_bytes(image, self.draw_quality(rng)), ".jpg", None)

    def keep_input(self, image: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        # JPEG quantises the lowest frequencies finely (ITU T.81 Annex K tables), so the input's blurred
        # content is close to the truth: keep it, and take from the model only what lies above it.
        kept = image - low_pass(image) + low_pass(given)
        # A gray photo has no colour to restore: it comes back gray, not tinted by the model's colour.
        return torch.where(is_gray(given), luma(kept).expand_as(kept), kept)

    def temper(self, image: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
        # Trained on heavy compression, the model over-corrects a lighter JPEG: keep a share that its Q sets.
        return given + correction_share(self.quality) * (image - given)

    def for_file(self, path: str | Path) -> JpegRestoration:
        return self if self.quality is not None else replace(self, quality=file_quality(path))

    def input_note(self, image: torch.Tensor) -> str | None:
        if self.quality is not None:  # read from the file (for_file)
            return None
        return "The file is not a JPEG, so its quality cannot be read: the whole correction is kept, as for a heavy " \
               "JPEG. That suits a JPEG saved again as PNG; an image never heavily compressed loses some detail."

