"""What palette trains on: the images a data source names, and the crops it takes of them (an evaluation's fixed
ones, each image's centre crop then random crops from a seed, and training's, at each task's scale)."""

import numpy as np
import pytest
from PIL import Image

from palette.config import config_from_dict
from palette.data import Examples, centre_crop, evaluation_crops, resolve_sources, training_loader
from palette.imageio import ImageError

from conftest import tiny_values, write_images


def test_a_data_source_is_one_image_or_a_list_file_with_or_without_a_byte_order_mark(tmp_path):
    paths = write_images(tmp_path / "images", count=3, size=24)
    photo = tmp_path / "photo.jpg"
    Image.open(paths[0]).save(photo)  # a JPEG's first byte, 0xff, is not UTF-8
    assert resolve_sources(photo) == [photo]
    loader, summary = training_loader(config_from_dict(tiny_values(photo)).data, seed=0, start_step=0, batch_size=2)
    assert summary == "1 images" and next(iter(loader))["target"].shape == (2, 3, 16, 16)
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text("\ufeff../images/image0.png\n# a comment\n../images/image2.png\n", encoding="utf-8")
    assert resolve_sources(listing) == [listing.parent / f"../images/image{index}.png" for index in (0, 2)]
    (tmp_path / "photo.heic").write_bytes(b"\xff\xd8\xff\xe0 no format palette reads")
    with pytest.raises(ImageError, match=r"^\S+photo.heic: neither an image \(.png, .jpg, .*\) nor a UTF-8 list of "
                                         r"image paths \(byte 0 is not UTF-8\); data.source takes a folder of images, "
                                         r"one image, a text file listing image paths, or .tar shards$"):
        resolve_sources(tmp_path / "photo.heic")


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
