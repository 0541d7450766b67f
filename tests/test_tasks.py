"""Tasks: registry, golden conditions, noise fill, JPEG statistics and the user-input round trip."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
import torch
from PIL import Image

from palette.imageio import load_image, pil_to_tensor
from palette.masks import centre_box_mask, load_mask, save_mask, uncropping_mask
from palette.jpeg import jpeg_roundtrip, low_pass, sample_jpeg_quality
from palette.tasks import TASKS, Degraded, get_task, inpaint_fill, luma, source_estimate


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def random_image(seed: int, height: int = 32, width: int = 48) -> torch.Tensor:
    """An 8-bit-exact image [3, H, W] in [-1, 1]: a colour gradient plus texture."""
    generator = rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs / width, ys / height, (xs + ys) / (height + width)], axis=-1) * 200
    pixels = np.clip(base + generator.integers(0, 56, (height, width, 3)), 0, 255).astype(np.uint8)
    return pil_to_tensor(Image.fromarray(pixels))


def test_the_registry_is_the_one_list_of_tasks():
    from palette.cli import build_parser
    from palette.config import ConfigError, config_from_dict

    assert set(TASKS) == {"colorization", "inpainting", "uncropping", "jpeg"}
    # The CLI's choices and the config check come from the registry: a task added there appears in both.
    sample = build_parser()._subparsers._group_actions[0].choices["sample"]
    assert next(a for a in sample._actions if a.dest == "task").choices == list(TASKS)
    with pytest.raises(ConfigError, match="expected some of colorization, inpainting, uncropping, jpeg"):
        config_from_dict({"data": {"tasks": {"superres": 1}}})
    for name in TASKS:
        assert get_task(name).name == name
    known_region = {name for name in TASKS if TASKS[name].has_known_region}
    assert known_region == {"inpainting", "uncropping"}


def test_unknown_task_and_options_are_errors_that_name_them():
    with pytest.raises(ValueError, match="'superres'.*colorization"):
        get_task("superres")
    with pytest.raises(ValueError, match="'quality'"):
        get_task("colorization", quality=10)
    with pytest.raises(ValueError, match="'blob'"):
        get_task("inpainting", mask_kind="blob")
    with pytest.raises(ValueError, match="'centre'.*frame"):
        get_task("uncropping", side="centre")
    with pytest.raises(ValueError, match="quality"):
        get_task("jpeg", quality=0)


def test_colorization_condition_is_bt601_luma_on_three_channels():
    image = torch.tensor([[1.0, -1.0, -1.0, 1.0], [-1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, 1.0, 1.0]])[:, None, :]
    degraded = get_task("colorization").degrade(image, rng(0))
    # Pure red, green, blue and white: 2 * weight - 1 in [-1, 1].
    expected = torch.tensor([2 * 0.299 - 1, 2 * 0.587 - 1, 2 * 0.114 - 1, 1.0])
    for channel in range(3):
        assert torch.allclose(degraded.condition[channel, 0], expected, atol=1e-6)
    assert degraded.condition[0, 0, 0].item() == pytest.approx(-0.402, abs=1e-6)
    assert torch.equal(degraded.mask, torch.ones(1, 1, 4))


def test_colorization_from_a_gray_or_rgb_photo_takes_its_luma():
    task = get_task("colorization")
    image = random_image(1)
    gray = luma(image)
    from_gray = task.condition_from_input(gray, None, rng(0))
    from_rgb = task.condition_from_input(image, None, rng(0))
    assert torch.equal(from_gray.condition, gray.repeat(3, 1, 1))
    assert torch.equal(from_rgb.condition, task.degrade(image, rng(0)).condition)
    with pytest.raises(ValueError, match="no mask"):
        task.condition_from_input(image, centre_box_mask(32, 48), rng(0))


def test_inpainting_keeps_known_pixels_and_fills_the_hole_with_unit_gaussian_noise():
    image = random_image(2, 64, 64)
    degraded = get_task("inpainting", mask_kind="centre").degrade(image, rng(0))
    assert torch.equal(degraded.mask, centre_box_mask(64, 64))
    hole = degraded.mask.expand(3, -1, -1) > 0.5
    assert torch.equal(degraded.condition[~hole], image[~hole])
    noise = degraded.condition[hole]
    assert noise.numel() == 3 * 32 * 32
    assert abs(noise.mean().item()) < 0.1
    assert abs(noise.std().item() - 1) < 0.05
    assert noise.abs().max() > 1  # N(0, 1), deliberately not clipped to [-1, 1]


def test_inpainting_from_input_needs_a_matching_mask():
    task = get_task("inpainting")
    image = random_image(3)
    with pytest.raises(ValueError, match="inpainting needs a mask"):
        task.condition_from_input(image, None, rng(0))
    with pytest.raises(ValueError, match="mask shape"):
        task.condition_from_input(image, centre_box_mask(32, 32), rng(0))
    with pytest.raises(ValueError, match="inpainting mask covers the whole image"):
        task.condition_from_input(image, torch.ones(1, 32, 48), rng(0))


def test_colorization_keeps_the_given_luma_and_other_tasks_keep_images_as_they_are():
    image, given = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8) * 2 - 1
    kept = get_task("colorization").keep_input(image, given.repeat(1, 3, 1, 1))
    assert torch.allclose(luma(kept), given, atol=1e-6)
    assert kept.abs().max() <= 1 + 1e-6
    # Chroma keeps its direction; it is untouched where the result is in gamut, shortened where not.
    chroma, wanted = kept - luma(kept), image - luma(image)
    ratio = (chroma * wanted).sum(dim=1) / wanted.square().sum(dim=1)
    assert torch.allclose(chroma, ratio[:, None] * wanted, atol=1e-5)
    assert 0 <= ratio.min() and ratio.max() <= 1 + 1e-5
    in_gamut = ((given + wanted).abs() <= 1).all(dim=1)
    assert in_gamut.any() and torch.allclose(ratio[in_gamut], torch.ones(()), atol=1e-5)
    for name in ("inpainting", "uncropping"):
        assert get_task(name).keep_input(image, given) is image


def test_jpeg_restoration_keeps_the_inputs_low_frequencies_and_the_models_detail():
    task = get_task("jpeg")
    given = task.degrade(random_image(6, 64, 64), rng(0)).condition
    # A colour shift, the failure of a model that mistakes the task, is removed (a constant blurs to itself) ...
    shift = torch.tensor([0.3, -0.2, 0.1]).view(3, 1, 1)
    assert torch.allclose(task.keep_input(given + shift, given), given, atol=1e-5)
    # ... while fine detail the model adds (a 2-pixel checkerboard) comes through.
    rows, columns = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    detail = 0.1 * ((rows + columns) % 2 * 2 - 1).float().expand(3, -1, -1)
    assert torch.allclose(task.keep_input(given + detail, given), given + detail, atol=1e-3)
    assert torch.allclose(low_pass(torch.full((1, 3, 16, 16), 0.7)), torch.full((1, 3, 16, 16), 0.7))


def test_source_estimate_is_the_condition_without_a_known_region():
    degraded = get_task("jpeg", quality=10).degrade(random_image(4), rng(0))
    estimate = source_estimate(degraded.condition[None], degraded.mask[None])
    assert torch.equal(estimate[0], degraded.condition)


def test_source_estimate_keeps_known_pixels_and_fills_holes_from_them():
    image = random_image(5, 32, 32)
    degraded = get_task("uncropping", side="right").degrade(image, rng(0))
    estimate = source_estimate(degraded.condition[None], degraded.mask[None])[0]
    known = degraded.mask.expand(3, -1, -1) < 0.5
    assert torch.equal(estimate[known], image[known])  # exact, not just close
    # The fill draws only on known pixels (not the hole's noise) and stays in their range.
    assert estimate[~known].amin() >= image[known].amin() and estimate[~known].amax() <= image[known].amax()
    # A constant known region fills the hole with that constant (to 8 bits, OpenCV's precision); columns 0 and
    # 31 known -> a monotonic bridge between them.
    constant = torch.full((1, 3, 9, 13), 0.25)
    mask = torch.zeros(1, 1, 9, 13)
    mask[..., 2:7, 3:11] = 1
    filled = source_estimate(torch.where(mask > 0, torch.randn(1, 3, 9, 13), constant), mask)
    assert torch.allclose(filled, constant, atol=1 / 127.5)
    ramp = torch.zeros(1, 3, 32, 32)
    ramp[..., :, 31] = 1.0
    mask = torch.ones(1, 1, 32, 32)
    mask[..., :, 0], mask[..., :, 31] = 0, 0
    bridge = source_estimate(ramp, mask)[0, 0, 16]
    assert bridge[0] == 0 and bridge[31] == 1 and bool((bridge[1:] >= bridge[:-1] - 1e-6).all())


def test_uncropping_masks_the_requested_side():
    image = random_image(4)
    degraded = get_task("uncropping", side="left").degrade(image, rng(0))
    assert torch.equal(degraded.mask, uncropping_mask(32, 48, rng(0), "left"))
    assert torch.equal(degraded.condition[:, :, 24:], image[:, :, 24:])
    assert not torch.equal(degraded.condition[:, :, :24], image[:, :, :24])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_gives_bit_identical_output(name):
    task = get_task(name)
    image = random_image(5)
    first, second = task.degrade(image, rng(9)), task.degrade(image, rng(9))
    assert torch.equal(first.condition, second.condition) and torch.equal(first.mask, second.mask)
    assert first.condition.shape == (3, 32, 48) and first.mask.shape == (1, 32, 48)
    assert first.mask.dtype == torch.float32


@pytest.mark.parametrize("name", ["inpainting", "uncropping", "jpeg"])
def test_different_seeds_give_different_conditions(name):
    task = get_task(name)
    image = random_image(6)
    conditions = [task.degrade(image, rng(seed)).condition for seed in range(8)]
    assert any(not torch.equal(conditions[0], other) for other in conditions[1:])


def test_jpeg_quality_follows_the_truncated_exponential():
    generator = rng(0)
    draws = np.array([sample_jpeg_quality(generator) for _ in range(20_000)])
    weights = {quality: math.exp(-quality / 10) for quality in range(5, 31)}
    total = sum(weights.values())
    analytic_mean = sum(quality * weight for quality, weight in weights.items()) / total
    assert draws.min() >= 5 and draws.max() <= 30
    assert abs(draws.mean() - analytic_mean) < 0.2
    assert abs((draws == 5).mean() - weights[5] / total) < 0.01
    assert abs((draws == 15).mean() - weights[15] / total) < 0.01


def test_jpeg_roundtrip_degrades_more_at_lower_quality():
    image = random_image(7, 64, 64)
    errors = [(jpeg_roundtrip(image, quality) - image).abs().mean().item() for quality in (5, 30, 95)]
    assert errors[0] > errors[1] > errors[2] > 0
    assert jpeg_roundtrip(image, 30).shape == image.shape


def test_jpeg_task_uses_the_fixed_or_sampled_quality():
    image = random_image(8)
    fixed = get_task("jpeg", quality=12).degrade(image, rng(0))
    assert torch.equal(fixed.condition, jpeg_roundtrip(image, 12))
    assert torch.equal(fixed.mask, torch.ones(1, 32, 48))
    sampled = get_task("jpeg").degrade(image, rng(4))
    assert torch.equal(sampled.condition, jpeg_roundtrip(image, sample_jpeg_quality(rng(4))))
    given = get_task("jpeg").condition_from_input(image, None, rng(0))
    assert torch.equal(given.condition, image)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_simulated_user_input_round_trips_to_the_training_condition(tmp_path, name):
    task = get_task(name)
    image = random_image(10)
    for seed in range(4):
        generator = rng(seed)
        user_input = task.simulate_input(image, generator)
        path = tmp_path / f"input{seed}{user_input.suffix}"
        path.write_bytes(user_input.data)
        mask = None
        if user_input.mask is not None:
            mask_path = tmp_path / f"mask{seed}.png"
            save_mask(user_input.mask, mask_path)
            mask = load_mask(mask_path, 32, 48)
        from_input = task.condition_from_input(load_image(path), mask, generator)
        expected = task.degrade(image, rng(seed))
        assert isinstance(from_input, Degraded)
        assert torch.equal(from_input.mask, expected.mask)
        # Colorization differs only by the 8-bit rounding of the gray file.
        assert torch.allclose(from_input.condition, expected.condition, atol=0.5 / 127.5 + 1e-6, rtol=0)
        if name != "colorization":
            assert torch.equal(from_input.condition, expected.condition)


@pytest.mark.parametrize("method", ["navier_stokes", "telea"])
def test_the_opencv_fill_of_a_one_row_image_is_the_same_at_every_call(method):
    image = torch.linspace(-1, 1, 120).reshape(3, 1, 40)
    mask = torch.zeros(1, 1, 40)
    mask[..., :20] = 1
    fills = [inpaint_fill(image, mask, method) for _ in range(20)]  # OpenCV alone gave two fills, in turn
    assert all(torch.equal(fill, fills[0]) for fill in fills) and fills[0].shape == image.shape
    assert torch.allclose(fills[0][..., 20:], image[..., 20:], atol=1 / 127.5)  # the known pixels, in 8 bits
    assert fills[0][..., :20].std() < image.std()  # the hole filled from its one known side
