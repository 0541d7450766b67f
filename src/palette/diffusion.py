"""Pure tensor math of Palette's diffusion: schedules, noise-level sampling, forward noising, parameterisations.

The noise level is gamma = prod(1 - beta) (written alpha-bar in DDPM), so x_t = sqrt(gamma) x_0 + sqrt(1 - gamma) eps.
Nothing here holds a network.
"""

from __future__ import annotations

import typing

import torch

from .config import DiffusionConfig, LossKind


def linear_betas(num_steps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """Linear beta schedule in float64 (Ho et al. 2020, §4)."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def training_noise_levels(diffusion: DiffusionConfig) -> torch.Tensor:
    """gamma_0..gamma_T of the training schedule in a config."""
    return noise_levels(linear_betas(diffusion.train_steps, diffusion.train_beta_start, diffusion.train_beta_end))


def noise_levels(betas: torch.Tensor) -> torch.Tensor:
    """gamma_t = prod_{s<=t} (1 - beta_s), with gamma_0 = 1 prepended: shape [T + 1]."""
    return torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1 - betas, dim=0)])


def sample_noise_level(levels: torch.Tensor, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw t ~ U{1..T}, then gamma ~ U(gamma_t, gamma_{t-1}) (SR3 §2.4, WaveGrad §3): float32 [batch]."""
    device = generator.device if generator is not None else torch.device("cpu")
    steps = torch.randint(1, len(levels), (batch,), generator=generator, device=device)
    fraction = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    levels = levels.to(device)
    low, high = levels[steps], levels[steps - 1]
    return (low + fraction * (high - low)).float()


def _expand(noise_level: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return noise_level.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def q_sample(clean: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(gamma) x_0 + sqrt(1 - gamma) eps (Palette eq. 2)."""
    gamma = _expand(noise_level, clean)
    return gamma.sqrt() * clean + (1 - gamma).sqrt() * noise


def x0_from_eps(x_t: torch.Tensor, noise_level: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Invert q_sample given the noise."""
    gamma = _expand(noise_level, x_t)
    return (x_t - (1 - gamma).sqrt() * eps) / gamma.sqrt()


def v_target(clean: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = sqrt(gamma) eps - sqrt(1 - gamma) x_0 (Salimans & Ho 2022, §4)."""
    gamma = _expand(noise_level, clean)
    return gamma.sqrt() * noise - (1 - gamma).sqrt() * clean


def x0_from_v(x_t: torch.Tensor, noise_level: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(gamma) x_t - sqrt(1 - gamma) v."""
    gamma = _expand(noise_level, x_t)
    return gamma.sqrt() * x_t - (1 - gamma).sqrt() * v


def log_snr(noise_level: torch.Tensor) -> torch.Tensor:
    """lambda = log(gamma / (1 - gamma)), computed stably in float64 then cast back."""
    gamma = noise_level.double().clamp(1e-30, 1 - 1e-12)
    return (gamma.log() - torch.log1p(-gamma)).to(noise_level.dtype)


def noise_level_to_timestep(noise_level: torch.Tensor, log_snr_range: tuple[float, float]) -> torch.Tensor:
    """Map gamma to [0, 1000] linearly in log-SNR, clipped to `log_snr_range` (noisy end = 1000).

    A sinusoidal timestep embedding resolves integer-scale differences; raw gamma in (0, 1] would leave
    most levels indistinguishable, so the training schedule's log-SNR range is spread over 0..1000.
    """
    low, high = log_snr_range
    position = (high - log_snr(noise_level.float()).clamp(low, high)) / (high - low)
    return 1000.0 * position


def training_log_snr_range(levels: torch.Tensor) -> tuple[float, float]:
    """The log-SNR span the training schedule visits: from its noisiest level to its first step."""
    return float(log_snr(levels[-1:])), float(log_snr(levels[1:2]))


def masked_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                kind: LossKind = "l2", pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean error over the region to generate (mask = 1): shape [N]. A `pixel_weight` [N, 1, H, W]
    multiplies each pixel's error; the mean stays over the mask's pixels, so the weight moves the optimum."""
    if kind not in typing.get_args(LossKind):
        raise ValueError(f"unknown loss {kind!r}; expected one of {', '.join(map(repr, typing.get_args(LossKind)))}")
    error = (prediction.float() - target.float())
    error = error.square() if kind == "l2" else error.abs()
    region = mask.float().expand_as(error)
    weighted = error * region if pixel_weight is None else error * region * pixel_weight.float()
    return weighted.flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1.0)


# The RMS every task's residual is scaled to (DiffusionConfig.residual_scale; EDM's sigma_data, Karras et al. 2022).
RESIDUAL_RMS = 0.5


def rebalance_weight(residual: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weight 1 + strength |residual| / RESIDUAL_RMS, [N, 1, H, W] (`strength` [N]).

    Under weighted L2 the best prediction is E[w x0] / E[w], so pixels whose residual is large (for colorization,
    saturated colour) pull the estimate towards them where the input leaves several answers open: colour
    rebalancing (Zhang et al. 2016, "Colorful Image Colorization" §2.2) for a regression-to-gray-prone model.
    """
    magnitude = residual.float().square().mean(1, keepdim=True).sqrt() / RESIDUAL_RMS
    return 1 + strength.float().view(-1, 1, 1, 1) * magnitude


def paste_known(x: torch.Tensor, known: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Keep generated pixels where mask = 1 and the known clean pixels elsewhere (Palette §3, inpainting)."""
    if known is None or mask is None:
        return x
    return mask * x + (1 - mask) * known
