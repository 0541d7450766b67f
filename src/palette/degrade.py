"""Turn a folder of clean images into the inputs, masks and targets a user of a task would have.

    degrade_folder("inpainting", "clean/", "out/", seed=0, size=256, mask_kind="free_form_10_20")
    # -> out/inputs/<stem>.png, out/masks/<stem>.png, out/targets/<stem>.png

Colorization inputs are 1-channel gray PNGs, JPEG inputs are real .jpg files, and inpainting or
uncropping inputs have a mid-gray hole. Subfolders of the input folder are kept.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .data import centre_crop
from .files import ensure_folder, write_atomic
from .imageio import ImageError, check_unique_stems, image_inputs, input_root, open_image, pil_to_tensor
from .masks import save_mask
from .tasks import get_task


def _task_options(task: str, mask_kind: str | None, quality: int | None) -> dict[str, object]:
    """The task's options from degrade_folder's arguments; an option the task lacks is a ValueError."""
    options: dict[str, object] = {}
    if mask_kind is not None:
        mask_option = get_task(task).mask_option
        if mask_option is None:
            raise ValueError(f"task {task!r} has no option 'mask_kind': it uses no mask")
        options[mask_option] = mask_kind
    if quality is not None:
        options["quality"] = quality
    return options


def degrade_folder(
    task: str,
    input_dir: str | Path,
    output_dir: str | Path,
    seed: int = 0,
    size: int | None = None,
    mask_kind: str | None = None,
    quality: int | None = None,
) -> int:
    """Write inputs/, masks/ (tasks with a known region) and targets/ under output_dir; returns the count.

    `input_dir` is a folder of clean images (searched recursively) or one image file. Files are written atomically.

    Image i of the sorted folder uses rng default_rng([seed, i]), so outputs do not depend on which
    other files are readable. Unreadable files are skipped with a warning.
    """
    degrader = get_task(task, **_task_options(task, mask_kind, quality))
    if size is not None and size < 1:
        raise ValueError(f"size must be positive, got {size}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    paths = image_inputs(input_dir, *(output_dir / folder for folder in ("inputs", "masks", "targets")))
    root = input_root(input_dir)
    check_unique_stems(paths, root=root)
    written = 0
    for index, path in enumerate(paths):
        try:
            clean = open_image(path)
        except ImageError as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
            continue
        if size is not None:
            clean = centre_crop(clean, size)
        name = path.relative_to(root).with_suffix("")
        user_input = degrader.simulate_input(pil_to_tensor(clean), np.random.default_rng([seed, index]))
        input_path = output_dir / "inputs" / f"{name}{user_input.suffix}"
        ensure_folder(input_path)
        write_atomic(input_path, lambda temporary: temporary.write_bytes(user_input.data))
        if user_input.mask is not None:
            save_mask(user_input.mask, output_dir / "masks" / f"{name}.png")
        target_path = output_dir / "targets" / f"{name}.png"
        ensure_folder(target_path)
        write_atomic(target_path, lambda temporary: clean.save(temporary, format="PNG"))
        written += 1
    if not written:
        raise ImageError(f"{input_dir}: no usable image")
    return written
