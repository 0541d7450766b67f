"""JPEG files: the quality read back from their tables, and the share of a restoration that quality keeps."""

import numpy as np
import pytest
import torch
from PIL import Image

import palette.folders as folders
import palette.inference as inference
from palette.imageio import pil_to_tensor
from palette.folders import prepare_input, sample_folder
from palette.inference import restore
from palette.jpeg import correction_share, file_quality
from palette.tasks import get_task

from conftest import save_tiny_model


def _photo(seed: int = 0) -> Image.Image:
    smooth = np.kron(np.random.default_rng(seed).integers(0, 255, (6, 6, 3)), np.ones((8, 8, 1)))
    noise = np.random.default_rng(seed + 1).normal(0, 12, smooth.shape)
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("quality", [1, 5, 10, 15, 20, 35, 50, 51, 75, 90, 99, 100])
def test_the_quality_of_a_pillow_jpeg_is_read_back_exactly(tmp_path, quality):
    _photo().save(tmp_path / "photo.jpg", quality=quality)
    assert file_quality(tmp_path / "photo.jpg") == quality


def test_a_jpeg_over_pillows_pixel_limit_is_refused_in_one_line_by_palettes_own(tmp_path, monkeypatch, capsys):
    from palette.cli import main

    _photo().save(tmp_path / "huge.jpg", quality=10)  # 48x48: "huge" under a limit of 500 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # Pillow refuses images over twice its limit
    monkeypatch.setenv("PALETTE_MAX_PIXELS", "1000")
    assert file_quality(tmp_path / "huge.jpg") is None  # reading it is what names the problem
    with pytest.raises(SystemExit):
        main(["sample", "--task", "jpeg", "--input", str(tmp_path / "huge.jpg"), "--output", str(tmp_path / "o.png")])
    assert "huge.jpg: refusing to decode" in capsys.readouterr().err


def test_files_that_are_not_jpegs_have_no_quality(tmp_path):
    _photo().save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("not an image")
    assert file_quality(tmp_path / "photo.png") is None and file_quality(tmp_path / "notes.txt") is None
    assert get_task("jpeg").for_file(tmp_path / "photo.png").quality is None


def test_the_share_of_the_correction_falls_with_the_quantisation_step():
    shares = [correction_share(quality) for quality in range(1, 101)]
    assert shares[:15] == [1.0] * 15 and correction_share(None) == 1.0
    assert (correction_share(20), correction_share(50), correction_share(100)) == pytest.approx((0.75, 0.3, 0.0))
    assert all(a >= b for a, b in zip(shares, shares[1:]))


def test_a_jpeg_restoration_keeps_the_share_its_files_quality_sets(tmp_path):
    _photo().save(tmp_path / "light.jpg", quality=50)
    task = get_task("jpeg").for_file(tmp_path / "light.jpg")
    assert task.quality == 50 and get_task("jpeg", quality=12).for_file(tmp_path / "light.jpg").quality == 12
    prepared = prepare_input("jpeg", tmp_path / "light.jpg", None)
    assert prepared.task.quality == 50
    model = inference.load_model(save_tiny_model(tmp_path), "cpu")
    given = pil_to_tensor(_photo().resize((16, 16)))[None]
    mask = torch.ones(1, 1, 16, 16)
    whole = restore(model, given, mask, task=get_task("jpeg"), seed=3)
    kept = restore(model, given, mask, task=task, seed=3)
    torch.testing.assert_close(kept - given, 0.3 * (whole - given))
    assert (whole - given).abs().amax() > 0.05  # the random network changes the image


def test_palette_sample_reads_each_files_quality(tmp_path, monkeypatch):
    folder = tmp_path / "inputs"
    folder.mkdir()
    _photo(0).resize((16, 16)).save(folder / "heavy.jpg", quality=10)
    _photo(2).resize((16, 16)).save(folder / "light.jpg", quality=90)
    seen = set()
    real = folders.restore_image

    def spy(model, task, *args, **kwargs):
        seen.add(task.quality)
        return real(model, task, *args, **kwargs)

    monkeypatch.setattr(folders, "restore_image", spy)
    written = sample_folder(save_tiny_model(tmp_path), "jpeg", folder, tmp_path / "out", progress=False)
    assert seen == {10, 90} and len(written) == 2


def test_a_file_that_is_not_a_jpeg_is_restored_in_full_with_a_note(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    _photo(0).resize((16, 16)).save(folder / "heavy.jpg", quality=10)
    _photo(1).resize((16, 16)).save(folder / "saved.png")
    with pytest.warns(UserWarning) as warned:
        sample_folder(save_tiny_model(tmp_path), "jpeg", folder, tmp_path / "out", progress=False)
    notes = [str(warning.message) for warning in warned if "not a JPEG" in str(warning.message)]
    assert len(notes) == 1 and notes[0].startswith(f"{folder / 'saved.png'}: The file is not a JPEG")
