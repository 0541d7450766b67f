"""render_report: paper-layout tables from evaluate JSON files, with a bar chart when matplotlib is there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from palette.evaluate import evaluate_folders
from palette.imageio import save_image
from palette.report import render_report


def write_results(path: Path, **fields) -> Path:
    path.write_text(json.dumps(fields))
    return path


@pytest.fixture
def result_files(tmp_path) -> list[Path]:
    palette = write_results(
        tmp_path / "palette.json", model="Palette", task="inpainting", num_images=10, samples_per_input=3,
        metrics={"fid": {"value": 12.345}, "is": {"mean": 20.5, "std": 0.3}, "ca": {"mean": 0.6789, "ci95": 0.01},
                 "ssim": {"mean": 0.91234, "ci95": 0.01}, "swd": {"value": 3.21, "levels": {"64": 3.0}},
                 "fid_proxy_random_inception": {"value": 0.0456}, "diversity_ssim": {"mean": 0.75, "ci95": 0.02}},
        skipped={"pd": "needs --inception-weights FILE"},
        weights={"inception": {"path": "/weights/pt_inception-2015-12-05-6726825d.pth", "sha256": "6726825d" * 8}})
    regression = write_results(tmp_path / "regression.json", model="Regression", task="inpainting",
                               metrics={"fid": {"value": 20.0}, "diversity_ssim": {"mean": 1.0}})
    unnamed = write_results(tmp_path / "baseline-run.json", metrics={"l1": {"mean": 0.123456, "ci95": 0.0}})
    return [palette, regression, unnamed]


def test_tables_follow_the_paper_layout(result_files, tmp_path):
    out = render_report(result_files, tmp_path / "out" / "report.md")
    text = out.read_text()
    header = ("| Model | FID ↓ | IS ↑ | CA ↑ | PD ↓ | L1 ↓ | PSNR ↑ | SSIM ↑ | SWD ↓ | "
              "fid_proxy_random_inception ↓ | Colour ÷ target |")
    assert text.count(header) == 2  # one table per task: inpainting, and the file without a task
    assert "| Palette | 12.35 | 20.50 | 67.9% | – | – | – | 0.912 | 3.21 | 0.046 | – |" in text
    assert "| Regression | 20.00 | – | – | – | – | – | – | – | – | – |" in text
    assert "| baseline-run | – | – | – | – | 0.1235 |" in text  # model from the file stem
    assert "| Model | SSIM ↓ | LPIPS ↓ |" in text
    assert "| Palette | 0.750 | – |" in text and "| Regression | 1.000 | – |" in text
    assert "- pd skipped for Palette (inpainting): needs --inception-weights FILE" in text
    assert "not FID" in text
    # 8 metrics have values: 4 panels a row, 2 rows of 3.2 x 2.8 inches at 120 dpi
    with Image.open(tmp_path / "out" / "report.png") as chart:
        assert chart.size == (4 * 384, 2 * 336)
    assert "![metrics](report.png)" in text


def test_the_report_replaces_neither_its_inputs_nor_another_file_of_its_charts_name(result_files, tmp_path):
    from palette.imageio import ImageError

    kept = {path: path.read_bytes() for path in result_files}
    with pytest.raises(ImageError, match="palette.json: would replace the input"):
        render_report(result_files, result_files[0])
    photo = tmp_path / "targets" / "astronaut.png"
    photo.parent.mkdir()
    Image.new("RGB", (4, 4)).save(photo)
    with pytest.raises(ValueError, match=r"astronaut\.png: exists, and the report's chart beside"):
        render_report(result_files, tmp_path / "targets" / "astronaut.md")
    assert {path: path.read_bytes() for path in kept} == kept and Image.open(photo).size == (4, 4)
    out = render_report(result_files, tmp_path / "report.md")
    assert render_report(result_files, out) == out  # a rerun replaces its own report and chart
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_without_matplotlib_the_chart_is_reported_as_skipped(result_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    text = render_report(result_files, tmp_path / "report.md").read_text()
    assert "Bar chart skipped: matplotlib is not installed" in text
    assert not (tmp_path / "report.png").exists()


def test_report_of_a_real_evaluation(tmp_path):
    """evaluate_folders' JSON (as the CLI writes it) renders; cheap metrics only."""
    for index in range(2):
        target = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(index)) * 2 - 1
        save_image(target, tmp_path / "targets" / f"{index}.png")
        save_image(target, tmp_path / "pred" / f"{index}_0.png")
        save_image(-target, tmp_path / "pred" / f"{index}_1.png")
    results = evaluate_folders(tmp_path / "pred", tmp_path / "targets", metrics=["l1", "ssim", "diversity"],
                               model="copy", task="colorization")
    path = write_results(tmp_path / "copy.json", **results)
    text = render_report([path], tmp_path / "report.md").read_text()
    assert "## colorization" in text
    assert "| copy | – | – | – | – | 0.0000 | – | 1.000 | – | – | – |" in text
    assert "diversity_lpips skipped for all runs: needs --lpips-weights FILE" in text


