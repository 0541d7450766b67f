"""The guided filter of the colour: golden values, edges kept, speckle removed, the luma exact; in deep holes only,
a streak taken out, the colour along the luma kept, no seam at the border."""

import pytest
import torch

from palette.filters import box_mean, guided_filter, smooth_chroma, smooth_deep_hole_colour
from palette.tasks import luma


def _checkerboard(size: int) -> torch.Tensor:
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((rows + columns) % 2 * 2 - 1).float().view(1, 1, size, size)


def test_with_a_flat_guide_the_filter_is_two_box_means():
    board = _checkerboard(9)
    flat = torch.zeros_like(board)
    assert torch.allclose(box_mean(board, 1)[..., 1:-1, 1:-1], board[..., 1:-1, 1:-1] / 9)
    output = guided_filter(flat, board, 1)
    assert torch.allclose(output, box_mean(box_mean(board, 1), 1))
    assert torch.allclose(output[..., 2:-2, 2:-2], board[..., 2:-2, 2:-2] / 81)  # +-1 speckle down to +-1/81


def test_a_colour_that_follows_the_luma_passes_unchanged_and_keeps_its_edge():
    guide = torch.where(torch.arange(16) < 8, -0.6, 0.7).view(1, 1, 1, 16).expand(1, 1, 16, 16)
    colour = 0.4 * guide - 0.1  # a linear function of the guide: each window fits it
    assert torch.allclose(guided_filter(guide, colour, 2), colour, atol=1e-3)  # eps shortens the slope a little
    blurred = box_mean(colour, 2)
    assert (blurred - colour).abs().amax() > 0.2  # a plain blur bleeds across the edge


def test_speckle_on_flat_regions_goes_and_the_edge_stays():
    generator = torch.Generator().manual_seed(0)
    guide = torch.where(torch.arange(32) < 16, -0.5, 0.5).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    colour = torch.where(guide > 0, 0.3, -0.3)
    speckle = 0.1 * torch.randn(1, 2, 32, 32, generator=generator)
    output = guided_filter(guide, colour + speckle, 1)
    residual = output - colour
    assert residual.std() < 0.45 * speckle.std()
    assert (output[..., 15:17] - colour[..., 15:17]).abs().mean() < 0.05  # beside the edge, not smeared


def test_smooth_chroma_keeps_the_luma_exactly_and_changes_only_the_colour():
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1)) * 2 - 1
    smoothed = smooth_chroma(images, 1)
    assert torch.allclose(luma(smoothed), luma(images), atol=1e-6)
    chroma, smoothed_chroma = images - luma(images), smoothed - luma(smoothed)
    assert smoothed_chroma.std() < 0.7 * chroma.std()
    with pytest.raises(ValueError, match="radius must be at least 1, got 0"):
        smooth_chroma(images, 0)


def test_at_radius_8_a_blotch_of_another_colour_on_one_object_goes_and_the_objects_edge_stays():
    """A colorization's blotches: a patch of a wrong colour a few pixels wide on an object of one colour whose luma
    has texture but no edge there (the cat's orange spots on magenta fur). Radius 1 keeps it; radius 8 averages it
    into the object's colour, while the colour edge between two objects on a luma edge stays."""
    generator = torch.Generator().manual_seed(5)
    luma_step = torch.where(torch.arange(48) < 24, -0.4, 0.4).view(1, 1, 1, 48).expand(1, 1, 48, 48)
    texture = 0.05 * torch.randn(1, 1, 48, 48, generator=generator)
    colour = torch.where(luma_step > 0, torch.tensor([0.2, -0.1, -0.1]).view(1, 3, 1, 1),
                         torch.tensor([-0.1, -0.1, 0.2]).view(1, 3, 1, 1))  # zero-luma chroma: red | blue
    blotch = torch.zeros(1, 3, 48, 48)
    blotch[..., 8:14, 8:14] = torch.tensor([-0.15, 0.3, -0.15]).view(1, 3, 1, 1)  # a green patch on the blue
    images = luma_step + texture + colour + blotch

    def left_blotch(smoothed):  # how much of the patch's colour is left, as a share
        chroma = smoothed - luma(smoothed)
        return float(((chroma - colour)[..., 8:14, 8:14] * blotch[..., 8:14, 8:14]).sum() / blotch.pow(2).sum())

    assert left_blotch(smooth_chroma(images, 1)) > 0.6
    wide = smooth_chroma(images, 8)
    assert left_blotch(wide) < 0.3
    assert torch.allclose(luma(wide), luma(images), atol=1e-6)
    chroma = wide - luma(wide)  # the colours one pixel either side of the edge, away from the patch
    step, kept = colour[..., 30:46, 24] - colour[..., 30:46, 23], chroma[..., 30:46, 24] - chroma[..., 30:46, 23]
    assert float((kept * step).sum() / step.pow(2).sum()) > 0.9


