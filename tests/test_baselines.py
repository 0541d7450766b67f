"""OpenCV baselines: holes filled close to a known gradient, JPEG artefacts reduced, folders and the CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from palette.baselines import BASELINE_LABELS, BASELINES, METHODS, apply_baseline, baseline_folder
from palette.cli import main
from palette.degrade import degrade_folder
from palette.evaluate import evaluate_folders
from palette.imageio import load_image, pil_to_tensor
from palette.report import render_report
from palette.tasks import TASKS

SIZE = 64


def gradient() -> np.ndarray:
    """A smooth uint8 RGB ramp: red grows to the right, green downwards, blue falls along the diagonal."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([2 + 3.5 * cols, 2 + 3.5 * rows, 200 - 1.5 * (rows + cols)], axis=-1).round().astype(np.uint8)


def centre_hole() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[24:40, 24:40] = 1
    return mask


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((image.astype(np.float64) - reference) ** 2)))


def test_every_task_has_an_entry_and_every_method_a_label():
    assert set(BASELINES) == set(TASKS)
    assert BASELINES["colorization"] == () and BASELINES["jpeg"] == ("nlmeans",)
    assert set(BASELINE_LABELS) == {"input", *METHODS}


@pytest.mark.parametrize(("method", "bound"), [("telea", 7.0), ("navier_stokes", 6.0)])  # measured 5.70, 4.46
def test_inpainting_fills_a_gradient_hole_and_keeps_known_pixels(method, bound):
    """Mean error in the hole on 0..255; the mid-gray a user's hole holds is off by 19.75 there."""
    image, mask = gradient(), centre_hole()
    holed = image.copy()
    holed[mask > 0] = 128
    filled = apply_baseline(method, holed, mask)
    hole_error = np.abs(filled.astype(np.float64) - image)[mask > 0]
    assert hole_error.mean() < bound
    assert np.abs(holed.astype(np.float64) - image)[mask > 0].mean() == pytest.approx(19.75)
    assert np.array_equal(filled[mask == 0], holed[mask == 0])


def test_tensors_in_minus_one_to_one_keep_their_known_values_exactly():
    holed = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1  # not on the 8-bit grid
    mask = torch.from_numpy(centre_hole())[None]
    filled = apply_baseline("telea", holed, mask)
    assert filled.shape == holed.shape and filled.dtype == holed.dtype
    assert torch.equal(filled[:, mask[0] == 0], holed[:, mask[0] == 0])
    assert not torch.equal(filled[:, mask[0] > 0], holed[:, mask[0] > 0])


def test_nlmeans_improves_a_jpeg_at_quality_10():
    """A smooth image (bicubic 4x4 -> 64x64) through JPEG Q=10: 26.95 dB, 28.11 dB after NL-means."""
    coarse = np.random.default_rng(0).uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((SIZE, SIZE), Image.BICUBIC))
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="JPEG", quality=10)
    jpeg = np.asarray(Image.open(buffer).convert("RGB"))
    assert psnr(apply_baseline("nlmeans", jpeg), smooth) > psnr(jpeg, smooth) + 0.8


def test_masks_are_checked():
    with pytest.raises(ValueError, match="needs a mask"):
        apply_baseline("telea", gradient())
    with pytest.raises(ValueError, match="takes no mask"):
        apply_baseline("nlmeans", gradient(), centre_hole())
    with pytest.raises(ValueError, match=r"mask shape \(8, 8\)"):
        apply_baseline("telea", gradient(), np.zeros((8, 8)))


def test_cli_writes_one_png_per_input(image_folder, tmp_path, capsys):
    degrade_folder("inpainting", image_folder, tmp_path / "set", size=32, mask_kind="centre")
    degrade_folder("jpeg", image_folder, tmp_path / "jpeg", size=32, quality=10)
    main(["baseline", "--task", "inpainting", "--method", "telea", "--input", str(tmp_path / "set" / "inputs"),
          "--mask", str(tmp_path / "set" / "masks"), "--output", str(tmp_path / "telea")])
    names = ["image0.png", "image1.png", "image2.png"]
    assert sorted(path.name for path in (tmp_path / "telea").iterdir()) == names  # no temporary files left
    assert "wrote 3 image(s)" in capsys.readouterr().out
    for name in names:
        known = load_image(tmp_path / "set" / "masks" / name, "L") < 0
        written, given = load_image(tmp_path / "telea" / name), load_image(tmp_path / "set" / "inputs" / name)
        assert torch.equal(written[:, known[0]], given[:, known[0]])
        assert written[:, ~known[0]].abs().mean() > 0.05  # the mid-gray hole (0) is filled
    written = baseline_folder("jpeg", "nlmeans", tmp_path / "jpeg" / "inputs", tmp_path / "nlmeans")
    assert [path.name for path in written] == names  # .jpg inputs, .png outputs
    assert pil_to_tensor(Image.open(written[0])).shape == (3, 32, 32)


def test_an_unknown_method_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["baseline", "--task", "inpainting", "--method", "nlmeans", "--input", str(tmp_path),
              "--output", str(tmp_path / "out")])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err == ("palette baseline: error: unknown method 'nlmeans' for task inpainting; "
                                       "valid methods: telea, navier_stokes\n")
    with pytest.raises(ValueError, match="needs a mask folder"):
        baseline_folder("uncropping", "navier_stokes", tmp_path, tmp_path / "out")


