"""degrade_folder: layout, determinism, file formats, round trip through condition_from_input, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from palette.baselines import baseline_folder
from palette.degrade import degrade_folder
from palette.imageio import ImageError, load_image
from palette.masks import load_mask, uncropping_mask
from palette.jpeg import jpeg_roundtrip
from palette.tasks import get_task, luma

SIZES = {"a": (80, 64), "b": (64, 64), "c": (70, 90)}  # width, height


@pytest.fixture
def clean_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clean"
    folder.mkdir()
    generator = np.random.default_rng(0)
    for stem, (width, height) in SIZES.items():
        pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{stem}.png")
    return folder


def files(folder: Path) -> dict[str, bytes]:
    paths = sorted(path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in paths}


def test_inpainting_layout_sizes_and_round_trip(clean_dir, tmp_path):
    out = tmp_path / "out"
    assert degrade_folder("inpainting", clean_dir, out, seed=1, size=32, mask_kind="centre") == 3
    assert sorted(files(out)) == sorted(
        f"{folder}/{stem}.png" for folder in ("inputs", "masks", "targets") for stem in SIZES
    )
    task = get_task("inpainting")
    for stem in SIZES:
        target = load_image(out / "targets" / f"{stem}.png")
        user_image = load_image(out / "inputs" / f"{stem}.png")
        mask = load_mask(out / "masks" / f"{stem}.png", 32, 32)
        assert target.shape == (3, 32, 32) and mask.mean().item() == 0.25
        known = mask.expand(3, -1, -1) < 0.5
        assert torch.equal(user_image[known], target[known])
        with Image.open(out / "inputs" / f"{stem}.png") as hole_image:
            assert (np.asarray(hole_image)[mask[0].numpy() > 0.5] == 128).all()  # mid-gray hole
        condition = task.condition_from_input(user_image, mask, np.random.default_rng(0)).condition
        assert torch.equal(condition[known], target[known])


def test_same_seed_same_bytes_and_another_seed_other_masks(clean_dir, tmp_path):
    for name in ("first", "second", "other"):
        degrade_folder("inpainting", clean_dir, tmp_path / name, seed=3 if name != "other" else 4, size=32)
    first, second, other = (files(tmp_path / name) for name in ("first", "second", "other"))
    assert first == second
    masks = [key for key in first if key.startswith("masks/")]
    assert any(first[key] != other[key] for key in masks)


def test_a_rerun_into_the_input_folder_does_not_degrade_its_own_outputs(clean_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    degrade_folder("inpainting", clean_dir, elsewhere, seed=3, size=32)
    for run in range(2):
        assert degrade_folder("inpainting", clean_dir, clean_dir, seed=3, size=32) == 3
    written = {key: value for key, value in files(clean_dir).items() if "/" in key}
    assert written == files(elsewhere)  # the same three examples, no inputs/inputs/, no mask drawn anew


def test_one_file_degrades_as_the_first_of_a_folder_and_leaves_no_temporary_file(clean_dir, tmp_path):
    degrade_folder("inpainting", clean_dir, tmp_path / "folder", seed=3, size=32)
    assert degrade_folder("inpainting", clean_dir / "a.png", tmp_path / "one", seed=3, size=32) == 1
    one, folder = files(tmp_path / "one"), files(tmp_path / "folder")
    assert sorted(one) == ["inputs/a.png", "masks/a.png", "targets/a.png"]  # a.png is image 0 of the folder too
    assert all(one[key] == folder[key] for key in one)
    written = baseline_folder("inpainting", "telea", tmp_path / "one" / "inputs" / "a.png", tmp_path / "telea",
                              mask_dir=tmp_path / "one" / "masks")
    assert [path.name for path in written] == ["a.png"] and sorted(files(tmp_path / "telea")) == ["a.png"]
    with pytest.raises(ImageError, match="inputs: is the input folder"):  # outputs onto their own inputs
        baseline_folder("inpainting", "telea", tmp_path / "one" / "inputs", tmp_path / "one" / "inputs",
                        mask_dir=tmp_path / "one" / "masks")
    with pytest.raises(ImageError, match="missing.png: no such file or folder"):
        degrade_folder("inpainting", clean_dir / "missing.png", tmp_path / "none")
    for _ in range(2):  # an output folder inside the input folder is not read back as clean images
        assert degrade_folder("inpainting", clean_dir, clean_dir / "set", seed=3, size=32) == 3


def test_colorization_writes_gray_pngs_that_round_trip(clean_dir, tmp_path):
    out = tmp_path / "out"
    degrade_folder("colorization", clean_dir, out, size=32)
    assert not (out / "masks").exists()
    task = get_task("colorization")
    for stem in SIZES:
        with Image.open(out / "inputs" / f"{stem}.png") as gray:
            assert gray.mode == "L" and gray.size == (32, 32)
        user_image = load_image(out / "inputs" / f"{stem}.png")
        condition = task.condition_from_input(user_image, None, np.random.default_rng(0)).condition
        expected = luma(load_image(out / "targets" / f"{stem}.png")).repeat(3, 1, 1)
        assert torch.allclose(condition, expected, atol=0.5 / 127.5 + 1e-6, rtol=0)


def test_jpeg_writes_real_jpeg_files_at_the_requested_quality(clean_dir, tmp_path):
    out = tmp_path / "out"
    degrade_folder("jpeg", clean_dir, out, size=32, quality=10)
    assert sorted(path.name for path in (out / "inputs").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    for stem in SIZES:
        with Image.open(out / "inputs" / f"{stem}.jpg") as decoded:
            assert decoded.format == "JPEG"
        target = load_image(out / "targets" / f"{stem}.png")
        assert torch.equal(load_image(out / "inputs" / f"{stem}.jpg"), jpeg_roundtrip(target, 10))


def test_uncropping_side_and_original_size_without_resize(clean_dir, tmp_path):
    out = tmp_path / "out"
    degrade_folder("uncropping", clean_dir, out, mask_kind="left")
    for stem, (width, height) in SIZES.items():
        mask = load_mask(out / "masks" / f"{stem}.png")
        assert torch.equal(mask, uncropping_mask(height, width, None, "left"))


def test_subfolders_are_kept_and_clashing_names_are_an_error(clean_dir, tmp_path):
    (clean_dir / "sub").mkdir()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(clean_dir / "sub" / "d.png")
    assert degrade_folder("colorization", clean_dir, tmp_path / "out", size=16) == 4
    assert (tmp_path / "out" / "inputs" / "sub" / "d.png").is_file()
    Image.new("RGB", (40, 40)).save(clean_dir / "a.jpg")
    with pytest.raises(ImageError, match=r"a\.jpg.*a\.png"):
        degrade_folder("colorization", clean_dir, tmp_path / "clash", size=16)
    assert not (tmp_path / "clash").exists()


def test_corrupt_file_is_skipped_with_a_warning_naming_it(clean_dir, tmp_path):
    (clean_dir / "broken.png").write_bytes(b"definitely not a png")
    with pytest.warns(UserWarning, match="broken.png"):
        assert degrade_folder("jpeg", clean_dir, tmp_path / "out", size=16) == 3
    assert not (tmp_path / "out" / "targets" / "broken.png").exists()


def test_folders_without_usable_images_are_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageError, match="no usable image"):
        degrade_folder("colorization", empty, tmp_path / "out")
    (empty / "broken.jpg").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="broken.jpg"), pytest.raises(ImageError, match="no usable image"):
        degrade_folder("colorization", empty, tmp_path / "out")


def test_options_the_task_lacks_are_errors_naming_them(clean_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="mask_kind"):
        degrade_folder("colorization", clean_dir, out, mask_kind="centre")
    with pytest.raises(ValueError, match="quality"):
        degrade_folder("inpainting", clean_dir, out, quality=10)
    with pytest.raises(ValueError, match="'centre'"):
        degrade_folder("uncropping", clean_dir, out, mask_kind="centre")
    with pytest.raises(ValueError, match="'denoise'"):
        degrade_folder("denoise", clean_dir, out)
    assert not out.exists()