def _two_cups(size: int) -> torch.Tensor:
    """[1, 3, size, size]: a bright cyan left half and a dark purple right half, with a little texture."""
    left = torch.arange(size).view(1, 1, 1, size) < size // 2
    image = torch.where(left, torch.tensor([-0.2, 0.7, 0.8]).view(1, 3, 1, 1),
                        torch.tensor([-0.5, -0.8, -0.4]).view(1, 3, 1, 1)).expand(1, 3, size, size)
    return image + 0.05 * torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))


def _chroma(images: torch.Tensor) -> torch.Tensor:
    return images - luma(images)


def test_in_a_deep_hole_a_streak_goes_and_the_colour_that_follows_the_luma_stays():
    photo = _two_cups(48)
    mask = torch.zeros(1, 1, 48, 48)
    mask[..., 12:36, 12:36] = 1  # 24 px across both halves: its centre lies 12 px from a known pixel
    streak = torch.zeros_like(mask)
    streak[..., 22:26, 14:22] = 1  # a streak of orange on the cyan, its luma unchanged
    orange = torch.tensor([0.5, -0.2, -0.9]).view(1, 3, 1, 1)
    streaked = photo + streak * (_chroma(orange) - _chroma(photo))  # orange colour, the same luma
    smoothed = smooth_deep_hole_colour(streaked, mask, min_depth=12)
    left = (streak[0, 0] > 0).nonzero()
    deviation = [(_chroma(image) - _chroma(photo))[0][:, left[:, 0], left[:, 1]].norm(dim=0).mean()
                 for image in (streaked, smoothed)]
    assert deviation[1] < 0.25 * deviation[0]  # measured: 1.74 -> 0.26
    # The colour step along the luma edge at column 24 stays: each side keeps its own colour (off by 0.16 of 0.90;
    # a box blur of the colour, which ignores the luma, is off by 0.87).
    step = _chroma(smoothed)[0, :, 14:34, 23] - _chroma(smoothed)[0, :, 14:34, 24]
    truth = _chroma(photo)[0, :, 14:34, 23] - _chroma(photo)[0, :, 14:34, 24]
    assert (step - truth).norm(dim=0).mean() < 0.25 * truth.norm(dim=0).mean()
    assert torch.allclose(luma(smoothed), luma(streaked), atol=1e-5)
    known = mask.expand_as(photo) < 0.5
    assert torch.equal(smoothed[known], streaked[known])
    # The change blends in from the border, a quarter per px of depth: no seam (measured 0.017 on the border row,
    # 0.096 four rows in).
    change = (smoothed - streaked).abs().amax(1)[0]
    assert change[12, 20:28].amax() < 0.3 * change[16, 20:28].amax()


def test_holes_shallower_than_the_depth_keep_their_colour():
    photo = _two_cups(48)
    mask = torch.zeros(1, 1, 48, 48)
    mask[..., 4:44, 19:29] = 1  # a stroke 10 px wide: 5 px deep at most
    assert torch.equal(smooth_deep_hole_colour(photo, mask, min_depth=6), photo)
    assert not torch.equal(smooth_deep_hole_colour(photo, mask, min_depth=5), photo)
