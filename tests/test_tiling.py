"""Any-size restoration: tiles, blending, windows and coarse-to-fine, with fake networks whose output is known."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from palette.config import config_from_dict
from palette.inference import Model, derive_seed, extend_image, restore, restore_image
from palette.samplers import make_scheduler, run_sampler
from palette.tasks import TASKS, get_task, luma
from palette.tiling import LowResolution, TiledNetwork, TileGrid, blend_ramp, tile_origins
from palette.windows import Box, FillWindows, coarsest_scale, hole_windows, outward_windows

from conftest import tiny_values


def _config():
    values = tiny_values(Path("unused"))
    values["diffusion"] = {"objective": "v", "residual": True}  # as the shipped model
    return config_from_dict(values)


class SmoothNet(torch.nn.Module):
    """A smooth pointwise function of the network's inputs: tiling cannot change it."""

    def forward(self, noisy, noise_level, condition):
        return 0.5 * torch.tanh(noisy + condition) * noise_level.view(-1, 1, 1, 1)


class VignetteNet(torch.nn.Module):
    """A smooth function of its input that, like any convolution with zero padding, darkens a tile's borders."""

    def forward(self, noisy, noise_level, condition):
        return F.avg_pool2d(noisy + condition + 1, 9, stride=1, padding=4, count_include_pad=True)


def _photo(height: int, width: int) -> torch.Tensor:
    rows = torch.linspace(0, 6, height)[:, None]
    cols = torch.linspace(0, 9, width)[None, :]
    return torch.stack([torch.sin(rows + cols), torch.cos(rows - 0.5 * cols), torch.sin(0.7 * rows * 0 + cols)]) * 0.8


def test_tile_origins_cover_the_line_on_the_alignment_grid():
    origins = tile_origins(1008, 128, 32, align=16)
    assert origins == [0, 96, 192, 288, 384, 480, 576, 672, 768, 864, 880]
    assert all(origin % 16 == 0 for origin in origins)
    assert all(b - a <= 128 - 32 for a, b in zip(origins, origins[1:]))  # every overlap is at least 32 px
    assert origins[-1] + 128 == 1008
    assert tile_origins(50, 128, 32) == [0]


def test_blend_ramps_of_two_neighbours_sum_to_one():
    left, right = blend_ramp(64, 16, rise=False, fall=True), blend_ramp(64, 16, rise=True, fall=False)
    assert torch.allclose(left[-16:] + right[:16], torch.ones(16), atol=1e-6)
    assert torch.equal(left[:48], torch.ones(48)) and bool((left > 0).all())
    assert left[-1].item() == pytest.approx(0.0024, abs=1e-4)  # sin^2(pi/2 * 0.5/16): the cut edge barely counts


def test_a_pointwise_network_gives_the_same_output_tiled_at_odd_sizes():
    net = SmoothNet()
    noisy, condition = torch.randn(2, 3, 67, 45), torch.randn(2, 3, 67, 45)
    levels = torch.tensor([0.3, 0.9])
    tiled = TiledNetwork(net, TileGrid(32, 8, align=8), multiple=4, batch_size=3)
    assert len(tiled.layout(2, 67, 45)[2]) == 2 * 3 * 2  # padded to 72 x 48: 3 rows, 2 columns of tiles
    # Tiles shrink to the shortest side that needs no more of them: 160 px takes two 96 px tiles, not 128.
    assert TiledNetwork(net, TileGrid(128, 32), multiple=8).layout(1, 160, 300)[:2] == ((160, 304), (96, 128))
    assert torch.allclose(tiled(noisy, levels, condition), net(noisy, levels, condition), atol=1e-6)
    # Tiles with no active pixel are skipped; what the run tiles cover is still exact.
    active = torch.zeros(1, 1, 67, 45, dtype=torch.bool)
    active[..., 5, 5] = True
    partial = TiledNetwork(net, TileGrid(32, 8, align=8), multiple=4, active=active)(noisy, levels, condition)
    assert torch.allclose(partial[..., :24, :24], net(noisy, levels, condition)[..., :24, :24], atol=1e-6)
    assert torch.equal(partial[..., 40:, :], torch.zeros_like(partial[..., 40:, :]))


