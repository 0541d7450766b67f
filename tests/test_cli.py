"""CLI round trips: train tiny -> degrade -> sample for every task, and bad inputs with clear errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from palette.checkpoint import latest_checkpoint, read_checkpoint
from palette.cli import main
from palette.demo import example_images, shipped_model_path
from palette.tasks import LUMA_WEIGHTS

from conftest import tiny_values, write_images

TASKS = ["colorization", "inpainting", "uncropping", "jpeg"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_images(root / "images", count=3, size=40)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_values(root / "images")))
    main(["train", "--config", str(config), "--set", "train.steps=2", "--set", "train.checkpoint_every=2",
          "--run-dir", str(root / "run")])
    return root


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("task", TASKS)
def test_degrade_then_sample_writes_outputs_of_the_input_size(trained, task, tmp_path):
    main(["degrade", "--task", task, "--input", str(trained / "images"), "--output", str(tmp_path / "set"),
          "--size", "24", "--seed", "1"])
    inputs = sorted((tmp_path / "set" / "inputs").iterdir())
    assert len(inputs) == 3
    argv = ["sample", "--checkpoint", str(trained / "run"), "--task", task, "--input", str(tmp_path / "set" / "inputs"),
            "--output", str(tmp_path / "out"), "--steps", "3", "--num-samples", "2", "--device", "cpu"]
    if task in ("inpainting", "uncropping"):
        argv += ["--mask", str(tmp_path / "set" / "masks")]
    main(argv)  # 24 px inputs to a 16 px model: restored at their own size, nothing resized
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == sorted(f"{p.stem}_{k}.png" for p in inputs for k in range(2))
    for name in outputs:
        with Image.open(tmp_path / "out" / name) as image:
            assert image.size == (24, 24) and image.mode == "RGB"
    if task in ("inpainting", "uncropping"):
        # Known pixels of the user's input come back untouched.
        stem = inputs[0].stem
        with Image.open(inputs[0]) as given, Image.open(tmp_path / "set" / "masks" / f"{stem}.png") as mask, \
                Image.open(tmp_path / "out" / f"{stem}_0.png") as result:
            known = np.asarray(mask.convert("L")) < 128
            given_pixels, result_pixels = np.asarray(given.convert("RGB")), np.asarray(result)
            assert known.any() and np.array_equal(given_pixels[known], result_pixels[known])
    if task == "colorization":
        # The given luma comes back at full size, up to 8-bit rounding; only chroma was generated.
        for path in inputs:
            with Image.open(path) as given, Image.open(tmp_path / "out" / f"{path.stem}_0.png") as result:
                gray = np.asarray(given.convert("L"), dtype=np.float64)
                rgb = np.asarray(result, dtype=np.float64)
            assert np.abs(rgb @ np.array(LUMA_WEIGHTS) - gray).max() <= 1.0


def test_sampling_a_single_file_into_a_folder_or_to_a_named_file(trained, tmp_path, capsys):
    write_images(tmp_path / "gray", count=1, size=16)
    checkpoint = trained / "run" / "checkpoints" / "step_00000002" / "ema.safetensors"

    def sample(input: Path, output: Path, *flags: str) -> list[str]:
        return ["sample", "--checkpoint", str(checkpoint), "--task", "colorization", "--input", str(input),
                "--output", str(output), "--sampler", "ddpm", "--steps", "2", *flags]

    given = tmp_path / "gray" / "image0.png"
    Image.open(given).convert("L").save(given)  # a gray photo: nothing to warn about
    main(sample(given, tmp_path / "o"))
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["image0.png"]
    main(sample(given, tmp_path / "named" / "colour.jpg", "--num-samples", "2"))
    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == ["colour_0.jpg", "colour_1.jpg"]
    with Image.open(tmp_path / "named" / "colour_0.jpg") as written:
        # A real JPEG at quality 95: its luma table's first step is 2 (Pillow's default quality 75 gives 8).
        assert written.format == "JPEG" and written.size == (16, 16) and written.quantization[0][0] == 2
    (tmp_path / "folder.png").mkdir()  # an existing folder stays a folder, whatever its name
    main(sample(given, tmp_path / "folder.png"))
    assert (tmp_path / "folder.png" / "image0.png").is_file()
    err = _error(capsys, sample(tmp_path / "gray", tmp_path / "all.png"))
    assert "all.png: names one image, but" in err and not (tmp_path / "all.png").exists()
    assert "typo.png: no such file or folder" in _error(capsys, sample(tmp_path / "typo.png", tmp_path / "t.png"))
    before = given.read_bytes()  # the user's own image or folder as the output: refused, even with --overwrite
    for target in (given, tmp_path / "gray"):
        err = _error(capsys, sample(target, target, "--overwrite"))
        assert f"{target}: is the input" in err and given.read_bytes() == before


def test_sampling_without_a_checkpoint_uses_the_shipped_model(tmp_path):
    Image.open(example_images()[0]).convert("RGB").resize((32, 24)).save(tmp_path / "photo.jpg", quality=10)
    common = ["sample", "--task", "jpeg", "--input", str(tmp_path / "photo.jpg")]
    main(common + ["--output", str(tmp_path / "default.png")])
    main(common + ["--output", str(tmp_path / "named.png"), "--checkpoint", str(shipped_model_path())])
    with Image.open(tmp_path / "default.png") as default, Image.open(tmp_path / "named.png") as named, \
            Image.open(tmp_path / "photo.jpg") as given:
        assert default.size == (32, 24) and np.array_equal(np.asarray(default), np.asarray(named))
        assert not np.array_equal(np.asarray(default), np.asarray(given.convert("RGB")))


def test_sampling_a_large_odd_sized_photo_in_tiles_with_a_preview(trained, tmp_path, capsys):
    write_images(tmp_path / "in", count=1, size=61)
    main(["sample", "--checkpoint", str(trained / "run"), "--task", "jpeg", "--input", str(tmp_path / "in"),
          "--output", str(tmp_path / "o"), "--steps", "2", "--tile", "32", "--overlap", "8",
          "--preview", str(tmp_path / "preview")])
    for folder in ("o", "preview"):
        with Image.open(tmp_path / folder / "image0.png") as image:
            assert image.size == (61, 61)
    err = _error(capsys, ["sample", "--checkpoint", str(trained / "run"), "--task", "jpeg", "--input",
                        str(tmp_path / "in"), "--output", str(tmp_path / "o2"), "--tile", "40"])
    assert "tile size 40 must be a positive multiple of the alignment 16" in err


def test_extend_grows_the_image_by_the_given_pixels(trained, tmp_path, capsys):
    write_images(tmp_path / "in", count=1, size=20)
    main(["extend", str(tmp_path / "in" / "image0.png"), "--right", "30", "--top", "4", "--output",
          str(tmp_path / "wide.png"), "--checkpoint", str(trained / "run"), "--steps", "2",
          "--preview", str(tmp_path / "coarse.png")])
    with Image.open(tmp_path / "in" / "image0.png") as given, Image.open(tmp_path / "wide.png") as wide, \
            Image.open(tmp_path / "coarse.png") as coarse:
        assert wide.size == coarse.size == (20 + 30, 20 + 4)
        # The photo itself comes back untouched, below the 4 new rows.
        assert np.array_equal(np.asarray(wide)[4:, :20], np.asarray(given.convert("RGB")))
    err = _error(capsys, ["extend", str(tmp_path / "in" / "image0.png"), "--output", str(tmp_path / "same.png"),
                        "--checkpoint", str(trained / "run")])
    assert "nothing to extend" in err
    # A bad output name is refused before the model loads (the checkpoint here does not exist), not after sampling.
    base = ["extend", str(tmp_path / "in" / "image0.png"), "--right", "8",
            "--checkpoint", str(tmp_path / "missing.safetensors")]
    photo = tmp_path / "in" / "image0.png"
    assert f"{photo}: is the input image" in _error(capsys, base + ["--output", str(photo)])
    for output, preview in (("wide.xyz", None), ("wide.png", "coarse")):
        argv = base + ["--output", str(tmp_path / output)] + (["--preview", str(tmp_path / preview)] if preview else [])
        assert f"{preview or output}: unknown image suffix" in _error(capsys, argv)
    # An existing output is the user's: refused (before the model loads) unless --overwrite.
    before = (tmp_path / "wide.png").read_bytes()
    assert f"{tmp_path / 'wide.png'}: exists; --overwrite replaces it" in _error(
        capsys, base + ["--output", str(tmp_path / "wide.png")])
    assert (tmp_path / "wide.png").read_bytes() == before
    main(base[:-1] + [str(trained / "run"), "--steps", "2", "--output", str(tmp_path / "wide.png"), "--overwrite"])
    with Image.open(tmp_path / "wide.png") as wide:
        assert wide.size == (20 + 8, 20)


def _logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_resume_via_cli_continues_from_the_saved_step(trained, tmp_path):
    shutil.copytree(trained / "run", tmp_path / "resumed")  # the shared run stays as it is
    main(["train", "--resume", str(tmp_path / "resumed"), "--set", "train.steps=4"])
    main(["train", "--config", str(trained / "tiny.yaml"), "--set", "train.steps=4", "--set",
          "train.checkpoint_every=2", "--run-dir", str(tmp_path / "whole")])
    assert _logged_steps(tmp_path / "resumed") == _logged_steps(tmp_path / "whole") == [1, 2, 3, 4]
    for run in ("resumed", "whole"):
        assert sorted(p.name for p in (tmp_path / run / "checkpoints").glob("step_*")) == \
            ["step_00000002", "step_00000004"]
    resumed, whole = (read_checkpoint(latest_checkpoint(tmp_path / run)) for run in ("resumed", "whole"))
    assert resumed["step"] == whole["step"] == 4
    for name, value in whole["model"].items():
        assert torch.equal(resumed["model"][name], value), name


def test_a_fresh_run_into_a_used_run_dir_is_refused_unless_overwrite(trained, tmp_path, capsys):
    shutil.copytree(trained / "run", tmp_path / "run")
    before = sorted(p.relative_to(tmp_path / "run") for p in (tmp_path / "run").rglob("*"))
    argv = ["train", "--config", str(trained / "tiny.yaml"), "--set", "train.steps=1", "--run-dir",
            str(tmp_path / "run")]
    err = _error(capsys, argv)
    assert err.count("\n") == 1 and "--resume" in err and "--overwrite" in err
    assert sorted(p.relative_to(tmp_path / "run") for p in (tmp_path / "run").rglob("*")) == before
    main(argv + ["--overwrite"])
    [aside] = tmp_path.glob("run.old-*")
    assert sorted(p.relative_to(aside) for p in aside.rglob("*")) == before
    assert _logged_steps(tmp_path / "run") == [1]
    for extra in (["--overwrite"], ["--run-dir", str(tmp_path / "elsewhere")]):
        with pytest.raises(SystemExit, match="it takes no --config, --overwrite or --run-dir"):
            main(["train", "--resume", str(tmp_path / "run"), *extra])


def test_corrupt_input_image_is_named(trained, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG broken")
    err = _error(capsys, ["sample", "--checkpoint", str(trained / "run"), "--task", "jpeg", "--input",
                          str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert "bad.png" in err and "not a readable image" in err


def test_missing_mask_is_named(trained, tmp_path, capsys):
    write_images(tmp_path / "in", count=1, size=16)
    (tmp_path / "masks").mkdir()
    err = _error(capsys, ["sample", "--checkpoint", str(trained / "run"), "--task", "inpainting", "--input",
                          str(tmp_path / "in"), "--mask", str(tmp_path / "masks"), "--output", str(tmp_path / "out")])
    assert "image0.png" in err and "missing mask" in err
    err = _error(capsys, ["sample", "--checkpoint", str(trained / "run"), "--task", "inpainting", "--input",
                          str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    assert "needs a mask" in err


def test_mask_of_the_wrong_size_is_named(trained, tmp_path, capsys):
    write_images(tmp_path / "in", count=1, size=16)
    (tmp_path / "masks").mkdir()
    Image.new("L", (20, 20), 255).save(tmp_path / "masks" / "image0.png")
    err = _error(capsys, ["sample", "--checkpoint", str(trained / "run"), "--task", "uncropping", "--input",
                          str(tmp_path / "in"), "--mask", str(tmp_path / "masks"), "--output", str(tmp_path / "out")])
    assert "image0.png" in err and "20" in err and "16" in err


def test_unknown_task_is_refused(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["degrade", "--task", "deblur", "--input", ".", "--output", "x"])
    assert exit.value.code == 2
    assert "deblur" in capsys.readouterr().err


def test_evaluate_names_a_bad_device_or_weights_file_in_one_line(tmp_path, capsys):
    write_images(tmp_path / "targets", count=2, size=16)
    (tmp_path / "junk.pth").write_bytes(b"not weights\n")
    argv = ["evaluate", "--pred", str(tmp_path / "targets"), "--target", str(tmp_path / "targets"),
            "--out", str(tmp_path / "ev.json")]
    cases = {("--device", "gpu"): "--device gpu: not a device name (e.g. cpu, cuda, cuda:1)",
             ("--metrics", "fid", "--inception-weights", str(tmp_path / "junk.pth")):
                 f"{tmp_path / 'junk.pth'}: not a weights file safetensors or torch can read (--inception-weights: "
                 "the FID Inception-v3 weights (TF 2015-12-05 graph))"}
    if not torch.cuda.is_available():
        cases[("--device", "cuda")] = "--device cuda: CUDA is not available on this machine; use --device cpu"
    for flags, message in cases.items():
        assert _error(capsys, argv + list(flags)) == f"palette evaluate: error: {message}\n"
        assert not (tmp_path / "ev.json").exists()


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  stpes: 10\n")
    err = _error(capsys, ["train", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    assert "bad.yaml" in err and "stpes" in err
    err = _error(capsys, ["train", "--config", str(config), "--set", "train.stpes=3"])
    assert "stpes" in err


def test_a_checkpoint_path_without_a_model_is_named(tmp_path, capsys):
    write_images(tmp_path / "in", count=1, size=16)
    err = _error(capsys, ["sample", "--checkpoint", str(tmp_path), "--task", "jpeg", "--input", str(tmp_path / "in"),
                          "--output", str(tmp_path / "o")])
    assert str(tmp_path) in err and "no checkpoint" in err


def test_demo_writes_the_page_and_grids(trained, tmp_path, capsys):
    main(["demo", "--checkpoint", str(trained / "run"), "--output", str(tmp_path / "demo"), "--steps", "2"])
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    cases = {"colorization", "inpainting_free_form_20_30", "inpainting_centre", "uncropping_right", "jpeg"}
    assert names == {"index.html", "denoising.png", "diversity.png"} | {f"{case}.png" for case in cases} \
        | {f"{case}_full.png" for case in cases}
    page = (tmp_path / "demo" / "index.html").read_text()
    assert all(f'src="{name}"' in page for name in names - {"index.html"})
    with Image.open(tmp_path / "demo" / "jpeg.png") as grid:  # 4 examples x (input | output | original), 3x zoom
        assert grid.size == (3 * 16 * 3, 4 * 16 * 3)
    # The first bundled photo (256 px) at its own size: input | output | original, above their 3x zoomed crops.
    with Image.open(tmp_path / "demo" / "inpainting_centre_full.png") as figure, \
            Image.open(example_images()[0]) as original:
        assert figure.size == (3 * 256, 256 + 85 * 3)
        pixels = np.asarray(figure)
        assert np.array_equal(pixels[:256, 512:], np.asarray(original.convert("RGB")))
        zoom = pixels[256:, 512:512 + 255]
        assert np.array_equal(zoom, zoom[::3, ::3].repeat(3, 0).repeat(3, 1)) and zoom.std() > 0
    assert "demo page:" in capsys.readouterr().out


def test_demo_keeps_the_users_photo_and_takes_a_one_row_one(trained, tmp_path, capsys):
    photo = tmp_path / "demo" / "jpeg.png"  # named like a grid the demo writes, in its output folder
    photo.parent.mkdir()
    Image.new("RGB", (10, 1), (200, 30, 30)).save(photo)
    before = photo.read_bytes()
    argv = ["demo", "--checkpoint", str(trained / "run"), "--input", str(photo), "--steps", "1"]
    with pytest.raises(SystemExit):
        main(argv + ["--output", str(tmp_path / "demo")])
    assert f"{photo}: would replace the input {photo}" in capsys.readouterr().err and photo.read_bytes() == before
    main(argv + ["--output", str(tmp_path / "elsewhere")])  # 10x1: the zoom finds the hole's edge below or right
    with Image.open(tmp_path / "elsewhere" / "inpainting_centre_full.png") as figure:
        assert figure.size[0] == 3 * 10


def test_demo_on_a_users_wide_image(trained, tmp_path):
    Image.open(example_images()[1]).convert("RGB").resize((61, 30)).save(tmp_path / "wide.png")
    main(["demo", "--checkpoint", str(trained / "run"), "--input", str(tmp_path / "wide.png"),
          "--output", str(tmp_path / "demo"), "--steps", "2"])
    with Image.open(tmp_path / "demo" / "colorization.png") as grid:
        assert grid.size == (3 * 16 * 3, 16 * 3)
    # A 61x30 photo: 20x10 px crops of the photo's shape, zoomed 3x, fill each panel's width but its last px.
    with Image.open(tmp_path / "demo" / "colorization_full.png") as figure, Image.open(tmp_path / "wide.png") as given:
        pixels = np.asarray(figure)
        assert figure.size == (3 * 61, 30 + 10 * 3)
        original_zoom = pixels[30:, 122:122 + 60]
        assert np.array_equal(original_zoom, original_zoom[::3, ::3].repeat(3, 0).repeat(3, 1))
        crops = [np.asarray(given)[top:top + 10, left:left + 20] for top in range(21) for left in range(42)]
        assert any(np.array_equal(original_zoom[::3, ::3], crop) for crop in crops)
        assert (pixels[30:, 122 + 60] == 0).all()  # 61 - 3 * 20 = 1 px of padding
