"""Reading and writing images as tensors in [-1, 1], with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageError(ValueError):
    """An input image or mask that cannot be used; the message names the file."""


def list_images(folder: str | Path) -> list[Path]:
    """All image files under `folder`, searched recursively, in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a directory")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_image(path: str | Path, mode: str = "RGB") -> Image.Image:
    """Open and fully decode an image, converting to `mode`; a bad file raises ImageError."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from error


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


def load_image(path: str | Path, mode: str = "RGB") -> torch.Tensor:
    """Read a file into a tensor [C, H, W] in [-1, 1]."""
    return pil_to_tensor(open_image(path, mode))


def save_image(tensor: torch.Tensor, path: str | Path) -> None:
    """Write a [C, H, W] tensor in [-1, 1] as an 8-bit PNG (or the format of the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(tensor).save(path)


def resize_image(tensor: torch.Tensor, height: int, width: int, resample: int = Image.BICUBIC) -> torch.Tensor:
    """Resize a [C, H, W] tensor in [-1, 1] through Pillow (8-bit, as a saved file would be)."""
    return pil_to_tensor(tensor_to_pil(tensor).resize((width, height), resample))
