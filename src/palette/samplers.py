"""Sampling loops over a denoiser callable; a scheduler supplies the step rule.

A denoiser maps (x_t, noise_level[N]) to a prediction of the clean image. Every sampler here is the same
loop: start from noise at the noisiest level, ask the denoiser, let the scheduler step, paste the known pixels back.

    scheduler = make_scheduler("dpmpp", diffusion_config, steps=20)
    image = run_sampler(denoise, scheduler, shape, known=condition_image, mask=mask, generator=generators)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, get_args

import numpy as np
import torch

from .config import MAX_GUIDANCE, MAX_STEPS, DiffusionConfig, SamplerName
from .diffusion import linear_betas, noise_levels, paste_known, training_noise_levels

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, x_t, predicted x0)
Generators = torch.Generator | Sequence[torch.Generator] | None

SAMPLERS: tuple[str, ...] = get_args(SamplerName)


class Scheduler(Protocol):
    """What `run_sampler` needs of a step rule; diffusers' schedulers have the same shape."""

    alphas_cumprod: torch.Tensor
    timesteps: torch.Tensor

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, **options: Any) -> tuple: ...


class AncestralScheduler:
    """Ancestral DDPM steps with variance 1 - alpha_t (Ho et al. 2020, Alg. 2; Palette App. A), on any subset of steps.

    Fed the predicted x0, it samples the posterior q(x_prev | x_t, x0): mean from DDPM eq. 7, variance
    beta_t = 1 - gamma_t / gamma_prev of the (possibly respaced) step, and no noise on the final step.
    It runs on the paper's 1000-step inference schedule, as Palette samples.
    """

    def __init__(self, diffusion: DiffusionConfig):
        betas = linear_betas(diffusion.sample_steps, diffusion.sample_beta_start, diffusion.sample_beta_end)
        self.alphas_cumprod = noise_levels(betas)[1:].float()
        self.num_train_timesteps = diffusion.sample_steps
        self.timesteps = torch.arange(self.num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = torch.from_numpy(trailing_timesteps(self.num_train_timesteps, steps))

    def step(self, predicted_clean: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
             variance_noise: torch.Tensor | None = None, return_dict: bool = False) -> tuple[torch.Tensor]:
        position = int((self.timesteps == timestep).nonzero()[0, 0])
        gamma = self.alphas_cumprod[int(timestep)].item()
        final = position == len(self.timesteps) - 1
        gamma_prev = 1.0 if final else self.alphas_cumprod[int(self.timesteps[position + 1])].item()
        beta = 1 - gamma / gamma_prev
        mean = (gamma_prev ** 0.5 * beta / (1 - gamma)) * predicted_clean \
            + ((1 - beta) ** 0.5 * (1 - gamma_prev) / (1 - gamma)) * sample
        if final or variance_noise is None:
            return (mean,)
        return (mean + beta ** 0.5 * variance_noise,)


def trailing_timesteps(num_train_timesteps: int, steps: int) -> np.ndarray:
    """`steps` indices into the schedule, noisiest first and evenly spaced from its last step ("trailing")."""
    # Not np.arange with a float stride: its rounding can add a last index of -1 (61 of 2000 steps, for one).
    return (np.round(num_train_timesteps - np.arange(steps) * num_train_timesteps / steps) - 1).astype(np.int64)


class DPMSolverMultistep:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) fed predicted x0, on trailing steps of the training schedule.

    The first and the last step are first order (DDIM); the last lands on sigma = 0, so it returns the prediction.
    It is diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type=
    "zero", midpoint) written out, so that the default sampler imports no diffusers (2.8 s of start-up);
    tests/test_samplers.py checks the two agree step by step.
    """

    def __init__(self, diffusion: DiffusionConfig):
        self.alphas_cumprod = training_noise_levels(diffusion)[1:].float()
        self.num_train_timesteps = diffusion.train_steps

    def set_timesteps(self, steps: int) -> None:
        self.timesteps = torch.from_numpy(trailing_timesteps(self.num_train_timesteps, steps))
        gamma = self.alphas_cumprod.double()[self.timesteps].numpy()
        self.alpha = np.append(np.sqrt(gamma), 1.0)
        self.sigma = np.append(np.sqrt(1 - gamma), 0.0)
        self.log_snr = np.append(np.log(self.alpha[:-1] / self.sigma[:-1]), np.inf)
        self.set_begin_index(0)

    def set_begin_index(self, index: int) -> None:
        self.index, self.previous = index, None

    def step(self, predicted_clean: torch.Tensor, timestep: Any, sample: torch.Tensor,
             return_dict: bool = False) -> tuple[torch.Tensor]:
        i, log_snr = self.index, self.log_snr
        h = float(log_snr[i + 1] - log_snr[i])
        direction = predicted_clean
        if self.previous is not None and i + 1 < len(self.timesteps):
            half_ratio = 0.5 * h / float(log_snr[i] - log_snr[i - 1])  # second order: x0 extrapolated to the midpoint
            direction = predicted_clean + half_ratio * (predicted_clean - self.previous)
        x = float(self.sigma[i + 1] / self.sigma[i]) * sample - float(self.alpha[i + 1] * np.expm1(-h)) * direction
        self.index, self.previous = i + 1, predicted_clean
        return (x,)


def check_sampling(sampler: str | None, steps: int | None, guidance: float | None = None,
                   strength: float | None = None) -> None:
    """Raise ValueError naming the flag and what is allowed; None means "the model's default" and passes."""
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"--sampler: unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS):
        raise ValueError(f"--steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    if guidance is not None and not 1 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"--guidance must be from 1 (off) to {MAX_GUIDANCE}, got {guidance!r}")
    if strength is not None and not 0 < strength <= 1:
        raise ValueError(f"--strength must be in (0, 1] (1: from pure noise), got {strength!r}")


def check_positive(*flags: tuple[str, Any]) -> None:
    """A ValueError naming the first (flag, value) given (not None) that is not a positive integer."""
    for flag, value in flags:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")


def trained_betas(diffusion: DiffusionConfig) -> np.ndarray:
    """The training schedule's betas: fast samplers step only through noise levels the network was trained on."""
    return linear_betas(diffusion.train_steps, diffusion.train_beta_start, diffusion.train_beta_end).numpy()


