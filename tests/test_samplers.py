"""Samplers driven by fake denoisers whose ideal output is known."""

import pytest
import torch

from palette.config import DiffusionConfig
from palette.samplers import SAMPLERS, make_scheduler, run_sampler

DIFFUSION = DiffusionConfig()


@pytest.mark.parametrize("name, steps", [("ddpm", 1000), ("ddpm", 50), ("ddim", 20), ("dpmpp", 20), ("unipc", 10)])
def test_an_oracle_denoiser_returns_the_target(name, steps):
    target = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scheduler = make_scheduler(name, DIFFUSION, steps)
    seen_levels = []

    def oracle(noisy, noise_level):
        seen_levels.append(noise_level[0].item())
        return target

    result = run_sampler(oracle, scheduler, target.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(result, target, atol=1e-3)
    assert len(seen_levels) == steps
    # Trailing spacing: the first call is at the noisiest level of the 1000-step schedule.
    assert seen_levels[0] == pytest.approx(scheduler.alphas_cumprod[-1].item(), rel=1e-5)
    assert seen_levels[0] < 1e-18


@pytest.mark.parametrize("name", SAMPLERS)
def test_two_point_data_is_sampled_with_the_right_modes_and_weights(name):
    """Data is +a or -a with probability 1/2 each, so E[x0 | x_t] = a tanh(sqrt(g) <x_t, a> / (1 - g))."""
    direction = torch.linspace(-0.8, 0.8, 12).view(1, 3, 2, 2)

    def ideal(noisy, noise_level):
        gamma = noise_level.view(-1, 1, 1, 1).double()
        projection = (noisy.double() * direction).sum(dim=(1, 2, 3), keepdim=True)
        return (direction * torch.tanh(gamma.sqrt() * projection / (1 - gamma))).float()

    scheduler = make_scheduler(name, DIFFUSION, 1000 if name == "ddpm" else 25)
    samples = run_sampler(ideal, scheduler, (400, 3, 2, 2), generator=torch.Generator().manual_seed(0))
    distance_plus = (samples - direction).flatten(1).norm(dim=1)
    distance_minus = (samples + direction).flatten(1).norm(dim=1)
    nearest = torch.minimum(distance_plus, distance_minus)
    # Few-step deterministic samplers may leave a sample that started on the boundary between the modes.
    assert (nearest < 0.05).float().mean().item() >= (1.0 if name == "ddpm" else 0.97)
    share_plus = (distance_plus < distance_minus).float().mean().item()
    assert 0.4 < share_plus < 0.6


def test_known_pixels_are_pasted_at_every_step():
    known = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1
    scheduler = make_scheduler("ddpm", DIFFUSION, 30)
    checked = []

    def callback(index, x, predicted):
        assert torch.equal(x[..., :4], known[..., :4])
        checked.append(index)

    result = run_sampler(lambda x, g: torch.zeros_like(x), scheduler, known.shape, known=known, mask=mask,
                         generator=torch.Generator().manual_seed(0), callback=callback)
    assert len(checked) == 30
    assert torch.equal(result[..., :4], known[..., :4])
    assert torch.allclose(result[..., 4:], torch.zeros(1, 3, 8, 4), atol=1e-3)  # the denoiser's answer


def test_ancestral_sampling_depends_on_the_seed_and_only_on_it():
    scheduler = lambda: make_scheduler("ddpm", DIFFUSION, 20)  # noqa: E731
    denoise = lambda x, g: 0.5 * x.clamp(-1, 1)  # noqa: E731
    a = run_sampler(denoise, scheduler(), (1, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    b = run_sampler(denoise, scheduler(), (1, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    c = run_sampler(denoise, scheduler(), (1, 3, 4, 4), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="euler.*ddpm"):
        make_scheduler("euler", DIFFUSION, 10)
