"""The shipped multi-task model: loads from the package alone and has learned each task."""

import numpy as np
import pytest
import torch

from palette.data import centre_crop
from palette.demo import example_images, shipped_model_path
from palette.imageio import open_image, pil_to_tensor
from palette.inference import load_model, restore
from palette.tasks import get_task, luma


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(4 / (a - b).square().mean()))  # images in [-1, 1]: peak-to-peak 2


@pytest.fixture(scope="module")
def model():
    assert shipped_model_path().stat().st_size < 50e6
    return load_model(shipped_model_path(), "cpu")


@pytest.fixture(scope="module")
def cleans(model):
    return torch.stack([pil_to_tensor(centre_crop(open_image(p), model.image_size)) for p in example_images()])


def _run(model, task, cleans, seed=0):
    degraded = [task.degrade(c, np.random.default_rng([seed, i])) for i, c in enumerate(cleans)]
    condition = torch.stack([d.condition for d in degraded])
    mask = torch.stack([d.mask for d in degraded])
    return condition, mask, restore(model, condition, mask, steps=10, seed=seed, task=task)


def test_the_model_covers_all_four_tasks(model):
    assert set(model.config.data.tasks) == {"colorization", "inpainting", "uncropping", "jpeg"}
    assert model.config.diffusion.objective == "v" and model.config.diffusion.residual


@pytest.mark.parametrize("task", [get_task("inpainting", mask_kind="centre"), get_task("uncropping", side="right")])
def test_known_region_is_kept_and_the_hole_is_filled(model, cleans, task):
    condition, mask, output = _run(model, task, cleans)
    known = mask.expand_as(output) < 0.5
    assert torch.equal(output[known], cleans[known])
    hole = ~known
    assert (output[hole] - condition[hole]).abs().mean() > 0.3  # not the noise it was given
    # The fill continues the picture: closer to the truth than a flat mid-gray hole would be.
    assert (output[hole] - cleans[hole]).abs().mean() < cleans[hole].abs().mean()


# The shipped model was trained for about an hour on a 2-core CPU (MODEL_CARD.md) and has not learned these two
# yet. strict=True: a model that does learn them turns these into failures, so the markers must then go.
NOT_LEARNED_ON_CPU = pytest.mark.xfail(strict=True, reason="CPU-trained default model; see MODEL_CARD.md")


@NOT_LEARNED_ON_CPU
def test_jpeg_restoration_moves_closer_to_the_original(model, cleans):
    condition, _, output = _run(model, get_task("jpeg", quality=10), cleans)
    assert _psnr(output, cleans) > _psnr(condition, cleans)


def test_colorization_adds_chroma(model, cleans):
    _, _, output = _run(model, get_task("colorization"), cleans)
    # BT.601 chroma of the output in [-1, 1] units: a gray image has none.
    chroma = (output - luma(output))[:, [0, 2]].abs().mean()
    assert chroma > 0.03


def test_colorization_keeps_the_given_luminance(model, cleans):
    condition, _, output = _run(model, get_task("colorization"), cleans)
    assert torch.allclose(luma(output), condition[:, :1], atol=1e-5)


@NOT_LEARNED_ON_CPU
def test_colorization_is_closer_to_the_original_than_the_gray_input(model, cleans):
    condition, _, output = _run(model, get_task("colorization"), cleans)
    assert _psnr(output, cleans) > _psnr(condition, cleans)
