"""Samplers driven by fake denoisers whose ideal output is known."""

import pytest
import torch

from palette.config import MAX_STEPS, DiffusionConfig
from palette.diffusion import noise_level_to_timestep, training_log_snr_range, training_noise_levels
from palette.samplers import SAMPLERS, check_sampling, make_scheduler, run_sampler

DIFFUSION = DiffusionConfig()
TRAINED = training_noise_levels(DIFFUSION)


@pytest.mark.parametrize("name, steps", [("ddpm", 1000), ("ddpm", 50), ("ddim", 20), ("dpmpp", 20), ("unipc", 10),
                                         ("ddpm", 61), ("dpmpp", 61)])
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
    # Trailing spacing: the first call is at the noisiest level of the schedule.
    assert seen_levels[0] == pytest.approx(scheduler.alphas_cumprod[-1].item(), rel=1e-5)
    if name == "ddpm":
        assert seen_levels[0] < 1e-18  # the paper's inference schedule, kept as the reference
    else:
        # Every call sees a level the network was trained on, starting at the noisiest, and no two calls
        # collapse onto one network input (the clipping that wasted half the calls before).
        assert seen_levels[0] == pytest.approx(TRAINED[-1].item(), rel=1e-5)
        timesteps = noise_level_to_timestep(torch.tensor(seen_levels), training_log_snr_range(TRAINED))
        assert len(set(timesteps.round(decimals=3).tolist())) == steps
        assert min(seen_levels) >= TRAINED[-1].item() * (1 - 1e-5)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [61, 103, 227])
def test_every_step_count_gives_that_many_steps_down_to_a_real_level(name, steps):
    # A float-stride schedule (np.arange) gave these counts one more index, -1: the noisiest level wrapped round.
    timesteps = make_scheduler(name, DIFFUSION, steps).timesteps
    assert len(timesteps) == steps and int(timesteps.min()) >= 0 and bool((timesteps.diff() < 0).all())


@pytest.mark.parametrize("steps", [-3, 0, MAX_STEPS + 1, 5000, 2.5, True])
def test_bad_step_counts_are_refused_with_the_flag_and_range(steps):
    with pytest.raises(ValueError, match=rf"--steps must be an integer from 1 to {MAX_STEPS}"):
        check_sampling("dpmpp", steps)
    with pytest.raises(ValueError, match="--steps"):
        make_scheduler("ddpm", DIFFUSION, steps)


def test_the_first_sample_is_drawn_at_the_first_level():
    scheduler = make_scheduler("dpmpp", DIFFUSION, 10)
    first = []
    run_sampler(lambda x, g: first.append(x) or torch.zeros_like(x), scheduler, (64, 3, 16, 16),
                generator=torch.Generator().manual_seed(0))
    gamma = TRAINED[-1].item()
    assert first[0].std().item() == pytest.approx((1 - gamma) ** 0.5, rel=0.02)


@pytest.mark.parametrize("name", ["ddpm", "dpmpp"])
def test_a_sample_with_its_own_generator_does_not_depend_on_its_batch(name):
    denoise = lambda x, g: 0.5 * x.clamp(-1, 1)  # noqa: E731
    steps = 12
    batch = run_sampler(denoise, make_scheduler(name, DIFFUSION, steps), (3, 3, 4, 4),
                        generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    alone = run_sampler(denoise, make_scheduler(name, DIFFUSION, steps), (1, 3, 4, 4),
                        generator=[torch.Generator().manual_seed(8)])
    assert torch.equal(batch[1:2], alone)
    assert not torch.equal(batch[0], batch[1])


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


def test_the_final_denoising_step_is_the_ideal_denoiser_applied_once_more_to_the_sample():
    # For data ~ N(0, s^2) per pixel the ideal x0 is sqrt(g) s^2 / (g s^2 + 1 - g) x_t; taking the finished sample x
    # as x_t = sqrt(g) x, one more step multiplies it by g s^2 / (g s^2 + 1 - g), and known pixels stay as given.
    variance, level = 0.25, TRAINED[50].item()
    known = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1
    calls = []

    def ideal(noisy, noise_level):
        calls.append(noise_level)
        return noise_level.sqrt().view(-1, 1, 1, 1) * variance / (noise_level * variance + 1 - noise_level).view(
            -1, 1, 1, 1) * noisy

    def sample(final_level):
        return run_sampler(ideal, make_scheduler("dpmpp", DIFFUSION, 5), known.shape, known=known, mask=mask,
                           generator=torch.Generator().manual_seed(0), start=known, start_step=3,
                           final_level=final_level)

    plain, polished = sample(None), sample(level)
    assert len(calls) == 2 + 3 and torch.equal(calls[-1], torch.full((1,), level))
    factor = level * variance / (level * variance + 1 - level)
    torch.testing.assert_close(polished[..., 4:], factor * plain[..., 4:])
    assert torch.equal(polished[..., :4], known[..., :4])
    assert (plain[..., 4:] - polished[..., 4:]).abs().amax() > 1e-3


def test_ancestral_sampling_depends_on_the_seed_and_only_on_it():
    scheduler = lambda: make_scheduler("ddpm", DIFFUSION, 20)  # noqa: E731
    denoise = lambda x, g: 0.5 * x.clamp(-1, 1)  # noqa: E731
    a = run_sampler(denoise, scheduler(), (1, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    b = run_sampler(denoise, scheduler(), (1, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    c = run_sampler(denoise, scheduler(), (1, 3, 4, 4), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="--sampler.*euler.*ddpm"):
        make_scheduler("euler", DIFFUSION, 10)


@pytest.mark.parametrize("steps, start_step", [(1, 0), (2, 0), (5, 0), (20, 0), (20, 8), (50, 0)])
def test_our_dpm_solver_matches_diffusers_step_by_step(steps, start_step):
    from diffusers import DPMSolverMultistepScheduler

    from palette.samplers import trained_betas

    reference = DPMSolverMultistepScheduler(
        num_train_timesteps=DIFFUSION.train_steps, trained_betas=trained_betas(DIFFUSION), prediction_type="sample",
        timestep_spacing="trailing", algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
        final_sigmas_type="zero")
    reference.set_timesteps(steps)
    ours = make_scheduler("dpmpp", DIFFUSION, steps)
    assert torch.equal(ours.timesteps, reference.timesteps)
    torch.testing.assert_close(ours.alphas_cumprod, reference.alphas_cumprod, rtol=1e-6, atol=0)
    start = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    denoise = lambda x, g: torch.tanh(1.5 * x + 0.2) * (0.5 + g.view(-1, 1, 1, 1))  # noqa: E731  nonlinear in x and g
    trajectories = []
    for scheduler in (reference, ours):
        steps_seen = []
        trajectories.append(run_sampler(denoise, scheduler, start.shape, generator=torch.Generator().manual_seed(0),
                                        start=start if start_step else None, start_step=start_step,
                                        callback=lambda index, x, clean: steps_seen.append(x.clone())))
        trajectories.append(torch.stack(steps_seen))
    assert trajectories[0].abs().mean() > 0.05
    torch.testing.assert_close(trajectories[2], trajectories[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trajectories[3], trajectories[1], rtol=1e-5, atol=1e-5)
