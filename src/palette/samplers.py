"""Sampling loops over a denoiser callable; diffusers schedulers supply the step rules.

A denoiser maps (x_t, noise_level[N]) to a prediction of the clean image. Every sampler here is the same
loop: start from noise, ask the denoiser, let the scheduler step, paste the known pixels back.

    scheduler = make_scheduler("dpmpp", diffusion_config, steps=20)
    image = run_sampler(denoise, scheduler, known=condition_image, mask=mask, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import get_args

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .config import DiffusionConfig, SamplerName
from .diffusion import linear_betas, noise_levels

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, x_t, predicted x0)

SAMPLERS: tuple[str, ...] = get_args(SamplerName)


class AncestralScheduler:
    """Ancestral DDPM steps with variance 1 - alpha_t (Ho et al. 2020, Alg. 2; Palette App. A), on any subset of steps.

    Fed the predicted x0, it samples the posterior q(x_prev | x_t, x0): mean from DDPM eq. 7, variance
    beta_t = 1 - gamma_t / gamma_prev of the (possibly respaced) step, and no noise on the final step.
    """

    init_noise_sigma = 1.0

    def __init__(self, diffusion: DiffusionConfig):
        betas = linear_betas(diffusion.sample_steps, diffusion.sample_beta_start, diffusion.sample_beta_end)
        self.alphas_cumprod = noise_levels(betas)[1:].float()
        self.num_train_timesteps = diffusion.sample_steps
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, steps: int) -> None:
        # Trailing spacing: the first step is the noisiest one.
        spaced = np.round(np.arange(self.num_train_timesteps, 0, -self.num_train_timesteps / steps)) - 1
        self.timesteps = torch.from_numpy(spaced.astype(np.int64))

    def step(self, predicted_clean: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = False) -> tuple[torch.Tensor]:
        position = int((self.timesteps == timestep).nonzero()[0, 0])
        gamma = self.alphas_cumprod[int(timestep)].item()
        final = position == len(self.timesteps) - 1
        gamma_prev = 1.0 if final else self.alphas_cumprod[int(self.timesteps[position + 1])].item()
        beta = 1 - gamma / gamma_prev
        mean = (gamma_prev ** 0.5 * beta / (1 - gamma)) * predicted_clean \
            + ((1 - beta) ** 0.5 * (1 - gamma_prev) / (1 - gamma)) * sample
        if final:
            return (mean,)
        noise = torch.randn(sample.shape, generator=generator, device=generator.device if generator else "cpu")
        return (mean + beta ** 0.5 * noise.to(sample.device),)


def make_scheduler(name: str, diffusion: DiffusionConfig, steps: int | None = None) -> SchedulerMixin | AncestralScheduler:
    """A diffusers scheduler on the inference schedule, fed predicted x0 ("sample") by our denoiser."""
    common = dict(
        num_train_timesteps=diffusion.sample_steps,
        beta_start=diffusion.sample_beta_start,
        beta_end=diffusion.sample_beta_end,
        beta_schedule="linear",
        prediction_type="sample",
        # Few-step runs must start at the noisiest step (Lin et al. 2024, "Common diffusion noise schedules…", §3.3).
        timestep_spacing="trailing",
    )
    if name == "ddpm":
        scheduler = AncestralScheduler(diffusion)
    elif name == "ddim":
        scheduler = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    elif name == "dpmpp":
        scheduler = DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                lower_order_final=True, final_sigmas_type="zero")
    elif name == "unipc":
        scheduler = UniPCMultistepScheduler(**common, predict_x0=True, solver_order=2, lower_order_final=True,
                                            final_sigmas_type="zero")
    else:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    scheduler.set_timesteps(steps or diffusion.sample_steps)
    return scheduler


def paste_known(x: torch.Tensor, known: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Keep generated pixels where mask = 1 and the known clean pixels elsewhere (Palette §3, inpainting)."""
    if known is None or mask is None:
        return x
    return mask * x + (1 - mask) * known


@torch.no_grad()
def run_sampler(
    denoise: Denoiser,
    scheduler: SchedulerMixin | AncestralScheduler,
    shape: torch.Size | tuple[int, ...],
    known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Draw samples of `shape`, pasting `known` outside `mask` at every step."""
    levels = scheduler.alphas_cumprod.to(torch.float32)
    x = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu").to(device)
    x = paste_known(x * scheduler.init_noise_sigma, known, mask)
    # Only the ancestral sampler draws fresh noise per step; the others take no generator.
    step_options = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for index, timestep in enumerate(scheduler.timesteps):
        noise_level = levels[int(timestep)].to(device).expand(shape[0])
        predicted_clean = denoise(x, noise_level)
        x = scheduler.step(predicted_clean, timestep, x, return_dict=False, **step_options)[0]
        x = paste_known(x, known, mask)
        if callback is not None:
            callback(index, x, predicted_clean)
    return x
