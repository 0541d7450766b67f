"""`palette serve`: a browser UI (gradio) over the full-size functions `palette sample` and `palette extend` use.

    palette serve                                      # the shipped model (and the JPEG model) at http://127.0.0.1:7860
    palette serve --checkpoint runs/demo --port 8000
    palette serve --checkpoint runs/inpainting --checkpoint jpeg   # several models: each task offers its own
    launch(build_app(load_models("model.safetensors")))  # the same from Python

Where several models are served (the shipped one brings the bundled JPEG model), each task offers those trained on
it, the one trained on fewest tasks first: a JPEG goes to the JPEG model unless the user picks the multi-task one.

Sample k of an upload `photo.jpg` with seed S is what `palette sample --seed S --num-samples K` writes as
`photo_k.png` (for uncropping, what `palette extend --seed S+k` writes): one code path, restore_image and extend_image.

Nothing leaves the machine: the server binds 127.0.0.1, makes no share link, sends no analytics, and its theme uses
only system fonts, so the page fetches nothing from the internet. One job runs at a time.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import MAX_STEPS
from .imageio import load_image, save_image
from .inference import Model, derive_seed, extend_image, restore_image, trained_tasks
from .samplers import SAMPLERS
from .tasks import TASKS, get_task

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # the pixel cap is imageio.max_pixels (PALETTE_MAX_PIXELS, 50 megapixels)
EDITOR_SIDE = 2048  # the mask is drawn on a view of at most this long side and scaled up to the photo
MAX_SAMPLES = 8
SIDE_NAMES = ("left", "right", "top", "bottom")
# How the user says what to generate, where it is not the whole image: a drawn mask, or px per side (extend_image).
DRAWN_MASK, SIDES = "mask", "sides"
REGION_INPUT = {"inpainting": DRAWN_MASK, "uncropping": SIDES}
HINTS = {
    DRAWN_MASK: "Paint over what to fill with the brush below (undo with ↶).",
    SIDES: "Choose how many pixels to add on each side.",
    None: "Nothing more to give: run it.",
}


def import_gradio() -> Any:
    """gradio, with its analytics off: the variable is read when gradio is imported."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as error:
        raise ModuleNotFoundError("the browser UI needs gradio: pip install -e '.[ui]'") from error
    return gradio


def offline_theme(gr: Any) -> Any:
    """gradio's default look with system fonts: its own fonts would be fetched from the internet."""
    return gr.themes.Default(font=[gr.themes.Font("system-ui"), "sans-serif"],
                             font_mono=[gr.themes.Font("ui-monospace"), "monospace"])


def launch(app: Any, host: str | None = None, port: int | None = None, block: bool = True) -> Any:
    """Serve a gradio app safely: one job at a time, no share link, capped uploads; returns it once listening.

    `host` defaults to 127.0.0.1 (this machine only), `port` to 7860; with `block`, it serves until interrupted.
    """
    gr = import_gradio()
    host, port = host or DEFAULT_HOST, port or DEFAULT_PORT
    if not is_loopback(host):
        print(f"warning: serving on {host}: anyone who can reach this machine can use the app")
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, max_file_size=MAX_UPLOAD_BYTES,
               ssr_mode=False, theme=offline_theme(gr), prevent_thread_lock=True, quiet=True)
    if block:
        print(f"palette: serving on {app.local_url} (Ctrl-C stops it)")
        app.block_thread()  # until Ctrl-C
    return app


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def read_upload(path: str | Path) -> torch.Tensor:
    """An uploaded photo [3, H, W] as `palette sample` reads it; over 50 MB or the pixel cap is a ValueError."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise ValueError(f"{path.name}: {size / 2**20:.1f} MB, over the limit of {MAX_UPLOAD_BYTES / 2**20:.0f} MB")
    return load_image(path, "RGB")  # refuses more than imageio.max_pixels() before decoding, with its message


def mask_from_strokes(strokes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Drawn strokes (alpha [h, w], any size: the editor's view) -> a mask [1, height, width], 1 = generate."""
    from PIL import Image

    drawn = Image.fromarray(((np.asarray(strokes) > 0) * 255).astype(np.uint8))
    if drawn.size != (width, height):
        drawn = drawn.resize((width, height), Image.NEAREST)
    return torch.from_numpy(np.asarray(drawn) > 127).float()[None]


@dataclass
class Restored:
    """What the UI shows for one request: the input as the model takes it, the samples, and notes."""

    before: torch.Tensor
    samples: list[torch.Tensor]
    notes: list[str] = field(default_factory=list)


