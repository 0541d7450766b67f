"""CLI round trips: train tiny -> degrade -> sample for every task, and bad inputs with clear errors."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from palette.cli import main
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
    with pytest.warns(UserWarning, match="resized to the model's 16x16"):
        main(argv)
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == sorted(f"{p.stem}_{k}.png" for p in inputs for k in range(2))
    for name in outputs:
        with Image.open(tmp_path / "out" / name) as image:
            assert image.size == (24, 24) and image.mode == "RGB"
    if task in ("inpainting", "uncropping"):
        # Known pixels of the user's input come back untouched, even through the resize.
        stem = inputs[0].stem
        with Image.open(inputs[0]) as given, Image.open(tmp_path / "set" / "masks" / f"{stem}.png") as mask, \
                Image.open(tmp_path / "out" / f"{stem}_0.png") as result:
            known = [i for i, m in enumerate(mask.convert("L").getdata()) if m < 128]
            given_pixels, result_pixels = list(given.convert("RGB").getdata()), list(result.getdata())
            assert known and all(given_pixels[i] == result_pixels[i] for i in known)
    if task == "colorization":
        # The given luma comes back at full size, up to 8-bit rounding; only chroma was generated.
        for path in inputs:
            with Image.open(path) as given, Image.open(tmp_path / "out" / f"{path.stem}_0.png") as result:
                gray = np.asarray(given.convert("L"), dtype=np.float64)
                rgb = np.asarray(result, dtype=np.float64)
            assert np.abs(rgb @ np.array(LUMA_WEIGHTS) - gray).max() <= 1.0


def test_sampling_a_single_file_at_model_size(trained, tmp_path):
    write_images(tmp_path / "gray", count=1, size=16)
    main(["sample", "--checkpoint", str(trained / "run" / "checkpoints" / "step_00000002" / "ema.safetensors"),
          "--task", "colorization", "--input", str(tmp_path / "gray" / "image0.png"), "--output", str(tmp_path / "o"),
          "--sampler", "ddpm", "--steps", "2"])
    assert (tmp_path / "o" / "image0.png").is_file()


def test_resume_via_cli_extends_the_run(trained, tmp_path):
    main(["train", "--resume", str(trained / "run"), "--set", "train.steps=3"])
    assert (trained / "run" / "checkpoints" / "step_00000003").is_dir()


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


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("train:\n  stpes: 10\n")
    err = _error(capsys, ["train", "--config", str(config), "--run-dir", str(tmp_path / "run")])
    assert "bad.yaml" in err and "stpes" in err
    err = _error(capsys, ["train", "--config", str(config), "--set", "train.stpes=3"])
    assert "stpes" in err


def test_a_checkpoint_path_without_a_model_is_named(tmp_path, capsys):
    err = _error(capsys, ["sample", "--checkpoint", str(tmp_path), "--task", "jpeg", "--input", str(tmp_path),
                          "--output", str(tmp_path / "o")])
    assert str(tmp_path) in err and "no checkpoint" in err


def test_demo_writes_the_page_and_grids(trained, tmp_path, capsys):
    main(["demo", "--checkpoint", str(trained / "run"), "--output", str(tmp_path / "demo"), "--steps", "2"])
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert names == {"index.html", "colorization.png", "inpainting_free_form_20_30.png", "inpainting_centre.png",
                     "uncropping.png", "jpeg.png", "denoising.png", "diversity.png"}
    page = (tmp_path / "demo" / "index.html").read_text()
    assert all(f'src="{name}"' in page for name in names - {"index.html"})
    with Image.open(tmp_path / "demo" / "jpeg.png") as grid:  # 4 examples x (input | output | original), 3x zoom
        assert grid.size == (3 * 16 * 3, 4 * 16 * 3)
    assert "demo page:" in capsys.readouterr().out


def test_demo_on_a_users_image(trained, tmp_path):
    write_images(tmp_path / "mine", count=1, size=30)
    main(["demo", "--checkpoint", str(trained / "run"), "--input", str(tmp_path / "mine" / "image0.png"),
          "--output", str(tmp_path / "demo"), "--steps", "2"])
    with Image.open(tmp_path / "demo" / "colorization.png") as grid:
        assert grid.size == (3 * 16 * 3, 16 * 3)
