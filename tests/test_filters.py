"""The guided filter of the colour: golden values, edges kept, speckle removed, the luma exact."""

import pytest
import torch

from palette.filters import box_mean, guided_filter, smooth_chroma
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
