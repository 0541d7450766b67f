"""What a user could run instead of a model: classical OpenCV restorations, to print beside every evaluation.

    restored = apply_baseline("telea", image, mask)  # uint8 RGB [H, W, 3] or a [3, H, W] tensor in [-1, 1]
    baseline_folder("inpainting", "telea", "set/inputs", "out/telea", mask_dir="set/masks")
    # CLI: palette baseline --task inpainting --method telea --input set/inputs --mask set/masks --output out/telea

Inpainting and uncropping fill the hole with Telea's fast marching method (Telea 2004) or OpenCV's
Navier-Stokes inpainting (Bertalmio et al. 2001); JPEG restoration denoises with non-local means (Buades
et al. 2005). Colorization has none: the gray input itself is what a user already has.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal, TypeVar, get_args

import numpy as np
import torch
from PIL import Image

from .imageio import open_image, pil_to_tensor, tensor_to_pil
from .masks import load_mask
from .metrics.folders import keyed_images

BaselineMethod = Literal["telea", "navier_stokes", "nlmeans"]
METHODS: tuple[BaselineMethod, ...] = get_args(BaselineMethod)

# The methods that apply to each task, by task name.
BASELINES: dict[str, tuple[BaselineMethod, ...]] = {
    "colorization": (),
    "inpainting": ("telea", "navier_stokes"),
    "uncropping": ("telea", "navier_stokes"),
    "jpeg": ("nlmeans",),
}
# How reports name the rows of runs evaluated as `--model <key>`; "input" is the degraded input itself.
BASELINE_LABELS: dict[str, str] = {
    "input": "degraded input",
    "telea": "OpenCV Telea",
    "navier_stokes": "OpenCV Navier-Stokes",
    "nlmeans": "OpenCV NL-means",
}
INPAINT_FLAGS = {"telea": "INPAINT_TELEA", "navier_stokes": "INPAINT_NS"}  # cv2 attributes, read when used
INPAINT_RADIUS = 3  # pixels; the value of OpenCV's inpainting tutorial
# Filter strength for luma and colour (OpenCV's h and hColor; 7x7 patches, 21x21 search, its defaults).
# On the 16 wallpaper validation images, PSNR over the JPEG input: +0.7 / +0.9 dB at Q=10 (64 / 256 px),
# +0.1 / +0.6 dB at Q=20. h = 5 and 7 trade one quality for the other; 3 and 10 or more are worse.
NLMEANS_STRENGTH = 6

ImageLike = TypeVar("ImageLike", np.ndarray, torch.Tensor)


def check_method(task: str, method: str) -> None:
    """Raise ValueError unless `method` is a baseline of `task`, naming the valid ones."""
    if task not in BASELINES:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(BASELINES)}")
    if method not in BASELINES[task]:
        valid = ", ".join(BASELINES[task]) or "none (the degraded input is its baseline)"
        raise ValueError(f"unknown method {method!r} for task {task}; valid methods: {valid}")


def _missing_pixels(mask: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray:
    """A mask [H, W] or [1, H, W] (1 = missing) as uint8 0/1 [H, W], which cv2.inpaint takes."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    array = array.reshape(array.shape[-2:]) if array.ndim == 3 and array.shape[0] == 1 else array
    if array.shape != (height, width):
        raise ValueError(f"mask shape {array.shape} does not match the image's {height}x{width} (HxW)")
    return (array > 0.5).astype(np.uint8)


def _restore_pixels(method: BaselineMethod, pixels: np.ndarray, missing: np.ndarray | None) -> np.ndarray:
    """One method on uint8 RGB [H, W, 3]; inpainting keeps the known pixels bit for bit."""
    import cv2

    if method == "nlmeans":
        if missing is not None:
            raise ValueError("nlmeans restores the whole image; it takes no mask")
        bgr = np.ascontiguousarray(pixels[..., ::-1])  # its colour space conversion assumes BGR
        denoised = cv2.fastNlMeansDenoisingColored(bgr, None, NLMEANS_STRENGTH, NLMEANS_STRENGTH, 7, 21)
        return np.ascontiguousarray(denoised[..., ::-1])
    if missing is None:
        raise ValueError(f"{method} fills a hole: it needs a mask (1 = missing)")
    filled = cv2.inpaint(np.ascontiguousarray(pixels), missing, INPAINT_RADIUS, getattr(cv2, INPAINT_FLAGS[method]))
    return np.where(missing[..., None] > 0, filled, pixels)


def apply_baseline(method: BaselineMethod, image: ImageLike, mask: np.ndarray | torch.Tensor | None = None
                   ) -> ImageLike:
    """Apply `method` to one image: uint8 RGB [H, W, 3], or a tensor [3, H, W] in [-1, 1] (returned alike).

    `mask` (1 = missing) is for the inpainting methods; pixels outside it are returned exactly as given.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB tensor [3, H, W], got shape {tuple(image.shape)}")
        missing = None if mask is None else _missing_pixels(mask, *image.shape[1:])
        restored = pil_to_tensor(Image.fromarray(_restore_pixels(method, np.asarray(tensor_to_pil(image)), missing)))
        if missing is None:
            return restored.to(image)
        return torch.where(torch.from_numpy(missing).bool().to(image.device), restored.to(image), image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    missing = None if mask is None else _missing_pixels(mask, *image.shape[:2])
    return _restore_pixels(method, image, missing)


def _save_atomically(pixels: np.ndarray, path: Path) -> None:
    """Write a PNG through a temporary file in the same folder, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    try:
        with os.fdopen(handle, "wb") as file:
            Image.fromarray(pixels).save(file, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def baseline_folder(task: str, method: BaselineMethod, input_dir: str | Path, output_dir: str | Path,
                    mask_dir: str | Path | None = None) -> list[Path]:
    """Run `method` over a `palette degrade` folder: inputs `<stem>.png|.jpg`, masks `<stem>.png` (white = fill).

    Writes `output_dir/<stem>.png` for every input (subfolders kept) and returns the paths written.
    """
    check_method(task, method)
    if (method in INPAINT_FLAGS) != (mask_dir is not None):
        raise ValueError(f"{method} needs a mask folder (--mask)" if method in INPAINT_FLAGS
                         else f"{method} takes no mask folder")
    inputs = keyed_images(input_dir)
    if not inputs:
        raise ValueError(f"{input_dir}: no images")
    written = []
    for key, path in inputs.items():
        pixels = np.asarray(open_image(path))
        mask = None if mask_dir is None else load_mask(Path(mask_dir) / f"{key}.png", *pixels.shape[:2])
        output = Path(output_dir) / f"{key}.png"
        _save_atomically(apply_baseline(method, pixels, mask), output)
        written.append(output)
    return written
