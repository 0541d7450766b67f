"""`palette demo`: all four tasks on example images with the shipped model -> demo/index.html and PNG grids.

Each task runs on model-size crops (the grids) and on one photo at its own size (restore_image), shown beside
the original with a zoomed crop of what the model made.

    run_demo()                                  # bundled examples, shipped model
    run_demo(input="my_photo.jpg")              # your own image
"""

from __future__ import annotations

import html
import io
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checkpoint import bundled_model_path
from .data import centre_crop
from .imageio import list_images, open_image, pil_to_tensor, refuse_writing_over, save_image
from .inference import Model, load_models, restore, restore_image
from .tiling import resize
from .tasks import Task, get_task

DISPLAY_SCALE = 3  # the model works at 64 px; grids are enlarged with nearest-neighbour so pixels stay honest
FULL_SIZE_LIMIT = 512  # the full-size photo's long side at most, so the demo stays minutes on a CPU


@dataclass(frozen=True)
class DemoCase:
    title: str
    task: Task


DEMO_CASES = (
    DemoCase("Colorization of a grayscale photo", get_task("colorization")),
    DemoCase("Inpainting a free-form hole", get_task("inpainting", mask_kind="free_form_20_30")),
    DemoCase("Inpainting a centre box", get_task("inpainting", mask_kind="centre")),
    DemoCase("Uncropping the right half", get_task("uncropping", side="right")),
    DemoCase("JPEG restoration at quality 10", get_task("jpeg", quality=10)),
)
DIVERSITY_SAMPLES = 4


def shipped_model_path() -> Path:
    return bundled_model_path("multitask")


def example_images() -> list[Path]:
    return list_images(Path(str(resources.files("palette") / "assets" / "examples")))