def make_scheduler(name: str, diffusion: DiffusionConfig, steps: int) -> Scheduler:
    """A scheduler fed predicted x0 ("sample") by our denoiser.

    `ddpm` keeps the paper's 1000-step inference schedule (it reaches log-SNR -46, far beyond what the network
    was trained on, where every level looks alike to it). DDIM, DPM-Solver++ and UniPC run on the training
    schedule, so each of their steps sees a level the network knows, and the first is its noisiest.
    DDIM and UniPC come from diffusers, imported only when asked for.
    """
    check_sampling(name, steps)
    if name == "ddpm":
        scheduler = AncestralScheduler(diffusion)
    elif name == "dpmpp":
        scheduler = DPMSolverMultistep(diffusion)
    else:
        from diffusers import DDIMScheduler, UniPCMultistepScheduler

        common = dict(
            num_train_timesteps=diffusion.train_steps,
            trained_betas=trained_betas(diffusion),
            prediction_type="sample",
            # Few-step runs start at the noisiest step (Lin et al. 2024, "Common diffusion noise schedules…", §3.3).
            timestep_spacing="trailing",
        )
        if name == "ddim":
            scheduler = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
        else:
            scheduler = UniPCMultistepScheduler(**common, predict_x0=True, solver_order=2, lower_order_final=True,
                                                final_sigmas_type="zero")
    scheduler.set_timesteps(steps)
    if len(scheduler.timesteps) > steps:  # diffusers' trailing spacing has the float-stride slip trailing_timesteps
        scheduler.timesteps = scheduler.timesteps[:steps]  # avoids: a last index of -1, the noisiest level wrapped
        scheduler.num_inference_steps = steps
        if getattr(scheduler, "sigmas", None) is not None:  # UniPC: one sigma a step, then the final zero
            scheduler.sigmas = torch.cat([scheduler.sigmas[:steps], scheduler.sigmas[-1:]])
    return scheduler


def sdedit_start_step(steps: int, strength: float) -> int:
    """The step at which sampling starts to run round(strength * steps) steps, at least one (SDEdit's t0)."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    return steps - max(1, round(strength * steps))


def draw_noise(shape: Sequence[int], generator: Generators, device: torch.device | str) -> torch.Tensor:
    """Standard normal noise of `shape`; with one generator per sample, sample i draws only from generator i."""
    if generator is None or isinstance(generator, torch.Generator):
        source = generator.device if generator is not None else "cpu"
        return torch.randn(tuple(shape), generator=generator, device=source).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generator]).to(device)


@torch.no_grad()
def run_sampler(
    denoise: Denoiser,
    scheduler: Scheduler,
    shape: torch.Size | tuple[int, ...],
    known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: Generators = None,
    device: torch.device | str = "cpu",
    callback: StepCallback | None = None,
    start: torch.Tensor | None = None,
    start_step: int = 0,
    final_level: float | None = None,
) -> torch.Tensor:
    """Draw samples of `shape`, pasting `known` outside `mask` at every step.

    The first sample is drawn at the first step's noise level: sqrt(1 - gamma) eps around a zero mean, or with
    `start`, around sqrt(gamma) start at step `start_step`, skipping the noisier steps (SDEdit, Meng et al. 2022).
    With `final_level` gamma, the finished sample x is taken as x_t = sqrt(gamma) x, the noise it still holds
    standing in for sqrt(1 - gamma) eps, and denoised once more (SamplingConfig.final_denoise).
    """
    levels = scheduler.alphas_cumprod.to(torch.float32)
    timesteps = scheduler.timesteps[start_step:]
    if hasattr(scheduler, "set_begin_index"):  # multistep solvers count steps from here
        scheduler.set_begin_index(start_step)
    first = levels[int(timesteps[0])]
    x = (1 - first).sqrt() * draw_noise(shape, generator, device)
    if start is not None:
        x = x + first.sqrt() * start.to(x)
    x = paste_known(x, known, mask)
    ancestral = isinstance(scheduler, AncestralScheduler)
    for index, timestep in enumerate(timesteps):
        noise_level = levels[int(timestep)].to(device).expand(shape[0])
        predicted_clean = denoise(x, noise_level)
        options = {"variance_noise": draw_noise(shape, generator, device)} if ancestral else {}
        x = scheduler.step(predicted_clean, timestep, x, return_dict=False, **options)[0]
        x = paste_known(x, known, mask)
        if callback is not None:
            callback(index, x, predicted_clean)
    if final_level is not None:
        x = paste_known(denoise(final_level ** 0.5 * x, torch.full(shape[:1], final_level, device=device)), known, mask)
    return x
