"""The crops palette takes of its images: an evaluation's fixed ones (each image's centre crop, then random crops
from a seed), and training's, at each task's scale."""

import numpy as np
from PIL import Image

from palette.config import config_from_dict
from palette.data import Examples, centre_crop, evaluation_crops


def test_evaluation_crops_are_each_images_centre_crop_then_random_ones_repeatable_from_the_seed(tmp_path):
    paths = []
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 255, (120, 200, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(pixels).save(paths[-1])
    crops = evaluation_crops(paths, 16, 4, seed=3)
    assert len(crops) == 8 and all(crop.size == (16, 16) for crop in crops)
    for index, path in enumerate(paths):
        assert crops[4 * index].tobytes() == centre_crop(Image.open(path).convert("RGB"), 16).tobytes()
    again = evaluation_crops(paths, 16, 4, seed=3)
    assert [crop.tobytes() for crop in crops] == [crop.tobytes() for crop in again]
    assert len({crop.tobytes() for crop in crops}) == 8  # eight different crops
    assert [c.tobytes() for c in evaluation_crops(paths, 16, 4, seed=4)] != [c.tobytes() for c in crops]


def test_each_task_trains_on_crops_at_its_own_scale():
    # A 1 px checkerboard: a crop at the image's own pixel scale keeps it (std 1 in [-1, 1]); one shrunk tenfold
    # averages it to flat gray.
    board = Image.fromarray((np.indices((320, 320)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    data = config_from_dict({"data": {"image_size": 32, "tasks": {"jpeg": 1, "colorization": 1}, "flip": False,
                                      "crop_scale": [1.0, 1.0], "task_crop_scale": {"jpeg": [0.1, 0.1]}}}).data
    examples = Examples(data)
    spread = {name: [] for name in examples.task_names}
    for seed in range(20):
        example = examples(board, np.random.default_rng(seed))
        spread[examples.task_names[int(example["task"])]].append(float(example["target"].std()))
    assert len(spread["jpeg"]) >= 5 and len(spread["colorization"]) >= 5
    assert min(spread["jpeg"]) > 0.99 and max(spread["colorization"]) < 0.05