def _user_view(case: DemoCase, clean: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a user would hand to `palette sample` (decoded), plus the model's condition and mask for it."""
    rng = np.random.default_rng(seed)
    shown, mask = _simulated(case.task, clean, rng)
    degraded = case.task.condition_from_input(shown, mask, rng)
    return shown, degraded.condition, degraded.mask


def _simulated(task: Task, clean: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The degraded file a user would have for a clean image, decoded, and its mask."""
    user = task.simulate_input(clean, rng)
    with Image.open(io.BytesIO(user.data)) as image:
        return pil_to_tensor(image.convert("RGB")), user.mask


def _focus(mask: torch.Tensor | None, height: int, width: int) -> tuple[int, int]:
    """Where to zoom: the middle of the generated pixels that touch known ones, else the image centre."""
    if mask is None or mask.amin() > 0.5:
        return height // 2, width // 2
    generated = mask[0] > 0.5
    edge = torch.zeros_like(generated)  # a pixel whose neighbour above, below, left or right differs
    edge[1:] |= generated[1:] != generated[:-1]
    edge[:-1] |= generated[:-1] != generated[1:]
    edge[:, 1:] |= generated[:, 1:] != generated[:, :-1]
    edge[:, :-1] |= generated[:, :-1] != generated[:, 1:]
    rows, cols = torch.nonzero(edge & generated, as_tuple=True)
    if not len(rows):  # nothing generated (a mask drawn on a photo too small to hold its hole)
        return height // 2, width // 2
    return int(rows.float().mean()), int(cols.float().mean())


def _full_size_figure(images: list[torch.Tensor], mask: torch.Tensor | None, path: Path) -> None:
    """Images side by side at their size; below each, a crop around the focus enlarged DISPLAY_SCALE times.

    The crop has the image's shape, a DISPLAY_SCALE-th of each side, so enlarged it fills the image's width.
    """
    height, width = images[0].shape[1:]
    crop_height, crop_width = max(1, height // DISPLAY_SCALE), max(1, width // DISPLAY_SCALE)
    row, col = _focus(mask, height, width)
    top = min(max(0, row - crop_height // 2), height - crop_height)
    left = min(max(0, col - crop_width // 2), width - crop_width)
    crops = []
    for image in images:
        crop = image[:, top:top + crop_height, left:left + crop_width]
        crop = crop.repeat_interleave(DISPLAY_SCALE, 1).repeat_interleave(DISPLAY_SCALE, 2)
        crops.append(torch.nn.functional.pad(crop, (0, width - crop.shape[2], 0, 0), value=-1.0))
    save_image(torch.cat([torch.cat(images, dim=2), torch.cat(crops, dim=2)], dim=1), path)


def _full_size_case(model: Model, case: DemoCase, photo: torch.Tensor, steps: int | None,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The user's file for a photo, restored at its own size: (input as shown, output, mask)."""
    shown, mask = _simulated(case.task, photo, np.random.default_rng(seed))
    return shown, restore_image(model, case.task, shown, mask, steps=steps, seed=seed, progress=False), mask


def _grid(rows: list[list[torch.Tensor]], path: Path) -> None:
    image = torch.cat([torch.cat(row, dim=2) for row in rows], dim=1)
    size = image.shape[1:]
    save_image(image, path)
    with Image.open(path) as saved:
        saved.resize((size[1] * DISPLAY_SCALE, size[0] * DISPLAY_SCALE), Image.NEAREST).save(path)


def _full_size_photo(path: Path) -> torch.Tensor:
    image = open_image(path)
    scale = min(1.0, FULL_SIZE_LIMIT / max(image.size))
    return resize(pil_to_tensor(image), round(image.height * scale), round(image.width * scale)).clamp(-1, 1)


def run_demo(output: str | Path = "demo", input: str | Path | None = None, checkpoint: str | Path | None = None,
             steps: int | None = None, device: str = "cpu", seed: int = 0, full_size: bool = True) -> Path:
    """Restore every demo case (and, with `full_size`, one photo at its size) and write `output/index.html`."""
    start = time.perf_counter()
    output = Path(output)
    written = ["index.html", "denoising.png", "diversity.png",
               *(f"{case.task.label}{part}.png" for case in DEMO_CASES for part in ("", "_full"))]
    refuse_writing_over([output / name for name in written], [input] if input else [])
    output.mkdir(parents=True, exist_ok=True)
    models = load_models(checkpoint, device)  # with the shipped model, the JPEG model: its page shows it beside
    model: Model = next(iter(models.values()))
    size = model.image_size
    paths = [Path(input)] if input else example_images()
    cleans = [pil_to_tensor(centre_crop(open_image(p), size)) for p in paths]
    photo = _full_size_photo(paths[0])
    sections = []
    for case_index, case in enumerate(tqdm(DEMO_CASES, desc="demo")):
        views = [_user_view(case, clean, seed + 100 * case_index + i) for i, clean in enumerate(cleans)]
        outputs = restore(model, torch.stack([v[1] for v in views]), torch.stack([v[2] for v in views]),
                          steps=steps, seed=seed, task=case.task).cpu()
        name = case.task.label
        _grid([[v[0], o, c] for v, o, c in zip(views, outputs, cleans)], output / f"{name}.png")
        sections.append((case.title, f"{name}.png", "input | output | original"))
        if full_size:
            shown, restored, mask = _full_size_case(model, case, photo, steps, seed + case_index)
            images, caption = [shown, restored], "input | output"
            if case.task.name == "jpeg" and models.get("jpeg", model) is not model:  # the bundled JPEG model
                images.append(_full_size_case(models["jpeg"], case, photo, steps, seed + case_index)[1])
                caption += " | the JPEG model (--checkpoint jpeg)"
            _full_size_figure([*images, photo], mask, output / f"{name}_full.png")
            height, width = photo.shape[1:]
            sections.append((f"{case.title}, at {width}×{height}", f"{name}_full.png",
                             f"{caption} | original at their size; below, a {DISPLAY_SCALE}× zoom"))

    # The denoising process for one image, and several samples for one input (Palette Fig. 5-style).
    case = DEMO_CASES[2]
    shown, condition, mask = _user_view(case, cleans[0], seed)
    frames: list[torch.Tensor] = []
    restore(model, condition[None], mask[None], steps=steps, seed=seed, task=case.task,
            callback=lambda index, x, predicted: frames.append(x[0].cpu().clamp(-1, 1)))
    picks = np.linspace(0, len(frames) - 1, min(8, len(frames))).round().astype(int)
    _grid([[shown] + [frames[i] for i in picks]], output / "denoising.png")
    sections.append(("Denoising process", "denoising.png", "input, then x_t from the noisiest step to the last"))
    samples = restore(model, condition[None].repeat(DIVERSITY_SAMPLES, 1, 1, 1),
                      mask[None].repeat(DIVERSITY_SAMPLES, 1, 1, 1), steps=steps, seed=seed + 1, task=case.task).cpu()
    _grid([[shown, *samples, cleans[0]]], output / "diversity.png")
    sections.append(("Diversity", "diversity.png", f"input | {DIVERSITY_SAMPLES} samples | original"))

    elapsed = time.perf_counter() - start
    sampler = model.config.sampling.sampler
    used_steps = f"{steps} steps" if steps else "; ".join(
        f"{case.task.label} {model.config.sampling.describe(case.task.name)}" for case in DEMO_CASES)
    page = output / "index.html"
    body = "\n".join(f"<h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p><img src=\"{html.escape(file)}\">"
                     for title, file, caption in sections)
    page.write_text(
        "<!doctype html><meta charset=\"utf-8\"><title>Palette demo</title>"
        "<style>body{font-family:sans-serif;margin:2em}img{image-rendering:pixelated;max-width:100%}</style>"
        f"<h1>Palette demo</h1><p>{len(paths)} image(s) at {size}&times;{size} (and one at its own size), "
        f"sampler {sampler}, {used_steps}; "
        f"{elapsed:.1f} s on {model.device}.</p>\n{body}\n")
    print(f"demo page: {page.resolve()}")
    for _, file, _ in sections:
        print(f"grid: {(output / file).resolve()}")
    print(f"done in {elapsed:.1f} s")
    return page
