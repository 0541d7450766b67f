"""A corpus of bad and unusual files, made here: each loads correctly or fails with one clear line naming it."""

import errno
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from palette.checkpoint import CheckpointError, check_device, load_weights, save_weights
from palette.cli import main
from palette.config import config_from_dict
from palette.data import PaletteDataset, usable_images
from palette.files import OutputError
from palette.imageio import ImageError, check_unique_stems, load_image, open_image, save_image
from palette.masks import EmptyMaskError, load_mask
from palette.network import PaletteNet

from conftest import save_tiny_model, tiny_values, write_images

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, (48, 48, 3), dtype=np.uint8)  # incompressible, so a cut file loses pixel data


def _cut(data: bytes, path: Path, fraction: float = 0.6) -> Path:
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _encoded(array: np.ndarray, image_format: str, **options) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A 1-bit PNG that declares width x height but holds a few bytes of pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, gray
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def broken_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Bad image files -> (path, words the error must hold)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image, a text file renamed")
    return {
        "truncated jpeg": (_cut(_encoded(NOISE, "JPEG", quality=95), folder / "cut.jpg"), "not a readable image"),
        "truncated png": (_cut(_encoded(NOISE, "PNG"), folder / "cutpng.png"), "not a readable image"),
        "empty file": (folder / "empty.png", "empty file (0 bytes)"),
        "text named .png": (folder / "text.png", "not a readable image (Pillow recognises no image format"),
        "decompression bomb": (png_header_only(folder / "bomb.png", 30000, 30000),
                               "900.0 megapixels, over the limit of 50,000,000 pixels"),
        "144 megapixels": (png_header_only(folder / "huge.png", 12000, 12000), "144.0 megapixels"),
    }