def restore_upload(model: Model, task_name: str, photo: str | Path, strokes: np.ndarray | None = None,
                   sides: dict[str, int] | None = None, sampler: str | None = None, steps: int | None = None,
                   seed: int = 0, samples: int = 1, progress: bool = True) -> Restored:
    """One UI request: read the upload, restore it `samples` times at its own size with restore_image/extend_image."""
    from tqdm import tqdm

    task = get_task(task_name).for_file(photo)  # a JPEG its quality, as `palette sample` reads it
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise ValueError(f"samples must be from 1 to {MAX_SAMPLES}, got {samples!r}")
    photo = Path(photo)
    image = read_upload(photo)
    options = dict(sampler=sampler, steps=steps, progress=progress)
    region = REGION_INPUT.get(task.name)
    notes = []
    if region == SIDES:
        sides = {side: int((sides or {}).get(side) or 0) for side in SIDE_NAMES}
        seeds = [seed + k for k in range(samples)]  # sample 0 is `palette extend --seed S`
        restore_one = partial(extend_image, model, image, **sides, **options)
        before = torch.nn.functional.pad(image, (sides["left"], sides["right"], sides["top"], sides["bottom"]))
    else:
        mask = None
        if region == DRAWN_MASK:
            if strokes is None or not np.any(np.asarray(strokes) > 0):
                raise ValueError(f"{task.name}: paint over the part to fill first")
            mask = mask_from_strokes(strokes, *image.shape[1:])
        # sample k is `palette sample --seed S` on this file: seeded from (seed, file name, k)
        seeds = [derive_seed(seed, photo.name, str(k)) for k in range(samples)]
        restore_one = partial(restore_image, model, task, image, mask, **options)
        if task.has_known_region:
            before = torch.where(mask > 0.5, torch.zeros_like(image), image)  # the hole as mid-gray
        else:  # what the model starts from: the gray image for colorization, the photo for JPEG
            before = task.take_input(image)
            if note := task.input_note(image):
                notes.append(note)
    restored = [restore_one(seed=sample_seed) for sample_seed in tqdm(seeds, desc="samples", disable=not progress)]
    return Restored(before, restored, notes)


def model_choices(models: dict[str, Model], task_name: str) -> list[str]:
    """The models to offer for a task: those trained on it, fewest tasks first (every model where none was)."""
    trained = [name for name, model in models.items() if task_name in trained_tasks(model)]
    return sorted(trained, key=lambda name: len(trained_tasks(models[name]))) or list(models)


