"""Reading and writing images as tensors in [-1, 1], with errors that name the file.

Every image palette reads goes through `open_image`, which decodes a file the way a photo viewer shows it:

- EXIF orientation is applied, so a phone photo stored sideways comes out upright;
- transparent pixels are composited onto a background, white unless asked (what viewers show behind them), so the
  colour stored under fully transparent pixels never leaks in;
- 16-bit images are scaled to 8 bits (v / 257, rounded) rather than clipped at 255;
- CMYK, palette, 1-bit and gray images are converted; an animated GIF or WebP gives its first frame;
- an image of more than PALETTE_MAX_PIXELS pixels (default 50 megapixels) is refused before any pixel is decoded,
  which also stops decompression bombs (a small file that declares a huge size). Raise it for bigger photos:

    PALETTE_MAX_PIXELS=200000000 palette sample ...
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import ensure_folder, write_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

MAX_PIXELS_ENV = "PALETTE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000  # ~1.8 GB as a float32 RGB tensor, before any copy a task makes

WHITE, BLACK = 255, 0
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (32-bit) is read as the 16-bit range
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageError(ValueError):
    """An input image or mask that cannot be used; the message names the file."""


def image_inputs(path: str | Path, *exclude: str | Path | None) -> list[Path]:
    """What a user names as input: the image file itself, or every image under the folder except those under a
    folder of `exclude` that lies inside it (an output or preview folder inside the input folder: a rerun must
    not take what it wrote for inputs)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise ImageError(f"{path}: no such file or folder")
    root = path.resolve()
    inside = [folder for folder in (Path(f).resolve() for f in exclude if f is not None) if root in folder.parents]
    return [image for image in list_images(path) if not any(folder in image.resolve().parents for folder in inside)]


def input_root(path: str | Path) -> Path:
    """The folder that the names of `image_inputs(path)` are relative to: the folder itself, or the file's own."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def refuse_input_as_output(input: str | Path, output: str | Path) -> None:
    """An ImageError where writing `output` would replace the user's input (the same file, or the same folder)."""
    input, output = Path(input), Path(output)
    if output.exists() and input.exists() and output.samefile(input):
        what = "folder: the outputs would mix with the inputs" if input.is_dir() else "image: it would be replaced"
        raise ImageError(f"{output}: is the input {what}. Choose another --output")


def refuse_writing_over(outputs: Iterable[str | Path], kept: Iterable[str | Path]) -> None:
    """An ImageError naming both files where an output path is one of the user's files in `kept` (inputs, masks)."""
    originals = {Path(path).resolve(): Path(path) for path in kept}
    for output in outputs:
        if (original := originals.get(Path(output).resolve())) is not None:
            raise ImageError(f"{output}: would replace the input {original}; choose another output")


