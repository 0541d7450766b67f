"""The fixed crops an evaluation takes of an image: the centre and random crops drawn as training draws them."""

import numpy as np
from PIL import Image

from palette.data import centre_crop, evaluation_crops


def test_evaluation_crops_are_the_centre_crop_then_random_ones_repeatable_from_the_rng():
    pixels = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    crops = evaluation_crops(image, 16, 4, np.random.default_rng(3))
    assert len(crops) == 4 and all(crop.size == (16, 16) for crop in crops)
    assert crops[0].tobytes() == centre_crop(image, 16).tobytes()
    again = evaluation_crops(image, 16, 4, np.random.default_rng(3))
    assert [crop.tobytes() for crop in crops] == [crop.tobytes() for crop in again]
    assert len({crop.tobytes() for crop in crops}) == 4  # four different crops
