"""`palette sample` and `palette extend` over a user's files: inputs and masks read, outputs written atomically.

    sample_folder("model.safetensors", "inpainting", "inputs/", "out/", mask="masks/")   # out/<stem>.png each
    sample_folder("model.safetensors", "jpeg", "photo.jpg", "restored.png")               # one file to one file
    extend_file("model.safetensors", "photo.jpg", "wider.png", right=512)

A rerun skips outputs that exist, so an interrupted folder resumes; under torchrun each rank restores its own
share of the inputs. The user's files are never written over: an output or preview that would replace an input
or a mask is refused before any work, and an output or preview folder inside the input folder is not read back as
inputs; `palette extend` refuses an existing output unless told to overwrite it.
"""

from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .imageio import (IMAGE_SUFFIXES, ImageError, check_unique_stems, image_inputs, input_root, load_image,
                      output_format, refuse_input_as_output, refuse_writing_over, save_image)
from .inference import Precision, derive_seed, extend_image, load_model, restore_image, trained_tasks
from .masks import EmptyMaskError, load_mask
from .samplers import check_positive, check_sampling
from .shards import rank_slice
from .tasks import Task, get_task


def extend_file(checkpoint: str | Path, input: str | Path, output: str | Path, left: int = 0, right: int = 0,
                top: int = 0, bottom: int = 0, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                device: str | None = None, precision: Precision = "fp32", preview: str | Path | None = None,
                progress: bool = True, overwrite: bool = False) -> Path:
    """`palette extend`: read an image, grow it, write the result (and the coarse result to `preview` first).
    An existing output or preview is refused unless `overwrite`; the input never."""
    check_sampling(sampler, steps)
    written = [Path(path) for path in (output, preview) if path is not None]
    for path in written:  # a bad output name fails before the sampling, not after it
        output_format(path)
        refuse_input_as_output(input, path)
    for path in written:
        if path.exists() and not overwrite:
            raise ImageError(f"{path}: exists; --overwrite replaces it")
    image = load_image(input, "RGB")
    model = load_model(checkpoint, device)
    show = None if preview is None else lambda coarse: save_image(coarse, preview)
    save_image(extend_image(model, image, left, right, top, bottom, sampler=sampler, steps=steps, seed=seed,
                            precision=precision, preview=show, progress=progress), output)
    return Path(output)


