"""What a user could run instead of a model: classical OpenCV restorations, to print beside every evaluation.

    restored = apply_baseline("telea", image, mask)  # uint8 RGB [H, W, 3] or a [3, H, W] tensor in [-1, 1]
    baseline_folder("inpainting", "telea", "set/inputs", "out/telea", mask_dir="set/masks")
    # CLI: palette baseline --task inpainting --method telea --input set/inputs --mask set/masks --output out/telea
    rows = evaluate_baselines("inpainting", "set/inputs", "set/targets")  # {"input": results, "telea": ...}
    # CLI: palette evaluate --pred out --target set/targets --input set/inputs --task inpainting (prints them too)

Inpainting and uncropping fill the hole with Telea's fast marching method (Telea 2004) or OpenCV's
Navier-Stokes inpainting (Bertalmio et al. 2001); JPEG restoration denoises with non-local means (Buades
et al. 2005). Colorization has none: the gray input itself is what a user already has.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import numpy as np
import torch
from PIL import Image

from .imageio import load_image, pil_to_tensor, refuse_input_as_output, save_image, tensor_to_pil
from .masks import load_mask
from .metrics.folders import keyed_images
from .tasks import inpaint_fill

BaselineMethod = Literal["telea", "navier_stokes", "nlmeans"]
METHODS: tuple[BaselineMethod, ...] = get_args(BaselineMethod)
INPAINTING_METHODS = ("telea", "navier_stokes")  # through tasks.inpaint_fill, which residual models also use

# The methods that apply to each task, by task name.
BASELINES: dict[str, tuple[BaselineMethod, ...]] = {
    "colorization": (),
    "inpainting": INPAINTING_METHODS,
    "uncropping": INPAINTING_METHODS,
    "jpeg": ("nlmeans",),
}
# How reports name the rows of runs evaluated as `--model <key>`; "input" is the degraded input itself.
BASELINE_LABELS: dict[str, str] = {
    "input": "degraded input",
    "telea": "OpenCV Telea",
    "navier_stokes": "OpenCV Navier-Stokes",
    "nlmeans": "OpenCV NL-means",
}
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


def _missing(mask: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A mask [H, W] or [1, H, W] (1 = missing) as bool [1, H, W]."""
    missing = torch.as_tensor(mask).detach().cpu()
    missing = missing[None] if missing.ndim == 2 else missing
    if tuple(missing.shape) != (1, height, width):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the image's {height}x{width} (HxW)")
    return missing > 0.5


def _nlmeans(image: torch.Tensor) -> torch.Tensor:
    """OpenCV's non-local means on the 8-bit image [3, H, W] in [-1, 1]."""
    import cv2

    bgr = np.ascontiguousarray(np.asarray(tensor_to_pil(image))[..., ::-1])  # its colour conversion assumes BGR
    denoised = cv2.fastNlMeansDenoisingColored(bgr, None, NLMEANS_STRENGTH, NLMEANS_STRENGTH, 7, 21)
    return pil_to_tensor(Image.fromarray(np.ascontiguousarray(denoised[..., ::-1])))


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
        tensor = image.detach().cpu().float()
    else:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
        tensor = pil_to_tensor(Image.fromarray(image))
    if method == "nlmeans":
        if mask is not None:
            raise ValueError("nlmeans restores the whole image; it takes no mask")
        restored = _nlmeans(tensor)
    else:
        if mask is None:
            raise ValueError(f"{method} fills a hole: it needs a mask (1 = missing)")
        missing = _missing(mask, *tensor.shape[1:])
        restored = torch.where(missing, inpaint_fill(tensor, missing.float(), method), tensor)
    return restored.to(image) if isinstance(image, torch.Tensor) else np.asarray(tensor_to_pil(restored))


def baseline_folder(task: str, method: BaselineMethod, input_dir: str | Path, output_dir: str | Path,
                    mask_dir: str | Path | None = None) -> list[Path]:
    """Run `method` over a `palette degrade` folder: inputs `<stem>.png|.jpg`, masks `<stem>.png` (white = fill).

    Writes `output_dir/<stem>.png` for every input (subfolders kept, but not the output and mask folders) and
    returns the paths written.
    """
    check_method(task, method)
    refuse_input_as_output(input_dir, output_dir)
    if (method in INPAINTING_METHODS) != (mask_dir is not None):
        raise ValueError(f"{method} needs a mask folder (--mask)" if method in INPAINTING_METHODS
                         else f"{method} takes no mask folder")
    inputs = keyed_images(input_dir, output_dir, mask_dir)  # a rerun must not take its outputs for inputs
    if not inputs:
        raise ValueError(f"{input_dir}: no images")
    written = []
    for key, path in inputs.items():
        image = load_image(path)
        mask = None if mask_dir is None else load_mask(Path(mask_dir) / f"{key}.png", *image.shape[1:])
        output = Path(output_dir) / f"{key}.png"
        save_image(apply_baseline(method, image, mask), output)
        written.append(output)
    return written


def evaluate_baselines(task: str | None, input_dir: str | Path, target_dir: str | Path,
                       masks_dir: str | Path | None = None, **options: Any) -> dict[str, dict[str, Any]]:
    """What a user already has, scored as a model is: the degraded input itself and each OpenCV method of `task`.

    Keys are BASELINE_LABELS' keys ("input", "telea", ...), values evaluate_folders' results; `options` are its
    metric options (metrics, weights, device, batch_size, labels). Each row has one sample per input, so requested
    diversity metrics land in its `skipped`. For a name that is not a task's (none, or a set's name a report groups
    by) only the input is scored. The hole-filling methods take the masks from `masks_dir`, by default
    `palette degrade`'s masks/ beside the inputs.
    """
    from .evaluate import evaluate_folders, one_sample_metrics

    masks = Path(masks_dir) if masks_dir is not None else Path(input_dir).parent / "masks"
    methods = BASELINES.get(task, ())
    if any(method in INPAINTING_METHODS for method in methods) and not masks.is_dir():
        raise ValueError(f"{masks}: no masks folder; OpenCV's {task} baselines need the masks of {input_dir}")
    metrics, diversity_skipped = one_sample_metrics(options.pop("metrics", None))

    def score(pred_dir: str | Path, model: str) -> dict[str, Any]:
        row = evaluate_folders(pred_dir, target_dir, input_dir=input_dir, masks_dir=masks_dir, model=model, task=task,
                               metrics=metrics, **options)
        row["skipped"].update(diversity_skipped)
        return row

    rows = {"input": score(input_dir, "input")}
    with tempfile.TemporaryDirectory() as scratch:
        for method in methods:
            baseline_folder(task, method, input_dir, Path(scratch) / method,
                            mask_dir=masks if method in INPAINTING_METHODS else None)
            rows[method] = score(Path(scratch) / method, method)
            rows[method]["pred_dir"] = None  # the outputs were scratch files, not kept
    return rows