def _mask(name: str, height: int, width: int) -> torch.Tensor | None:
    if not TASKS[name].has_known_region:
        return None
    mask = torch.zeros(1, height, width)
    if name == "uncropping":
        mask[..., width - width // 4:] = 1
    else:
        mask[..., height // 3:height // 2, width // 3:width // 2] = 1
    return mask


@pytest.mark.parametrize("size", [(667, 1001), (50, 4000)])
@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_returns_the_input_size_with_known_pixels_and_luma_exact(name, size):
    task = get_task(name)
    image = _photo(*size)
    if name == "colorization":
        image = luma(image).repeat(3, 1, 1)
    mask = _mask(name, *size)
    model = Model(SmoothNet(), _config(), torch.device("cpu"))
    restored = restore_image(model, task, image, mask, sampler="dpmpp", steps=2, progress=False)
    assert restored.shape == image.shape
    assert restored.abs().max() <= 1
    if mask is not None:
        assert torch.equal(restored[mask.expand(3, -1, -1) < 0.5], image[mask.expand(3, -1, -1) < 0.5])
    if name == "colorization":
        assert torch.allclose(luma(restored), luma(image), atol=1e-5)
        assert (restored - luma(restored)).abs().mean() > 1e-3  # and some colour was made


def test_jpeg_that_fits_one_tile_is_restored_as_without_tiles():
    config = _config()
    torch.manual_seed(0)
    from palette.network import PaletteNet

    net = PaletteNet.from_config(config).eval()
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    model, task = Model(net, config, torch.device("cpu")), get_task("jpeg")
    image = _photo(48, 40)
    tiled = restore_image(model, task, image, steps=3, seed=5, progress=False)
    whole = restore(model, image[None], torch.ones(1, 1, 48, 40), steps=3, seed=[derive_seed(5, "tiles")], task=task)
    assert torch.allclose(tiled, whole[0], atol=1e-5)
    assert not torch.allclose(tiled, image, atol=1e-3)  # the network did something


def _boundary_gradient_ratio(overlap: int, band: int = 4) -> float:
    """Mean gradient of the column profile within `band` px of a tile's edge, over the mean elsewhere.

    A seam is a step shared by every row: the profile (the mean over rows) keeps it and averages the noise
    away. 256 rows and 60-odd edges put the ratio of two noise-only means within about 5% of 1.
    """
    model = Model(VignetteNet(), _config(), torch.device("cpu"))
    width = 2048
    restored = restore_image(model, get_task("jpeg"), torch.full((3, 256, width), 0.2), sampler="dpmpp", steps=3,
                             progress=False, tile=64, overlap=overlap)
    profile = restored.mean(dim=(0, 1))
    gradient = (profile[1:] - profile[:-1]).abs()  # between x and x + 1
    origins = tile_origins(width, 64, overlap, align=16)
    near = torch.zeros(width - 1, dtype=torch.bool)
    for edge in {origin for origin in origins[1:]} | {origin + 64 for origin in origins[:-1]}:
        near[edge - band:edge + band] = True
    inside = torch.zeros(width - 1, dtype=torch.bool)
    inside[2 * band:-2 * band] = True  # the image's own borders are not seams
    return (gradient[near & inside].mean() / gradient[~near & inside].mean()).item()


def test_blended_tiles_leave_no_seam_where_hard_cuts_do():
    assert _boundary_gradient_ratio(overlap=16) == pytest.approx(1.0, abs=0.1)
    assert _boundary_gradient_ratio(overlap=0) > 2  # the same network without blending shows every cut


class RecordingSampler:
    """A WindowSampler that fills what it is asked to generate with 0.5 and records each call."""

    def __init__(self):
        self.calls = []

    def sample(self, image, mask, grid, label, init=None, strength=1.0, on_estimate=None):
        self.calls.append((tuple(image.shape[1:]), strength, init is not None))
        return image if mask is None else torch.where(mask > 0.5, torch.full_like(image, 0.5), image)

    def finish(self, image, given):
        return image.clamp(-1, 1)


def test_a_large_hole_is_sampled_small_then_refined_up_to_full_size():
    image, mask = _photo(1000, 1000), torch.zeros(1, 1000, 1000)
    mask[:, 300:556, 400:656] = 1
    sampler, previews = RecordingSampler(), []
    restored = FillWindows("holes", reach=20, refine_strength=0.4).restore(sampler, image, mask, previews.append)
    # A 512 px window (the 256 px hole and a 128 px margin); its middle is 128 px from known pixels, so it is
    # first sampled at 20/128 of its size, then refined at 2x, 4x and full size with halving strength.
    assert sampler.calls == [((80, 80), 1.0, False), ((160, 160), 0.4, True), ((320, 320), 0.2, True),
                             ((512, 512), 0.1, True)]
    assert len(previews) == 1 and previews[0].shape == image.shape
    assert torch.equal(restored[:, mask[0] < 0.5], image[:, mask[0] < 0.5])
    assert torch.equal(restored[:, mask[0] > 0.5], torch.full_like(restored[:, mask[0] > 0.5], 0.5))


def test_close_holes_share_a_window_and_far_ones_do_not():
    unknown = torch.zeros(2000, 2000, dtype=torch.bool)
    unknown[100:110, 100:110] = unknown[150:160, 150:160] = unknown[1500:1510, 1500:1510] = True
    assert hole_windows(unknown, margin=128, context=0.5) == [Box(0, 0, 288, 288), Box(1372, 1372, 1638, 1638)]


def test_outward_windows_march_from_the_known_part_each_half_known():
    unknown = torch.ones(100, 300, dtype=torch.bool)
    unknown[:, :100] = False
    lefts = []
    for box in outward_windows(unknown):
        assert (box.bottom - box.top, box.right - box.left) == (100, 100)
        assert (~unknown[box.slices]).float().mean() >= 0.5
        lefts.append(box.left)
        unknown[box.slices] = False
    assert lefts == [48, 96, 144, 192, 200]


class ConstantWindowSampler(RecordingSampler):
    """Fills window k with its own value, -0.8 + 0.3 k, at every scale: each window boundary is a step of 0.3."""

    def sample(self, image, mask, grid, label, init=None, strength=1.0, on_estimate=None):
        value = -0.8 + 0.3 * int(label.split()[1])
        return torch.where(mask > 0.5, torch.full_like(image, value), image)


@pytest.mark.parametrize("feather", [0.125, 0.0])
def test_outward_windows_crossfade_into_earlier_ones(feather):
    image, mask = _photo(100, 300), torch.ones(1, 100, 300)
    mask[:, :, :100] = 0
    restored = FillWindows("outward", reach=32, feather=feather).restore(ConstantWindowSampler(), image, mask)
    assert torch.equal(restored[:, :, :100], image[:, :, :100])
    steps = (restored[:, :, 101:].diff(dim=2)).abs().amax(dim=(0, 1))  # within what the windows made
    if feather:  # 0.3 spread over a band of 12.5 px: no step above 0.3 / 12.5, and every window shows
        assert steps.max() <= 0.3 / 12.5 + 1e-5
        assert restored[0, 50, -1] == pytest.approx(-0.8 + 0.3 * 4)
    else:
        assert steps.max() == pytest.approx(0.3)


def test_colorization_samples_a_view_of_128_px_short_side():
    sampler = RecordingSampler()
    TASKS["colorization"].full_size.restore(sampler, luma(_photo(667, 1001)).repeat(3, 1, 1), None)
    assert sampler.calls == [((128, 192), 1.0, False)]
    LowResolution(short_side=128).restore(sampler, _photo(100, 50), None)  # a smaller image is not enlarged
    assert sampler.calls[-1] == ((100, 50), 1.0, False)


def test_sdedit_starts_from_the_given_image_at_a_lower_level():
    target = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scheduler = make_scheduler("dpmpp", _config().diffusion, 20)
    seen = []

    def oracle(noisy, noise_level):
        seen.append((noisy.clone(), noise_level[0].item()))
        return target

    result = run_sampler(oracle, scheduler, target.shape, start=target, start_step=15,
                         generator=torch.Generator().manual_seed(1))
    assert len(seen) == 5 and torch.allclose(result, target, atol=1e-4)
    gamma = scheduler.alphas_cumprod[int(scheduler.timesteps[15])].item()
    assert seen[0][1] == pytest.approx(gamma, rel=1e-5)
    # x_t = sqrt(gamma) start + sqrt(1 - gamma) eps
    noise = (seen[0][0] - gamma ** 0.5 * target) / (1 - gamma) ** 0.5
    assert noise.std().item() == pytest.approx(1.0, abs=0.25)


class NoDetailNet(torch.nn.Module):
    """The v that predicts a zero residual: a residual model that adds nothing to its offset."""

    def forward(self, noisy, noise_level, condition):
        gamma = noise_level.view(-1, 1, 1, 1)
        return noisy * (gamma / (1 - gamma)).sqrt()


def test_a_refinement_adds_the_residual_to_the_coarse_estimate_not_to_the_hole_fill():
    model = Model(NoDetailNet(), _config(), torch.device("cpu"))
    task = get_task("inpainting")
    image, mask = _photo(32, 32), torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    coarse = torch.full_like(image, 0.3)  # an upsampled coarse fill
    condition = task.condition_from_input(image, mask, np.random.default_rng(0)).condition
    refined = restore(model, condition[None], mask[None], steps=10, init=coarse[None], strength=0.3, task=task)[0]
    assert torch.allclose(refined, torch.where(mask > 0.5, coarse, image), atol=1e-5)
    filled = restore(model, condition[None], mask[None], steps=10, task=task)[0]  # no init: Navier-Stokes fill
    assert not torch.allclose(filled[:, 12:20, 12:20], coarse[:, 12:20, 12:20], atol=0.05)


def test_many_specks_merge_into_one_window_quickly():
    unknown = torch.zeros(1200, 1600, dtype=torch.bool)
    unknown[100:1100:25, 100:1500:25] = True  # 40 x 56 dust specks, each within reach of its neighbours
    assert hole_windows(unknown, margin=16, context=0.5) == [Box(84, 84, 1092, 1492)]


def test_bad_masks_are_refused_before_sampling():
    model = Model(SmoothNet(), _config(), torch.device("cpu"))
    image = _photo(40, 60)
    with pytest.raises(ValueError, match="needs a mask"):
        restore_image(model, get_task("inpainting"), image, None, progress=False)
    with pytest.raises(ValueError, match="covers the whole image"):
        restore_image(model, get_task("uncropping"), image, torch.ones(1, 40, 60), progress=False)
    with pytest.raises(ValueError, match="does not match"):
        restore_image(model, get_task("inpainting"), image, torch.zeros(1, 40, 61), progress=False)
    with pytest.raises(ValueError, match="takes no mask"):
        restore_image(model, get_task("jpeg"), image, torch.zeros(1, 40, 60), progress=False)


def test_a_colour_photo_is_colorized_as_its_gray_version_at_any_size():
    model = Model(SmoothNet(), _config(), torch.device("cpu"))
    for size in [(96, 128), (300, 200)]:  # within the 128 px view, and upsampled onto the full image
        colour = _photo(*size)
        from_colour = restore_image(model, get_task("colorization"), colour, steps=2, progress=False)
        from_gray = restore_image(model, get_task("colorization"), luma(colour).repeat(3, 1, 1), steps=2,
                                  progress=False)
        assert torch.allclose(from_colour, from_gray, atol=1e-5)  # none of the photo's own colour comes through


def test_a_known_strip_thinner_than_the_coarse_view_still_anchors_the_fill():
    model = Model(SmoothNet(), _config(), torch.device("cpu"))
    image, mask = _photo(200, 200), torch.ones(1, 200, 200)
    mask[:, :4] = 0  # at 20/196 of its size the 4 known rows would be less than one pixel
    assert coarsest_scale(mask[0] > 0.5, reach=20) == pytest.approx(20 / 196 * 4)  # 80 px: a whole known row
    restored = restore_image(model, get_task("inpainting"), image, mask, steps=2, progress=False)
    assert restored.shape == image.shape and torch.equal(restored[:, :4], image[:, :4])


@pytest.mark.parametrize(("height", "width", "sides"), [(1, 1, {"right": 1}), (1, 64, {"right": 16}),
                                                         (64, 1, {"bottom": 16}), (4, 256, {"bottom": 252})])
def test_strips_and_single_pixels_can_be_extended(height, width, sides):
    model = Model(SmoothNet(), _config(), torch.device("cpu"))
    image = _photo(height, width)
    extended = extend_image(model, image, steps=2, progress=False, **sides)
    assert extended.shape == (3, height + sides.get("bottom", 0), width + sides.get("right", 0))
    assert torch.equal(extended[:, :height, :width], image)


def test_an_extension_over_the_pixel_limit_is_refused_before_any_sampling(monkeypatch):
    monkeypatch.setenv("PALETTE_MAX_PIXELS", "1000")
    model = Model(SmoothNet(), _config(), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"would be 60x20, 0\.0 megapixels, over the limit of 1,000 pixels"):
        extend_image(model, _photo(20, 20), right=40, progress=False)
    assert extend_image(model, _photo(20, 20), right=30, steps=1, progress=False).shape == (3, 20, 50)
