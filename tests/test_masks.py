"""Mask shapes, exact area statistics, determinism and mask files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from palette.imageio import ImageError
from palette.masks import (
    FREE_FORM_BUCKETS,
    MASK_KINDS,
    UNCROP_SIDES,
    centre_box_mask,
    free_form_mask,
    free_form_mask_in_bucket,
    load_mask,
    make_mask,
    random_boxes,
    rectangles_mask,
    save_mask,
    training_inpainting_mask,
    training_mask_kind,
    uncropping_mask,
)

FIXED_KINDS = {"centre", "left", "right", "top", "bottom", "frame"}


def area(mask: torch.Tensor) -> float:
    """Exact masked fraction (integer count over pixel count)."""
    return int(mask.sum().item()) / mask.numel()


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_every_kind_is_a_binary_float32_mask_of_the_right_shape(kind):
    mask = make_mask(kind, 48, 64, rng(3))
    assert mask.dtype == torch.float32
    assert mask.shape == (1, 48, 64)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < area(mask) < 1


@pytest.mark.parametrize("kind", sorted(set(MASK_KINDS) - FIXED_KINDS))
def test_random_kinds_repeat_with_the_seed_and_vary_across_seeds(kind):
    assert torch.equal(make_mask(kind, 32, 32, rng(7)), make_mask(kind, 32, 32, rng(7)))
    masks = [make_mask(kind, 32, 32, rng(seed)) for seed in range(6)]
    assert any(not torch.equal(masks[0], other) for other in masks[1:])


def test_unknown_kind_names_it_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'blob'.*free_form_10_20"):
        make_mask("blob", 32, 32, rng(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(64, 64), (32, 48), (4, 8), (256, 128)])
def test_centre_box_covers_exactly_a_quarter_and_is_centred(size):
    mask = centre_box_mask(*size)
    assert area(mask) == 0.25
    assert torch.equal(mask, mask.flip(1)) and torch.equal(mask, mask.flip(2))


@pytest.mark.parametrize("size", [(64, 64), (32, 48)])
def test_uncropping_halves_are_exactly_half_on_the_named_side(size):
    height, width = size
    sides = ("left", "right", "top", "bottom")
    halves = {side: uncropping_mask(height, width, rng(0), side) for side in sides}
    assert all(area(mask) == 0.5 for mask in halves.values())
    assert halves["left"][0, :, 0].all() and not halves["left"][0, :, -1].any()
    assert halves["right"][0, :, -1].all() and not halves["right"][0, :, 0].any()
    assert halves["top"][0, 0].all() and not halves["top"][0, -1].any()
    assert halves["bottom"][0, -1].all() and not halves["bottom"][0, 0].any()


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (33, 57), (256, 256), (7, 9)])
def test_frame_is_half_the_image_within_the_stated_rounding(size):
    height, width = size
    mask = uncropping_mask(height, width, rng(0), "frame")
    bound = (1 / height + 1 / width) / (2 * math.sqrt(2)) + 1 / (4 * height * width)
    assert abs(area(mask) - 0.5) <= bound
    border = torch.cat([mask[0, 0], mask[0, -1], mask[0, :, 0], mask[0, :, -1]])
    assert border.all() and mask[0, height // 2, width // 2] == 0


def test_uncropping_side_is_uniform_when_not_given():
    references = [uncropping_mask(8, 8, rng(0), side) for side in UNCROP_SIDES]
    generator = rng(11)
    counts = np.zeros(len(UNCROP_SIDES))
    for _ in range(1000):
        mask = uncropping_mask(8, 8, generator)
        counts[[torch.equal(mask, reference) for reference in references].index(True)] += 1
    expected = 1000 / len(UNCROP_SIDES)
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 18.47  # 99.9% quantile of chi-square with 4 degrees of freedom


def test_rectangles_union_area_is_uniform_in_range():
    areas = np.array([area(rectangles_mask(64, 64, rng(seed))) for seed in range(200)])
    assert areas.min() >= 0.1 and areas.max() <= 0.4
    assert abs(areas.mean() - 0.25) < 0.03
    thirds = np.histogram(areas, bins=3, range=(0.1, 0.4))[0]
    assert thirds.min() >= 45  # about 67 each if uniform


def test_rectangles_stay_in_range_on_a_thin_image():
    areas = [area(rectangles_mask(16, 128, rng(seed))) for seed in range(100)]
    assert min(areas) >= 0.1 and max(areas) <= 0.4


def test_boxes_count_from_one_to_five_inside_the_image_and_make_the_mask():
    counts = []
    for seed in range(300):
        boxes = random_boxes(40, 56, rng(seed))
        counts.append(len(boxes))
        assert all(0 <= top < bottom <= 40 and 0 <= left < right <= 56 for top, left, bottom, right in boxes)
        union = torch.zeros(1, 40, 56)
        for top, left, bottom, right in boxes:
            union[:, top:bottom, left:right] = 1
        assert torch.equal(union, rectangles_mask(40, 56, rng(seed)))
    assert sorted(set(counts)) == [1, 2, 3, 4, 5]
    assert min(np.bincount(counts)[1:]) >= 40  # 60 each if uniform


def test_rectangles_honour_count_and_area_arguments():
    for seed in range(20):
        assert len(random_boxes(64, 64, rng(seed), count=(3, 3))) == 3
        assert 0.5 <= area(rectangles_mask(64, 64, rng(seed), area=(0.5, 0.7))) <= 0.7
    with pytest.raises(ValueError, match="too narrow"):
        rectangles_mask(64, 64, rng(0), area=(0.3, 0.3))


@pytest.mark.parametrize("bucket", list(FREE_FORM_BUCKETS.values()))
def test_every_bucketed_free_form_mask_lands_in_its_bucket(bucket):
    low, high = bucket
    areas = [area(free_form_mask_in_bucket(64, 64, rng(seed), bucket)) for seed in range(100)]
    assert all(low <= value < high for value in areas)


@pytest.mark.parametrize("bucket", [(0.5, 0.5001), (0.9, 1.0), (0.005, 0.01)])
def test_bucket_fallback_lands_even_when_strokes_cannot(bucket):
    for seed in range(3):
        value = area(free_form_mask_in_bucket(32, 32, rng(seed), bucket))
        assert bucket[0] <= value < bucket[1]


def test_impossible_bucket_is_an_error():
    with pytest.raises(ValueError, match="bucket"):
        free_form_mask_in_bucket(32, 32, rng(0), (0.4, 0.3))
    with pytest.raises(ValueError, match="no pixel count"):
        free_form_mask_in_bucket(4, 4, rng(0), (0.52, 0.55))


def test_free_form_strokes_scale_with_the_image():
    small = np.mean([area(free_form_mask(64, 64, rng(seed))) for seed in range(100)])
    large = np.mean([area(free_form_mask(128, 128, rng(seed))) for seed in range(100)])
    assert 0.1 < small < 0.35
    assert abs(small - large) < 0.03


def test_training_masks_are_free_form_sixty_percent_of_the_time():
    generator = rng(5)
    kinds = [training_mask_kind(generator) for _ in range(500)]
    assert abs(kinds.count("free_form") / 500 - 0.6) < 0.05


def test_training_mask_is_the_drawn_family():
    makers = {"free_form": free_form_mask, "rectangles": rectangles_mask}
    for seed in range(10):
        expected_rng = rng(seed)
        kind = training_mask_kind(expected_rng)
        expected = makers[kind](32, 32, expected_rng)
        assert torch.equal(training_inpainting_mask(32, 32, rng(seed)), expected)


def test_mask_file_round_trip_and_gray_threshold(tmp_path):
    mask = free_form_mask(24, 40, rng(1))
    save_mask(mask, tmp_path / "mask.png")
    assert torch.equal(load_mask(tmp_path / "mask.png", 24, 40), mask)
    gray = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert load_mask(tmp_path / "gray.png").tolist() == [[[0.0, 0.0, 1.0, 1.0]]]


def test_mask_file_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="missing.png"):
        load_mask(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        load_mask(tmp_path / "broken.png")
    save_mask(centre_box_mask(48, 64), tmp_path / "small.png")
    with pytest.raises(ImageError, match=r"small\.png.*48x64.*32x32"):
        load_mask(tmp_path / "small.png", 32, 32)
    with pytest.raises(ImageError, match=r"48x64.*48x40"):
        load_mask(tmp_path / "small.png", width=40)