def load_input(task: Task, image_path: Path, mask_path: Path | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A user's degraded image [3, H, W] and, for a task with a known region, its mask [1, H, W]."""
    image = load_image(image_path, "RGB")
    if not task.has_known_region:
        return image, None
    if mask_path is None:
        raise ImageError(f"{image_path}: task {task.name} needs a mask PNG with the same stem (--mask)")
    return image, load_mask(mask_path, *image.shape[1:], check_coverage=True)


@dataclass
class PreparedInput:
    """One user input as the model's condition and mask, at the input's own size."""

    path: Path
    task: Task
    condition: torch.Tensor  # [3, H, W]
    mask: torch.Tensor       # [1, H, W], 1 = generate


def prepare_input(task_name: str, image_path: Path, mask_path: Path | None, size: int | None = None,
                  seed: int = 0) -> PreparedInput:
    """A user's image (and mask) -> condition and mask; `size`, if given, is the side a batch needs."""
    task = get_task(task_name).for_file(image_path)
    image, mask = load_input(task, image_path, mask_path)
    if size is not None and tuple(image.shape[1:]) != (size, size):
        raise ImageError(f"{image_path}: {image.shape[2]}x{image.shape[1]}, expected {size}x{size}")
    degraded = task.condition_from_input(image, mask, np.random.default_rng(derive_seed(seed, image_path.name)))
    return PreparedInput(image_path, task, degraded.condition, degraded.mask)


def find_mask(mask_dir: Path | None, image_path: Path, root: Path | None = None) -> Path | None:
    """The mask PNG with the image's stem (suffix in any case) in `mask_dir`, a folder or a single file: in the
    subfolder where the image lies below `root` (`root/x/a.jpg` -> `mask_dir/x/a.png`, as `palette degrade`
    writes them), else at the top of `mask_dir`."""
    if mask_dir is None:
        return None
    if mask_dir.is_file():
        return mask_dir
    folders = [mask_dir] if root is None else [mask_dir / image_path.parent.relative_to(root), mask_dir]
    for folder in dict.fromkeys(folders):
        found = [path for path in folder.glob(f"{glob.escape(image_path.stem)}.*") if path.suffix.lower() == ".png"]
        if found:
            return min(found)
    raise ImageError(f"{mask_dir / (image_path.stem + '.png')}: missing mask for input {image_path}")


def output_names(path: Path, stem: str | None, suffix: str, num_samples: int) -> list[str]:
    """The file names of an input's outputs: `<stem>.png`, or `<stem>_<k>.png` for several samples."""
    stem = stem or path.stem
    return [f"{stem}_{k}{suffix}" for k in range(num_samples)] if num_samples > 1 else [f"{stem}{suffix}"]


def sample_folder(checkpoint: str | Path, task: str, input: str | Path, output: str | Path,
                  mask: str | Path | None = None, sampler: str | None = None, steps: int | None = None,
                  num_samples: int = 1, seed: int = 0, batch_size: int = 8, device: str | None = None,
                  precision: Precision = "fp32", progress: bool = True, preview: str | Path | None = None,
                  tile: int | None = None, overlap: int | None = None, overwrite: bool = False,
                  guidance: float | None = None, strength: float | None = None) -> list[Path]:
    """Restore each image in `input` (a file or folder) at its own size into `output/<stem>.png` (`<stem>_<k>.png`).

    A single input file with `output` named as an image (`photo.png`, not an existing folder) is written there
    (`photo_<k>.png` for several samples), in the format of its suffix; a folder of inputs needs a folder.

    Sample k of an image is seeded from (seed, file name, k), so it does not depend on the other files in the
    folder. `batch_size` tiles go through the network at once. With `preview` (a folder), each coarse result is
    written there first under the output's name. Outputs are written atomically, so one that exists is
    complete: a rerun skips it (resuming an interrupted folder) unless `overwrite`. Under torchrun each rank
    restores its own contiguous share of the inputs (RANK, WORLD_SIZE) and returns what it wrote.
    """
    from tqdm import tqdm

    # Fail on bad options before loading anything.
    task_to_run = get_task(task)
    check_sampling(sampler, steps, guidance, strength)
    check_positive(("--num-samples", num_samples), ("--batch-size", batch_size))
    input, output = Path(input), Path(output)
    refuse_input_as_output(input, output)
    paths = image_inputs(input, output, preview)
    to_file = output.suffix.lower() in IMAGE_SUFFIXES and not output.is_dir()
    if to_file and input.is_dir():
        raise ImageError(f"{output}: names one image, but {input} is a folder of inputs; give a folder for --output")
    for flag, folder in (("--output", None if to_file else output), ("--preview", preview)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise ImageError(f"{folder}: {flag} needs a folder here, and {folder} is a file, not a folder")
    if not paths:
        raise ImageError(f"{input}: no input images")
    check_unique_stems(paths)
    mask_dir = Path(mask) if mask is not None else None
    inputs = [(path, find_mask(mask_dir, path, input_root(input))) for path in paths]  # before any sampling
    folder, stem, suffix = (output.parent, output.stem, output.suffix) if to_file else (output, None, ".png")
    names = [name for path in paths for name in output_names(path, stem, suffix, num_samples)]
    refuse_writing_over([folder / name for name in names] + [Path(preview) / name for name in names if preview],
                        [item for pair in inputs for item in pair if item is not None])
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device is None and world_size > 1 and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    model = load_model(checkpoint, device)
    if task not in trained_tasks(model):
        warnings.warn(f"task {task} was not in this model's training mixture {sorted(trained_tasks(model))}",
                      stacklevel=2)
    written, skipped = [], 0
    for path, mask_path in tqdm(rank_slice(inputs, rank, world_size), desc="images", unit="image",
                                disable=not progress):
        names = output_names(path, stem, suffix, num_samples)
        if not overwrite and all((folder / name).is_file() for name in names):
            skipped += 1
            continue
        file_task = task_to_run.for_file(path)  # a JPEG's task knows its file's quality
        try:
            image, image_mask = load_input(file_task, path, mask_path)
            if note := file_task.input_note(image):
                warnings.warn(f"{path}: {note}", stacklevel=2)
        except EmptyMaskError as error:
            warnings.warn(f"{error}; the output is the input, copied", stacklevel=2)
            image, image_mask = load_image(path, "RGB"), None
            for name in names:
                save_image(image, folder / name)
                written.append(folder / name)
            continue
        for k, name in enumerate(names):
            if not overwrite and (folder / name).is_file():
                continue
            show = None if preview is None else lambda coarse, name=name: save_image(coarse, Path(preview) / name)
            restored = restore_image(model, file_task, image, image_mask, sampler=sampler, steps=steps,
                                     seed=derive_seed(seed, path.name, str(k)), precision=precision,
                                     progress=progress, preview=show, tile=tile, overlap=overlap,
                                     tile_batch=batch_size, guidance=guidance, strength=strength)
            save_image(restored, folder / name)
            written.append(folder / name)
    if skipped:
        print(f"skipped {skipped} input(s) whose outputs exist in {folder} (--overwrite redoes them)")
    return written
