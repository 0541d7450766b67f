import math

import pytest
import torch

from palette.diffusion import (linear_betas, log_snr, masked_loss, noise_level_to_timestep, noise_levels,
                               q_sample, rebalance_weight, sample_noise_level, training_log_snr_range, v_target,
                               x0_from_eps, x0_from_v)


def test_training_schedule_golden_values():
    # Palette App. A / SR3: linear beta 1e-6 .. 0.01 over 2000 steps.
    levels = noise_levels(linear_betas(2000, 1e-6, 0.01))
    assert levels.shape == (2001,)
    assert levels[0] == 1.0
    assert levels[1].item() == pytest.approx(0.999999, abs=1e-15)
    assert levels[1000].item() == pytest.approx(0.08178379205169121, rel=1e-12)
    assert levels[2000].item() == pytest.approx(4.3859782361332086e-05, rel=1e-10)


def test_inference_schedule_golden_values():
    # Palette App. A: 1000 steps, linear beta 1e-4 .. 0.09.
    levels = noise_levels(linear_betas(1000, 1e-4, 0.09))
    assert levels[1].item() == pytest.approx(0.9999, abs=1e-15)
    assert levels[2].item() == pytest.approx(0.9999 * (1 - (1e-4 + (0.09 - 1e-4) / 999)), rel=1e-12)
    assert levels[100].item() == pytest.approx(0.6332871832383539, rel=1e-10)
    assert levels[1000].item() == pytest.approx(6.604377303535896e-21, rel=1e-8)


def test_noise_level_sampling_is_uniform_in_step_and_within_its_interval():
    levels = noise_levels(linear_betas(50, 1e-3, 0.2))
    drawn = sample_noise_level(levels, 20000, torch.Generator().manual_seed(0)).double()
    assert (drawn <= 1.0).all() and (drawn >= levels[-1].float().double()).all()
    # Which interval (gamma_t, gamma_{t-1}] each draw fell into: every step equally often.
    steps = torch.searchsorted(-levels, -drawn, right=False).clamp(1, 50)
    counts = torch.bincount(steps, minlength=51)[1:].double()
    assert counts.min() > 0.75 * 400 and counts.max() < 1.25 * 400
    # Within one interval the draw is uniform: its mean sits at the interval's midpoint.
    first = drawn[steps == 1]
    assert first.mean().item() == pytest.approx((1 + levels[1].item()) / 2, abs=2e-4)


def test_noise_level_sampling_is_reproducible():
    levels = noise_levels(linear_betas(2000, 1e-6, 0.01))
    a = sample_noise_level(levels, 8, torch.Generator().manual_seed(3))
    b = sample_noise_level(levels, 8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_parameterisations_round_trip():
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 3, 8, 8, generator=generator) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=generator)
    gamma = torch.tensor([0.999, 0.5, 0.1, 1e-3])
    noisy = q_sample(clean, gamma, noise)
    assert torch.allclose(x0_from_eps(noisy, gamma, noise), clean, atol=1e-4)
    assert torch.allclose(x0_from_v(noisy, gamma, v_target(clean, gamma, noise)), clean, atol=1e-5)
    # q_sample keeps unit variance for unit-variance inputs: sqrt(g)^2 + sqrt(1-g)^2 = 1.
    big = q_sample(torch.randn(200000), torch.tensor([0.3]), torch.randn(200000))
    assert big.std().item() == pytest.approx(1.0, abs=0.01)


def test_timestep_map_spreads_the_training_range_over_0_to_1000():
    levels = noise_levels(linear_betas(2000, 1e-6, 0.01))
    low, high = training_log_snr_range(levels)
    assert low == pytest.approx(math.log(4.3859782361332086e-05 / (1 - 4.3859782361332086e-05)), rel=1e-6)
    assert high == pytest.approx(math.log(0.999999 / 1e-6), rel=1e-6)
    t = noise_level_to_timestep(levels[1:].float(), (low, high))
    # float32 gamma near 1 carries ~6e-8 absolute error, i.e. ~1 unit of the 0..1000 scale at the clean end.
    assert t[0].item() == pytest.approx(0.0, abs=1.0) and t[-1].item() == pytest.approx(1000.0, abs=0.01)
    assert (t[1:] >= t[:-1]).all()  # noisier -> larger
    # Neighbouring training steps stay distinguishable (> 0.05 apart) all along the schedule.
    assert (t[1:] - t[:-1]).min().item() > 0.05
    # Levels noisier than training (the inference schedule's tail) are clipped, not extrapolated.
    assert noise_level_to_timestep(torch.tensor([1e-20]), (low, high)).item() == pytest.approx(1000.0)


def test_log_snr_golden():
    assert log_snr(torch.tensor([0.5])).item() == pytest.approx(0.0, abs=1e-7)
    assert log_snr(torch.tensor([0.8])).item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_masked_loss_counts_only_the_region_to_generate():
    target = torch.zeros(2, 3, 4, 4)
    prediction = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1  # top half is generated
    prediction[:, :, :2] = 2.0  # error 2 inside the mask
    prediction[:, :, 2:] = 100.0  # huge error in the known region must not count
    l2 = masked_loss(prediction, target, mask, "l2")
    l1 = masked_loss(prediction, target, mask, "l1")
    assert l2.shape == (2,)
    assert torch.allclose(l2, torch.full((2,), 4.0)) and torch.allclose(l1, torch.full((2,), 2.0))
    # Full masks give the plain mean.
    full = masked_loss(prediction, target, torch.ones(2, 1, 4, 4), "l2")
    assert torch.allclose(full, torch.full((2,), (4.0 + 10000.0) / 2))


def test_a_pixel_weight_scales_each_error_but_not_the_mean_over_the_mask():
    prediction = torch.zeros(1, 3, 2, 2)
    target = torch.ones(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])  # three pixels generated
    weight = torch.tensor([[[[3.0, 1.0], [1.0, 50.0]]]])
    # Errors 1 weighted 3, 1, 1 over three pixels; the known pixel's weight does not count.
    assert masked_loss(prediction, target, mask, "l2", weight).item() == pytest.approx(5 / 3)


def test_rebalancing_moves_the_best_prediction_to_the_weighted_mean():
    # A gray pixel (residual 0) and a saturated one (RMS 1 = 2 RESIDUAL_RMS) that the input cannot tell apart.
    answers = torch.stack([torch.zeros(3), torch.ones(3)]).view(2, 3, 1, 1)
    weight = rebalance_weight(answers, torch.tensor([0.5, 0.5]))
    assert weight.flatten().tolist() == pytest.approx([1.0, 2.0])
    # One prediction for both: plain L2 is best at the mean 0.5, the rebalanced at (0 * 1 + 1 * 2) / 3.
    for strength, best in ((0.0, 0.5), (0.5, 2 / 3)):
        guess = torch.full((1, 3, 1, 1), best, requires_grad=True)
        weights = rebalance_weight(answers, torch.tensor([strength, strength]))
        masked_loss(guess.expand(2, 3, 1, 1), answers, torch.ones(2, 1, 1, 1), "l2", weights).sum().backward()
        assert guess.grad.abs().max().item() < 1e-6


def test_masked_loss_rejects_an_unknown_kind():
    ones = torch.ones(1, 3, 2, 2)
    with pytest.raises(ValueError, match="'huber'.*'l2', 'l1'"):
        masked_loss(ones, ones, ones[:, :1], "huber")
