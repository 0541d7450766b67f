"""The fixed crops an evaluation takes of its images: each one's centre crop, then random crops from a seed."""

import numpy as np
from PIL import Image

from palette.data import centre_crop, evaluation_crops


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