def test_evaluate_scores_the_input_and_opencv_beside_the_model(image_folder, tmp_path, capsys):
    degrade_folder("inpainting", image_folder, tmp_path / "set", size=32, mask_kind="centre")
    inputs, targets, masks = (tmp_path / "set" / name for name in ("inputs", "targets", "masks"))
    baseline_folder("inpainting", "telea", inputs, tmp_path / "mine", mask_dir=masks)  # a "model" that is Telea
    common = ["evaluate", "--pred", str(tmp_path / "mine"), "--target", str(targets), "--input", str(inputs),
              "--model", "mine", "--metrics", "l1,psnr,swd"]
    main(common + ["--task", "inpainting", "--out", str(tmp_path / "mine.json")])
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "mine.json").read_text())
    rows = results["baselines"]
    assert list(rows) == ["input", "telea", "navier_stokes"]
    assert rows["telea"]["metrics"] == results["metrics"]  # the same restoration, scored alike
    baseline_folder("inpainting", "navier_stokes", inputs, tmp_path / "ns", mask_dir=masks)
    alone = evaluate_folders(tmp_path / "ns", targets, input_dir=inputs, metrics=["l1", "psnr", "swd"])
    assert rows["navier_stokes"]["metrics"] == alone["metrics"]
    assert rows["input"]["metrics"]["psnr"]["mean"] < rows["navier_stokes"]["metrics"]["psnr"]["mean"] - 3
    for label in ("| mine |", "| degraded input |", "| OpenCV Telea |", "| OpenCV Navier-Stokes |"):
        assert label in printed.split("Beside what a user already has:")[1]
    report = render_report([tmp_path / "mine.json"], tmp_path / "report.md").read_text()
    assert report.count("| OpenCV Navier-Stokes |") == 1 and "Results: `mine.json`" in report

    main(common + ["--task", "inpainting_centre", "--no-baselines", "--out", str(tmp_path / "bare.json")])
    assert "baselines" not in json.loads((tmp_path / "bare.json").read_text())
    main(common + ["--task", "inpainting_centre", "--out", str(tmp_path / "named.json")])  # a set's name: no methods
    assert list(json.loads((tmp_path / "named.json").read_text())["baselines"]) == ["input"]
    assert "(--task inpainting|uncropping|jpeg adds OpenCV's rows)" in capsys.readouterr().out


def test_baseline_rows_skip_diversity_that_the_model_row_gets(image_folder, tmp_path, capsys):
    """Two samples per input: the model row measures diversity; each one-sample baseline row skips it."""
    degrade_folder("inpainting", image_folder, tmp_path / "set", size=32, mask_kind="centre")
    inputs, targets, masks = (tmp_path / "set" / name for name in ("inputs", "targets", "masks"))
    (tmp_path / "mine").mkdir()
    for k, method in enumerate(("telea", "navier_stokes")):  # sample 0 is Telea's, sample 1 Navier-Stokes'
        for path in baseline_folder("inpainting", method, inputs, tmp_path / method, mask_dir=masks):
            path.rename(tmp_path / "mine" / f"{path.stem}_{k}.png")
    main(["evaluate", "--pred", str(tmp_path / "mine"), "--target", str(targets), "--input", str(inputs),
          "--task", "inpainting", "--metrics", "psnr,diversity", "--out", str(tmp_path / "ev.json")])
    results = json.loads((tmp_path / "ev.json").read_text())
    assert (results["num_images"], results["samples_per_input"]) == (3, 2)
    assert list(results["metrics"]) == ["psnr", "diversity_ssim"]
    assert 0.5 < results["metrics"]["diversity_ssim"]["mean"] < 1  # the two fills differ only in the hole
    rows = results["baselines"]
    assert list(rows) == ["input", "telea", "navier_stokes"]
    assert rows["telea"]["metrics"] == {"psnr": results["metrics"]["psnr"]}
    for row in rows.values():
        assert (row["samples_per_input"], list(row["metrics"])) == (1, ["psnr"])
        assert list(row["skipped"]) == ["diversity_ssim", "diversity_lpips"]
        assert all(reason.endswith("needs >= 2 samples per input (<stem>_0.png, <stem>_1.png, ...); found 1")
                   for reason in row["skipped"].values())
    assert "| OpenCV Navier-Stokes |" in capsys.readouterr().out


def test_a_rerun_with_the_output_inside_the_input_folder_reads_only_the_inputs(image_folder, tmp_path, capsys):
    degrade_folder("jpeg", image_folder, tmp_path / "set", size=32, quality=10)
    inputs = tmp_path / "set" / "inputs"
    names = ["image0.png", "image1.png", "image2.png"]
    for _ in range(2):
        main(["baseline", "--task", "jpeg", "--method", "nlmeans", "--input", str(inputs),
              "--output", str(inputs / "nlm")])
        assert "wrote 3 image(s)" in capsys.readouterr().out
    assert sorted(path.relative_to(inputs / "nlm").as_posix() for path in (inputs / "nlm").rglob("*")) == names