def list_images(folder: str | Path) -> list[Path]:
    """All image files under `folder`, searched recursively, in a stable order; hidden files and folders (a name
    starting with ".": thumbnails, macOS's `._` files) are not images of the user's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def check_unique_stems(paths: Iterable[Path], root: str | Path | None = None) -> None:
    """Raise ImageError naming both files when two inputs would get one output name (`a.png` and `a.jpg`).

    With `root`, outputs keep the folders below it (`root/x/a.png` -> `x/a`); without, only the stem counts.
    """
    seen: dict[Path, Path] = {}
    for path in paths:
        path = Path(path)
        name = (path.relative_to(root) if root is not None else Path(path.name)).with_suffix("")
        if name in seen:
            raise ImageError(f"{seen[name]} and {path} would both be written as {name}; rename one")
        seen[name] = path


def max_pixels() -> int:
    """The largest image (width x height) palette decodes: $PALETTE_MAX_PIXELS, else 50 megapixels."""
    text = os.environ.get(MAX_PIXELS_ENV)
    if text is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive whole number of pixels")
    return value


def _too_large(path: Path, limit: int, pixels: int | None) -> ImageError:
    size = "a declared size" if pixels is None else f"{pixels / 1e6:.1f} megapixels"
    return ImageError(f"{path}: refusing to decode {size}, over the limit of {limit:,} pixels "
                      f"(a decompression bomb or a huge photo); set {MAX_PIXELS_ENV}=<pixels> to raise it")


def _open(path: Path, limit: int) -> Image.Image:
    """Image.open (header only) with Pillow's bomb check turned into an ImageError naming palette's limit."""
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # the user raised palette's limit; Pillow's must not refuse first
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        declared = re.search(r"\((\d+) pixels\)", str(error))
        raise _too_large(path, limit, int(declared.group(1)) if declared else None) from error


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit gray -> 8-bit L by v / 257 (65535 -> 255); Pillow's own convert clips everything above 255."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    array = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.clip(np.round(array / 257), 0, 255).astype(np.uint8), "L")


def _flatten(image: Image.Image, background: int) -> Image.Image:
    """Composite transparent pixels onto a gray `background`, so the colour hidden under them cannot leak."""
    if image.mode not in ALPHA_MODES and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def open_image(path: str | Path, mode: str = "RGB", background: int = WHITE) -> Image.Image:
    """Open and fully decode an image as a viewer shows it (see the module docstring), converted to `mode`.

    Transparent pixels show `background` (a gray level, white by default). A bad file raises ImageError.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: {'a folder, not an image file' if path.is_dir() else 'no such file'}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes), not an image")
    limit = max_pixels()
    try:
        with _open(path, limit) as image:
            if image.width * image.height > limit:
                raise _too_large(path, limit, image.width * image.height)
            image.load()  # the first frame of an animation
            upright = ImageOps.exif_transpose(image)
            return _flatten(_eight_bit(upright), background).convert(mode)
    except ImageError:
        raise
    except UnidentifiedImageError as error:
        raise ImageError(f"{path}: not a readable image (Pillow recognises no image format in it)") from error
    except Exception as error:  # Pillow raises many types for broken files (OSError, SyntaxError, zlib.error...)
        raise ImageError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error


def frame_count(path: str | Path) -> int:
    """How many frames a file holds (1 for a still image); palette uses the first."""
    with _open(Path(path), max_pixels()) as image:
        return getattr(image, "n_frames", 1)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor [C, H, W] in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float tensor [C, H, W] in [-1, 1] -> 8-bit PIL image (RGB or L)."""
    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def encode_image(tensor: torch.Tensor, image_format: str, **options: object) -> bytes:
    """A [C, H, W] tensor in [-1, 1] as the bytes of an 8-bit image file in `image_format` (Pillow's options)."""
    buffer = io.BytesIO()
    tensor_to_pil(tensor).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def load_image(path: str | Path, mode: str = "RGB") -> torch.Tensor:
    """Read a file into a tensor [C, H, W] in [-1, 1]."""
    return pil_to_tensor(open_image(path, mode))


def output_format(path: str | Path) -> str:
    """Pillow's format for writing `path`, from its suffix; an ImageError for a suffix Pillow cannot write."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        raise ImageError(f"{path}: unknown image suffix {path.suffix!r}; use .png")
    return image_format


def save_image(tensor: torch.Tensor, path: str | Path) -> None:
    """Write a [C, H, W] tensor in [-1, 1] as an 8-bit image in the format of the suffix, atomically.

    A lossy format (JPEG, WebP) is written at quality 95, not Pillow's default 75, which would add back the
    artefacts a restoration took out.

    A reader sees the old file or the new one, never a part; on an error (a full disk, a read-only folder, a file
    where a folder should be) an OutputError names `path` and an existing file there is left untouched.
    """
    path = Path(path)
    image_format = output_format(path)
    image = tensor_to_pil(tensor)
    ensure_folder(path)
    options = {"quality": 95} if image_format in ("JPEG", "WEBP") else {}
    write_atomic(path, lambda temporary: image.save(temporary, format=image_format, **options))


def resize_image(tensor: torch.Tensor, height: int, width: int, resample: int = Image.BICUBIC) -> torch.Tensor:
    """Resize a [C, H, W] tensor in [-1, 1] through Pillow (8-bit, as a saved file would be)."""
    return pil_to_tensor(tensor_to_pil(tensor).resize((width, height), resample))