def build_app(models: dict[str, Model], output_dir: str | Path | None = None) -> Any:
    """The gradio Blocks app over `models` (load_models; the first is the default); results are written as PNG
    files under `output_dir` (a temp folder)."""
    gr = import_gradio()
    output_root = Path(output_dir or tempfile.mkdtemp(prefix="palette-serve-"))
    first_task = next(iter(TASKS))
    first_region = REGION_INPUT.get(first_task)

    def editor_view(photo: str | None) -> Any:
        """The photo as the editor's background, at most EDITOR_SIDE px long, to paint the hole on."""
        if not photo:
            return None
        try:
            image = read_upload(photo)
        except ValueError as error:
            raise gr.Error(str(error)) from None
        scale = min(1.0, EDITOR_SIDE / max(image.shape[1:]))
        if scale < 1:
            from .imageio import resize_image

            image = resize_image(image, max(1, round(image.shape[1] * scale)), max(1, round(image.shape[2] * scale)))
        path = _new_folder(output_root) / "editor.png"
        save_image(image, path)
        return {"background": str(path), "layers": [], "composite": str(path)}

    def model_picker(task_name: str) -> Any:
        choices = model_choices(models, task_name)
        return gr.update(choices=choices, value=choices[0], visible=len(choices) > 1)

    def show_task(task_name: str, photo: str | None) -> tuple[Any, ...]:
        region = REGION_INPUT.get(task_name)
        # A hidden editor may miss its background: give it again when it appears.
        drawing = gr.update(value=editor_view(photo), visible=True) if region == DRAWN_MASK else \
            gr.update(visible=False)
        return drawing, gr.update(visible=region == SIDES), HINTS[region], model_picker(task_name)

    def run(photo: str | None, task_name: str, model_name: str, drawing: dict | None, left: float, right: float,
            top: float, bottom: float, sampler: str, steps: float, seed: float, samples: float,
            progress: Any = gr.Progress(track_tqdm=True)) -> tuple[Any, ...]:
        if not photo:
            raise gr.Error("Upload or paste a photo first.")
        if model_name not in model_choices(models, task_name):
            raise gr.Error(f"the model {model_name!r} is not offered for {task_name}: choose one of "
                           f"{', '.join(model_choices(models, task_name))}")
        layers = [layer for layer in (drawing or {}).get("layers") or [] if layer is not None]
        strokes = np.max([np.asarray(layer)[..., -1] for layer in layers], axis=0) if layers else None
        try:
            result = restore_upload(models[model_name], task_name, photo, strokes,
                                    sides=dict(zip(SIDE_NAMES, (left, right, top, bottom))), sampler=sampler or None,
                                    steps=_whole(steps, "steps") or None, seed=_whole(seed, "seed") or 0,
                                    samples=_whole(samples, "samples"))
        except ValueError as error:  # ImageError and every refused option: the message names the problem
            raise gr.Error(str(error)) from None
        folder = _new_folder(output_root)
        before = folder / "input.png"
        save_image(result.before, before)
        paths = []
        for k, sample in enumerate(result.samples):
            paths.append(folder / f"{Path(photo).stem}_{task_name}_{k}.png")
            save_image(sample, paths[-1])
        height, width = result.samples[0].shape[1:]
        notes = [f"{len(paths)} sample(s) at {width}×{height}, seed {_whole(seed, 'seed') or 0}"
                 + (f", the {model_name} model (`--checkpoint {model_name}`)." if len(models) > 1 else "."),
                 *result.notes]
        files = [str(path) for path in paths]
        return (str(before), files[0]), files, files, "\n\n".join(notes)

    with gr.Blocks(title="Palette", analytics_enabled=False) as app:
        gr.Markdown("# Palette\nImage-to-image diffusion at your photo's own size. Nothing leaves this machine.")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="Photo (upload or paste; any size)", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"], buttons=["fullscreen"], elem_id="photo")
                task = gr.Radio(list(TASKS), value=first_task, label="Task", elem_id="task")
                first_choices = model_choices(models, first_task)
                model_name = gr.Radio(list(models), value=first_choices[0], label="Model", elem_id="model",
                                      info=_model_info(models), visible=len(first_choices) > 1)
                hint = gr.Markdown(HINTS[first_region])
                drawing = gr.ImageEditor(label="Paint the hole", type="numpy", image_mode="RGBA", sources=[],
                                         transforms=[], layers=False, format="png", buttons=["fullscreen"],
                                         elem_id="editor",
                                         brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                                         visible=first_region == DRAWN_MASK)
                with gr.Row(visible=first_region == SIDES) as side_row:
                    side_inputs = [gr.Number(value=64 if side == "right" else 0, precision=0, minimum=0,
                                             label=f"{side} (px)") for side in SIDE_NAMES]
                with gr.Accordion("Advanced", open=False):
                    # First, the model's own sampler: with several models, one name would override theirs.
                    sampler = gr.Dropdown([(f"the model's ({_samplers(models)})", ""), *SAMPLERS], value="",
                                          label="Sampler")
                    # 0: the model's steps for the task (SamplingConfig.task_steps), which one number cannot show.
                    # (An empty box is no default: once the accordion opens, the page sends it as 0.)
                    steps = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_STEPS, label="Steps",
                                      info=f"0: the model's for the task ({_steps_by_task(models)})")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                    samples = gr.Slider(1, MAX_SAMPLES, value=1, step=1, label="Samples")
                button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                comparison = gr.ImageSlider(label="Before / after", type="filepath", format="png",
                                            buttons=["download", "fullscreen"], elem_id="comparison")
                notes = gr.Markdown(elem_id="notes")
                gallery = gr.Gallery(label="All samples", format="png", columns=4, height=280, object_fit="contain",
                                     buttons=["download", "fullscreen"], elem_id="gallery")
                files = gr.File(label="Download (PNG, full resolution)", file_count="multiple", elem_id="files")
        # Quick UI updates, not jobs: they need not wait for a sampling run to end.
        photo.change(editor_view, photo, drawing, api_visibility="private", concurrency_limit=None)
        task.change(show_task, [task, photo], [drawing, side_row, hint, model_name], api_visibility="private",
                    concurrency_limit=None)
        button.click(run, [photo, task, model_name, drawing, *side_inputs, sampler, steps, seed, samples],
                     [comparison, gallery, files, notes], api_name="restore")
    return app


def _model_info(models: dict[str, Model]) -> str:
    return "; ".join(f"{name}: trained on {', '.join(trained_tasks(model))}" for name, model in models.items())


def _samplers(models: dict[str, Model]) -> str:
    """The served models' own samplers: one name where they agree."""
    names = {name: model.config.sampling.sampler for name, model in models.items()}
    return next(iter(names.values())) if len(set(names.values())) == 1 else \
        ", ".join(f"{name} {sampler}" for name, sampler in names.items())


def _steps_by_task(models: dict[str, Model]) -> str:
    """Each task's steps in the model the page picks for it first."""
    return ", ".join(f"{task} {models[model_choices(models, task)[0]].config.sampling.for_task('steps', task)}"
                     for task in TASKS)


def _whole(value: float | None, name: str) -> int | None:
    if value is None:
        return None
    if float(value) != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(value)


def _new_folder(root: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=root))


def serve(checkpoints: str | Path | Sequence[str | Path] | None = None, host: str | None = None,
          port: int | None = None, device: str | None = None, block: bool = True) -> Any:
    """`palette serve`: load the models (default: the shipped one, with the JPEG model), each task offering those
    trained on it, and serve the app until interrupted."""
    from .inference import load_models

    if isinstance(checkpoints, (str, Path)):
        checkpoints = [checkpoints]
    models: dict[str, Model] = {}
    for checkpoint in checkpoints or [None]:
        models.update(load_models(checkpoint, device))
    return launch(build_app(models), host, port, block)
