"""Per-image pixel metrics on images [N, C, H, W] in [0, 1]: each returns one value per image, [N].

    psnr(pred, target)         # dB, MAX = 1
    colourfulness(pred)        # Hasler & Süsstrunk 2003, on the 0..255 scale
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0  # identical images would give +inf, which no mean or CI survives


def l1_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image [N] of images in [0, 1]."""
    return (pred - target).abs().flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image [N] on [0, 1] with MAX = 1 (the same number as MAX = 255 on [0, 255])."""
    mse = (pred - target).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image [N] of images in [0, 1], averaged over channels and window positions.

    Wang et al. 2004, Eq. 13 with their settings: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
    L = 1, and 'valid' filtering (no padding) as in the authors' ssim.m.
    """
    channels = pred.shape[1]
    offsets = torch.arange(11, dtype=pred.dtype, device=pred.device) - 5
    window = torch.exp(-offsets.square() / (2 * 1.5**2))
    window = window / window.sum()

    def local_mean(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian, one filter per channel
        x = F.conv2d(x, window.view(1, 1, 1, 11).expand(channels, 1, 1, 11), groups=channels)
        return F.conv2d(x, window.view(1, 1, 11, 1).expand(channels, 1, 11, 1), groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mean_p, mean_t = local_mean(pred), local_mean(target)
    var_p = local_mean(pred * pred) - mean_p.square()
    var_t = local_mean(target * target) - mean_t.square()
    covariance = local_mean(pred * target) - mean_p * mean_t
    index_map = ((2 * mean_p * mean_t + c1) * (2 * covariance + c2)) / (
        (mean_p.square() + mean_t.square() + c1) * (var_p + var_t + c2))
    return index_map.flatten(1).mean(1)


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Colourfulness M per image [N] of RGB images in [0, 1]; 0 for any gray image.

    Hasler & Süsstrunk 2003, "Measuring colourfulness in natural images", Eq. 3 on 0..255 values:
    rg = R - G, yb = (R + G) / 2 - B, M = sqrt(σ_rg² + σ_yb²) + 0.3 sqrt(μ_rg² + μ_yb²), population σ.
    """
    red, green, blue = (images.double() * 255).flatten(2).unbind(1)
    rg = red - green
    yb = (red + green) / 2 - blue
    spread = (rg.var(1, correction=0) + yb.var(1, correction=0)).sqrt()
    offset = (rg.mean(1).square() + yb.mean(1).square()).sqrt()
    return spread + 0.3 * offset