def test_baseline_rows_get_their_labels_and_no_diversity_row(tmp_path):
    """`--model telea` is shown as OpenCV Telea; one-sample runs leave the diversity table and its notes."""
    needs_samples = "needs >= 2 samples per input (<stem>_0.png, <stem>_1.png, ...); found 1"
    files = [
        write_results(tmp_path / "palette.json", model="palette", task="inpainting", num_images=4, samples_per_input=2,
                      metrics={"l1": {"mean": 0.05}, "diversity_ssim": {"mean": 0.5}}),
        write_results(tmp_path / "input.json", model="input", task="inpainting", num_images=4, samples_per_input=1,
                      metrics={"l1": {"mean": 0.2}, "colourfulness_ratio": {"value": 0.5, "target_mean": 40.0}},
                      skipped={"diversity_ssim": needs_samples}),
        write_results(tmp_path / "telea.json", model="telea", task="inpainting", num_images=4, samples_per_input=1,
                      metrics={"l1": {"mean": 0.1}, "colourfulness_ratio": {"value": 0.876}},
                      skipped={"diversity_ssim": needs_samples}),
    ]
    (tmp_path / "jpeg_q10").mkdir()
    files.append(write_results(tmp_path / "jpeg_q10" / "input.json", model="input", task="jpeg_q10",
                               metrics={"l1": {"mean": 0.04}}))
    text = render_report(files, tmp_path / "report.md").read_text()
    assert f"Results: `{tmp_path.name}/palette.json`, `{tmp_path.name}/input.json`" in text
    assert "`jpeg_q10/input.json`" in text  # same file names: their folders tell them apart
    assert "| degraded input | – | – | – | – | 0.2000 | – | – | – | – | 50% |" in text
    assert "| OpenCV Telea | – | – | – | – | 0.1000 | – | – | – | – | 88% |" in text
    diversity = text.split("| Model | SSIM ↓ | LPIPS ↓ |\n")[1].split("\n\n")[0]
    assert diversity == "|---|---:|---:|\n| palette | 0.500 | – |"
    assert needs_samples not in text
    assert "- Baselines: degraded input is the input as a user has it" in text
    assert "(inpainting as palette.tasks.inpaint_fill, NL-means h = 6)" in text


def test_the_baseline_table_of_a_diversity_only_evaluation_says_why_it_has_no_rows():
    from palette.report import baseline_table

    results = {"model": "palette", "task": "inpainting", "metrics": {"diversity_ssim": {"mean": 0.5}},
               "baselines": {"input": {"metrics": {}, "skipped": {"diversity_ssim": "needs >= 2 samples"}}}}
    assert baseline_table(results) == "No baseline rows: the metrics asked for need several samples per input."
    results["metrics"]["l1"] = {"mean": 0.05}
    assert baseline_table(results).splitlines()[1:3] == ["| Model | L1 ↓ |", "|---|---:|"]


def test_bad_input_files_are_named(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        render_report([tmp_path / "broken.json"], tmp_path / "report.md")
