"""JPEG at a quality factor Q: the degradation, and what a user's file says about its own compression.

The encoder is Pillow's libjpeg, whose quantisation tables are the IJG ones: the ITU T.81 Annex K tables
multiplied by a scale that falls as Q rises, 5000 / Q below 50 and 200 - 2 Q from there. The same scale, read
back from a file's tables, tells how hard the file was compressed, and so how much of a restoration to trust.
Below the block frequencies JPEG loses little, so a restoration keeps the file's own low-pass content (low_pass).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .imageio import encode_image, pil_to_tensor

# ITU T.81 Annex K, Table K.1: the luminance quantisation table that the IJG quality factor scales.
ANNEX_K_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
# The model trains on Q 5-30 (Palette App. B). Up to this quality it keeps all of its correction; above, a share
# that falls with the quantisation step (correction_share), chosen on the validation split (MODEL_CARD.md).
FULL_CORRECTION_QUALITY = 15
# The restoration keeps the input's content below the block frequencies (JpegRestoration.keep_input).
JPEG_LOW_PASS_SIGMA = 6.0  # pixels: removes the 8- and 16-pixel block grids of luma and 4:2:0 chroma


def sample_jpeg_quality(rng: np.random.Generator, low: int = 5, high: int = 30) -> int:
    """A JPEG quality factor in [low, high] with p(Q) ∝ exp(-Q/10) (Palette App. B)."""
    qualities = np.arange(low, high + 1)
    weights = np.exp(-qualities / 10)
    return int(rng.choice(qualities, p=weights / weights.sum()))


def check_quality(quality: int) -> None:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be an integer in [1, 100], got {quality!r}")


def jpeg_bytes(image: torch.Tensor, quality: int) -> bytes:
    """Encode an image [3, H, W] in [-1, 1] as JPEG at `quality` (Pillow, default subsampling)."""
    check_quality(quality)
    return encode_image(image, "JPEG", quality=quality)


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """The image after JPEG compression at `quality` and decoding, [3, H, W] in [-1, 1]."""
    with Image.open(io.BytesIO(jpeg_bytes(image, quality))) as decoded:
        return pil_to_tensor(decoded.convert("RGB"))


def quality_scale(quality: int) -> float:
    """The IJG scale (percent of the Annex K tables) of quality factor `quality`."""
    return 5000 / quality if quality < 50 else 200 - 2 * quality


def _luminance_table(quality: int) -> np.ndarray:
    return np.clip((ANNEX_K_LUMINANCE * quality_scale(quality) + 50) // 100, 1, 255)


def file_quality(path: str | Path) -> int | None:
    """The IJG quality factor whose luminance table is nearest a JPEG file's (exact for libjpeg's own files);
    None for a file that is not a JPEG. Tables are compared sorted, so their storage order does not matter."""
    try:
        with Image.open(path) as image:
            tables = getattr(image, "quantization", None) if image.format == "JPEG" else None
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):  # reading the image says what is wrong
        return None
    if not tables or len(tables[0]) != ANNEX_K_LUMINANCE.size:
        return None
    table = np.sort(np.asarray(tables[0]))
    distances = [np.abs(np.sort(_luminance_table(quality)) - table).sum() for quality in range(1, 101)]
    return int(np.argmin(distances)) + 1


def correction_share(quality: int | None) -> float:
    """The share of the model's correction a JPEG restoration keeps: all of it for an unknown quality or one up to
    FULL_CORRECTION_QUALITY; above, in proportion to the quantisation step (0.75 at Q 20, 0.3 at 50, 0 at 100)."""
    if quality is None:
        return 1.0
    return min(1.0, quality_scale(quality) / quality_scale(FULL_CORRECTION_QUALITY))


def low_pass(image: torch.Tensor, sigma: float = JPEG_LOW_PASS_SIGMA) -> torch.Tensor:
    """Gaussian blur of images [..., C, H, W] with reflected borders (so a constant image stays constant)."""
    radius = min(math.ceil(3 * sigma), (min(image.shape[-2:]) - 1) // 2)
    if radius < 1:
        return image
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).tolist()
    planes = image.reshape(-1, *image.shape[-2:])
    return _blur_along(_blur_along(planes, kernel, -1), kernel, -2).reshape(image.shape)


def _blur_along(planes: torch.Tensor, kernel: list[float], dim: int) -> torch.Tensor:
    """A 1-D convolution along `dim` (-1 or -2) of [P, H, W], reflected at the ends, as a sum of shifted copies.

    Separable passes cost 2(2r + 1) per pixel instead of (2r + 1)^2, and shifted sums need no workspace beyond
    one padded copy: a 12-megapixel photo stays within a few copies of itself.
    """
    radius = len(kernel) // 2
    padded = torch.nn.functional.pad(planes, (radius, radius) if dim == -1 else (0, 0, radius, radius), mode="reflect")
    length = planes.shape[dim]
    blurred = padded.narrow(dim, 0, length) * kernel[0]
    for shift in range(1, len(kernel)):
        blurred.add_(padded.narrow(dim, shift, length), alpha=kernel[shift])
    return blurred