IMAGE_KINDS = ["truncated jpeg", "truncated png", "empty file", "text named .png", "decompression bomb",
               "144 megapixels"]


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_a_broken_image_is_an_image_error_naming_the_file_and_the_problem(tmp_path, kind):
    path, words = broken_files(tmp_path)[kind]
    with pytest.raises(ImageError) as error:
        open_image(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message


def test_a_truncated_jpeg_passes_verify_but_not_the_decode(tmp_path):
    path, _ = broken_files(tmp_path)["truncated jpeg"]
    with Image.open(path) as image:
        image.verify()  # why usable_images decodes instead
    with pytest.raises(ImageError, match="cut.jpg"):
        open_image(path)


def test_a_bomb_is_refused_from_a_small_file_and_the_limit_can_be_raised_or_lowered(tmp_path, monkeypatch):
    path, _ = broken_files(tmp_path)["decompression bomb"]
    assert path.stat().st_size < 200
    with pytest.raises(ImageError, match=r"PALETTE_MAX_PIXELS=<pixels> to raise it"):
        open_image(path)
    Image.fromarray(NOISE).save(tmp_path / "small.png")  # 48 x 48 = 2304 pixels
    monkeypatch.setenv("PALETTE_MAX_PIXELS", "2303")
    with pytest.raises(ImageError, match=r"small\.png: refusing .* limit of 2,303 pixels"):
        open_image(tmp_path / "small.png")
    monkeypatch.setenv("PALETTE_MAX_PIXELS", "2304")
    assert open_image(tmp_path / "small.png").size == (48, 48)
    monkeypatch.setenv("PALETTE_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="PALETTE_MAX_PIXELS='lots': expected a positive whole number"):
        open_image(tmp_path / "small.png")


def _pixels(path: Path, mode: str = "RGB") -> np.ndarray:
    return np.asarray(open_image(path, mode), dtype=np.int64)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    levels = (np.arange(64 * 64).reshape(64, 64) % 200 * 300).astype(np.uint16)  # mean 29484 of 65535
    Image.fromarray(levels).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode == "I;16"
    gray = _pixels(tmp_path / "deep.png", "L")
    assert abs(gray.mean() - levels.mean() / 257) < 1  # Pillow's convert gives 253.7 here
    assert gray.max() == round(levels.max() / 257)
    assert np.array_equal(_pixels(tmp_path / "deep.png")[..., 1], gray)


def test_transparent_pixels_show_white_not_the_hidden_colour(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, but the top half is fully transparent and the middle row half
    rgba[4:, :, 3] = 255
    rgba[3, :, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "cutout.png")
    pixels = _pixels(tmp_path / "cutout.png")
    assert (pixels[:3] == 255).all()
    assert (pixels[4:] == [255, 0, 0]).all()
    assert (pixels[3, :, 0] == 255).all() and (abs(pixels[3, :, 1:] - 127) <= 1).all()


def test_cmyk_palette_one_bit_gif_and_webp_load_with_their_colours(tmp_path):
    colour = np.full((16, 16, 3), (200, 50, 30), np.uint8)
    Image.fromarray(colour).convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    assert np.abs(_pixels(tmp_path / "print.jpg") - colour).max() <= 3
    Image.fromarray(colour).quantize(4).save(tmp_path / "palette.png")
    assert np.array_equal(_pixels(tmp_path / "palette.png"), colour)
    bits = np.zeros((16, 16), bool)
    bits[:, 5:] = True
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert np.array_equal(_pixels(tmp_path / "bits.png", "L"), bits * 255)
    frames = [Image.new("RGB", (16, 16), rgb) for rgb in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert (_pixels(tmp_path / "anim.gif") == [255, 0, 0]).all()
    Image.fromarray(NOISE).save(tmp_path / "lossless.webp", lossless=True)
    assert np.array_equal(_pixels(tmp_path / "lossless.webp"), NOISE)


def test_exif_orientation_is_applied_as_a_viewer_would(tmp_path):
    stored = np.zeros((16, 40, 3), np.uint8)
    stored[:, :8] = 255  # a white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    shown = _pixels(tmp_path / "phone.jpg", "L")
    assert shown.shape == (40, 16)
    assert shown[:6].mean() > 245 and shown[10:].mean() < 10  # the band is now on top


@pytest.mark.parametrize("height, width", [(1, 1), (50, 4000)])
def test_extreme_shapes_load(tmp_path, height, width):
    Image.new("RGB", (width, height), (10, 20, 30)).save(tmp_path / "odd.png")
    image = load_image(tmp_path / "odd.png")
    assert image.shape == (3, height, width) and torch.allclose(image[:, 0, 0], torch.tensor([10, 20, 30]) / 127.5 - 1)


# Masks ------------------------------------------------------------------------------------------------------------

BOX = np.zeros((30, 34), bool)
BOX[5:21, 3:14] = True  # not on JPEG's 8x8 grid, so JPEG rings around its edges


def test_masks_in_other_modes_and_formats_read_as_the_binary_mask(tmp_path):
    expected = torch.from_numpy(BOX).float()[None]
    Image.fromarray(np.repeat(BOX[..., None] * 255, 3, 2).astype(np.uint8)).save(tmp_path / "rgb.png")
    assert torch.equal(load_mask(tmp_path / "rgb.png", 30, 34), expected)
    Image.fromarray((BOX * 255).astype(np.uint8)).save(tmp_path / "saved.jpg", quality=75)
    with Image.open(tmp_path / "saved.jpg") as image:
        assert len(np.unique(np.asarray(image))) > 2  # really not binary
    assert torch.equal(load_mask(tmp_path / "saved.jpg", 30, 34), expected)
    strokes = np.zeros((30, 34, 4), np.uint8)
    strokes[BOX] = 255  # white strokes on a transparent layer: transparent = known
    Image.fromarray(strokes).save(tmp_path / "layer.png")
    assert torch.equal(load_mask(tmp_path / "layer.png", 30, 34), expected)


def test_bad_masks_are_clear_errors_naming_the_file(tmp_path):
    Image.fromarray((BOX * 255).astype(np.uint8)).save(tmp_path / "box.png")
    with pytest.raises(ImageError, match=r"box\.png: mask is 30x34 \(HxW\) but the image is 30x40"):
        load_mask(tmp_path / "box.png", 30, 40)
    Image.new("L", (34, 30), 0).save(tmp_path / "black.png")
    assert load_mask(tmp_path / "black.png").sum() == 0
    with pytest.raises(EmptyMaskError, match=r"black\.png: mask is all black: nothing to generate"):
        load_mask(tmp_path / "black.png", check_coverage=True)
    Image.new("L", (34, 30), 255).save(tmp_path / "white.png")
    with pytest.raises(ImageError, match=r"white\.png: mask is all white: no known pixels") as error:
        load_mask(tmp_path / "white.png", check_coverage=True)
    assert not isinstance(error.value, EmptyMaskError)
    with pytest.raises(ImageError, match=r"absent\.png: no such file"):
        load_mask(tmp_path / "absent.png")


# Checkpoints ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random tiny model at 16x16 (sampling it takes milliseconds)."""
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def bad_checkpoints(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Bad checkpoint files -> (path, words the error must hold)."""
    data = good.read_bytes()
    (folder / "random.safetensors").write_bytes(np.random.default_rng(1).bytes(4096))
    (folder / "empty.safetensors").write_bytes(b"")
    torch.save({"weight": torch.zeros(3)}, folder / "model.pt")
    (folder / "renamed.safetensors").write_bytes(pickle.dumps({"weight": [0.0] * 3}))
    values = tiny_values(folder)
    values["network"]["base_channels"] = 8  # the weights of another network, under a tiny config
    other = PaletteNet.from_config(config_from_dict(values))
    save_weights(folder / "other.safetensors", other.state_dict(), config_from_dict(tiny_values(folder)))
    return {
        "random bytes": (folder / "random.safetensors", "not a safetensors file"),
        "truncated": (_cut(data, folder / "cut.safetensors", 0.5), "a truncated safetensors file"),
        "empty": (folder / "empty.safetensors", "an empty file (0 bytes)"),
        "torch.save pickle": (folder / "model.pt", "a pickle (torch.save"),
        "pickle renamed": (folder / "renamed.safetensors", "palette never loads because unpickling"),
        "another preset": (folder / "other.safetensors", "weights do not fit this network"),
    }


CHECKPOINT_KINDS = ["random bytes", "truncated", "empty", "torch.save pickle", "pickle renamed", "another preset"]


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)


def _cli_error(capsys, argv: list[str]) -> str:
    """Run palette; it must exit 2 with one `palette <command>: error:` line and no traceback."""
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"palette {argv[0]}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_a_bad_checkpoint_is_one_line_naming_it_and_nothing_is_unpickled(tmp_path, capsys, checkpoint, kind,
                                                                          no_unpickling):
    path, words = bad_checkpoints(tmp_path, checkpoint)[kind]
    Image.new("RGB", (16, 16), 90).save(tmp_path / "photo.png")
    line = _cli_error(capsys, ["sample", "--checkpoint", str(path), "--task", "jpeg", "--input",
                               str(tmp_path / "photo.png"), "--output", str(tmp_path / "out"), "--device", "cpu"])
    assert f"{path}: " in line and words in line
    if kind != "another preset":
        with pytest.raises(CheckpointError) as error:
            load_weights(path)
        assert str(error.value).startswith(f"{path}: ") and words in str(error.value)


def test_check_device_refuses_what_this_machine_lacks():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device gpu0: not a device name"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: CUDA is not available on this machine"):
            check_device("cuda")
    with pytest.raises(ValueError, match=r"--device cuda:99: (this machine has \d CUDA|CUDA is not available)"):
        check_device("cuda:99")


# Inputs through the command line ----------------------------------------------------------------------------------


def test_degrade_skips_each_broken_file_by_name_and_fails_in_one_line_when_none_is_left(tmp_path, capsys):
    files = broken_files(tmp_path / "photos")
    with pytest.warns(UserWarning) as warned:
        line = _cli_error(capsys, ["degrade", "--task", "jpeg", "--input", str(tmp_path / "photos"),
                                   "--output", str(tmp_path / "set")])
    assert "no usable image" in line
    warnings = " ".join(str(warning.message) for warning in warned)
    for path, words in files.values():
        assert f"{path}: {words}" in warnings or (f"{path}: " in warnings and words in warnings)


def test_sample_names_a_missing_or_misnamed_mask_in_one_line(tmp_path, capsys, checkpoint):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (16, 16), 90).save(tmp_path / "inputs" / "street.png")
    Image.fromarray((BOX[:16, :16] * 255).astype(np.uint8)).save(tmp_path / "masks" / "Street.png")
    argv = ["sample", "--checkpoint", str(checkpoint), "--task", "inpainting", "--input", str(tmp_path / "inputs"),
            "--output", str(tmp_path / "out"), "--device", "cpu", "--steps", "2"]
    line = _cli_error(capsys, argv + ["--mask", str(tmp_path / "masks")])
    assert f"{tmp_path / 'masks' / 'street.png'}: missing mask for input {tmp_path / 'inputs' / 'street.png'}" in line
    line = _cli_error(capsys, argv)
    assert "street.png: task inpainting needs a mask" in line


def test_config_mistakes_are_one_line(tmp_path, capsys):
    line = _cli_error(capsys, ["train", "--config", "configs/tiny.yaml", "--set", "train.lr=abc",
                               "--run-dir", str(tmp_path / "run")])
    assert "train.lr" in line and "abc" in line
    line = _cli_error(capsys, ["train", "--config", "configs/tiny.yaml", "--set", "train.lrr=1",
                               "--run-dir", str(tmp_path / "run")])
    assert "lrr" in line
    assert not (tmp_path / "run").exists()


# Outputs ----------------------------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def test_an_output_folder_that_is_a_file_is_one_line_naming_it(tmp_path, capsys, checkpoint):
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(OutputError, match=r"taken/a\.png: cannot create its folder: .*taken is a file, not a fold"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "taken" / "a.png")
    Image.new("RGB", (16, 16), 90).save(tmp_path / "photo.png")
    line = _cli_error(capsys, ["sample", "--checkpoint", str(checkpoint), "--task", "jpeg", "--input",
                               str(tmp_path / "photo.png"), "--output", str(tmp_path / "taken"), "--device", "cpu",
                               "--steps", "1"])
    assert f"{tmp_path / 'taken'} is a file, not a folder" in line
    assert (tmp_path / "taken").read_text() == "a file, not a folder"


def test_no_output_or_preview_replaces_an_input_or_a_mask_even_with_overwrite(tmp_path, capsys, checkpoint):
    folder, masks = tmp_path / "in", tmp_path / "masks"
    write_images(folder, count=2, size=16)
    masks.mkdir()
    for name in ("image0", "image1"):
        mask = Image.new("L", (16, 16), 0)
        mask.paste(255, (4, 4, 12, 12))
        mask.save(masks / f"{name}.png")
    kept = {path: path.read_bytes() for path in [*folder.iterdir(), *masks.iterdir()]}
    base = ["sample", "--checkpoint", str(checkpoint), "--task", "inpainting", "--mask", str(masks),
            "--device", "cpu", "--steps", "1", "--overwrite"]
    one = folder / "image0.png"
    for argv, replaced in (([*base, "--input", str(one), "--output", str(folder)], one),  # its own folder
                           ([*base, "--input", str(folder), "--output", str(masks)], masks / "image0.png"),
                           ([*base, "--input", str(folder), "--output", str(tmp_path / "o"), "--preview",
                             str(folder)], one)):
        assert f"would replace the input {replaced}" in _cli_error(capsys, argv)
    assert {path: path.read_bytes() for path in kept} == kept


def test_inputs_under_the_output_folder_hidden_files_and_masks_in_subfolders(tmp_path, checkpoint):
    from palette.folders import sample_folder

    inputs = tmp_path / "project" / "photos"
    write_images(inputs / "trip", count=1, size=16)
    write_images(inputs / ".thumbnails", count=1, size=16)  # a viewer's cache: not the user's photos
    (inputs / "._image0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (tmp_path / "masks" / "trip").mkdir(parents=True)
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (4, 4, 12, 12))
    mask.save(tmp_path / "masks" / "trip" / "image0.PNG")  # where palette degrade puts it, and in capitals
    # The output folder holds the input folder: every input is still read (only one inside the inputs is skipped).
    written = sample_folder(checkpoint, "inpainting", inputs, tmp_path / "project", mask=tmp_path / "masks",
                            steps=1, progress=False, device="cpu")
    assert written == [tmp_path / "project" / "image0.png"]


def test_a_full_disk_leaves_the_old_output_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_image(torch.ones(3, 4, 4), path)
    good = path.read_bytes()

    def fill_the_disk(image, target, *args, **kwargs):
        Path(target).write_bytes(b"\x89PNG half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", fill_the_disk)
    with pytest.raises(OutputError, match=r"out\.png: cannot write: the disk is full"):
        save_image(-torch.ones(3, 4, 4), path)
    assert path.read_bytes() == good and _leftovers(tmp_path) == []


def test_a_read_only_folder_is_an_error_naming_the_output(tmp_path, monkeypatch):
    if os.geteuid() != 0:  # root writes through chmod; then the refusal is simulated where the file is created
        tmp_path.chmod(0o555)
    else:
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr("tempfile.mkstemp", refuse)
    try:
        with pytest.raises(OutputError, match=r"locked\.png: cannot write: permission denied"):
            save_image(torch.zeros(3, 4, 4), tmp_path / "locked.png")
    finally:
        tmp_path.chmod(0o755)
    assert list(tmp_path.iterdir()) == []


def test_inputs_that_would_share_an_output_name_are_named_together(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub" / "a.jpg"]
    with pytest.raises(ImageError, match=r"a\.png and .*sub/a\.jpg would both be written as a; rename one"):
        check_unique_stems(paths)
    check_unique_stems(paths, root=tmp_path)  # outputs that keep subfolders do not collide
    with pytest.raises(ImageError, match=r"sub/a\.jpg and .*sub/a\.webp"):
        check_unique_stems(paths + [tmp_path / "sub" / "a.webp"], root=tmp_path)


# Training folders -------------------------------------------------------------------------------------------------


def test_a_training_folder_uses_the_good_files_and_names_and_counts_the_bad(tmp_path):
    folder = tmp_path / "train"
    good = write_images(folder, count=2, size=24)
    files = broken_files(folder)
    frames = [Image.new("RGB", (24, 24), rgb) for rgb in ((0, 200, 0), (0, 0, 200))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    paths = sorted(folder.iterdir())
    with pytest.warns(UserWarning) as warned:
        usable = usable_images(paths, folder)
    assert usable == sorted(good + [folder / "anim.gif"])
    messages = [str(warning.message) for warning in warned]
    for path, _ in files.values():
        assert sum(f"skipping {path}: " in message for message in messages) == 1
    assert f"{folder}: skipped {len(files)} unreadable image(s) of {len(paths)}" in messages
    assert f"{folder}: 1 animated image(s) are used by their first frame" in messages


def test_a_file_that_breaks_after_the_check_is_skipped_for_another(tmp_path):
    write_images(tmp_path / "train", count=2, size=24)
    values = tiny_values(tmp_path / "train")
    values["data"]["cache_images"] = False
    dataset = PaletteDataset(config_from_dict(values).data, seed=0)
    before = [dataset[number]["target"] for number in range(8)]
    dataset.paths[0].write_bytes(b"")  # broken while training runs
    with pytest.warns(UserWarning, match=r"image0\.png: empty file.*drawing another image"):
        after = [dataset[number]["target"] for number in range(8)]
    assert all(item.shape == (3, 16, 16) for item in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
    dataset.paths[1].write_bytes(b"")
    with pytest.raises(ImageError, match="none of its 2 image"), pytest.warns(UserWarning, match="image1.png"):
        dataset[0]
