"""Markdown tables in the layout of Palette's result tables, from `palette evaluate` JSON files.

    render_report(["runs/palette-inpainting.json", "runs/regression-inpainting.json"], "report.md")
    # CLI: palette report runs/*.json --out report.md   (also report.png when matplotlib is installed)

One table per task (Model | FID | IS | CA | PD | L1 | PSNR | SSIM | SWD | fid_proxy_random_inception | colourfulness
relative to the targets) and a sample-diversity table (Palette §5.4) of the runs with several samples per input.
A metric that was skipped or not computed shows as "–". Runs evaluated as `--model input|telea|navier_stokes|
nlmeans` are the baselines of `palette.baselines` and get their labels ("degraded input", "OpenCV Telea", ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .baselines import BASELINE_LABELS, BASELINES, NLMEANS_STRENGTH
from .evaluate import headline_value
from .files import ensure_folder, write_atomic
from .imageio import refuse_writing_over

# (header, metric, format); CA is stored as a fraction and shown in percent like the paper.
QUALITY_COLUMNS = (
    ("FID ↓", "fid", "{:.2f}"),
    ("IS ↑", "is", "{:.2f}"),
    ("CA ↑", "ca", "{:.1%}"),
    ("PD ↓", "pd", "{:.2f}"),
    ("L1 ↓", "l1", "{:.4f}"),
    ("PSNR ↑", "psnr", "{:.2f}"),
    ("SSIM ↑", "ssim", "{:.3f}"),
    ("SWD ↓", "swd", "{:.2f}"),
    ("fid_proxy_random_inception ↓", "fid_proxy_random_inception", "{:.3f}"),
    ("Colour ÷ target", "colourfulness_ratio", "{:.0%}"),
)
DIVERSITY_COLUMNS = (("SSIM ↓", "diversity_ssim", "{:.3f}"), ("LPIPS ↓", "diversity_lpips", "{:.3f}"))
NO_TASK = "task not recorded"


@dataclass(frozen=True)
class _Run:
    source: Path
    model: str
    task: str
    results: dict[str, Any]

    def value(self, metric: str) -> float | None:
        entry = self.results.get("metrics", {}).get(metric)
        return None if entry is None else headline_value(entry)


def _load_runs(path: str | Path) -> list[_Run]:
    """The run of an evaluate JSON file, then the baselines evaluated beside it (`palette evaluate --input`)."""
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable evaluate JSON file ({error})") from error
    if not isinstance(results, dict) or "metrics" not in results:
        raise ValueError(f"{path}: no 'metrics' entry; expected the output of palette evaluate --out")
    return _runs(results, path)


def _runs(results: dict[str, Any], source: Path) -> list[_Run]:
    model = results.get("model") or source.stem
    task = results.get("task") or NO_TASK
    return [_Run(source, BASELINE_LABELS.get(model, model), task, results)] + [
        _Run(source, BASELINE_LABELS.get(key, key), task, baseline)
        for key, baseline in results.get("baselines", {}).items()]


def baseline_table(results: dict[str, Any]) -> str:
    """A heading and a Markdown table of a model's results beside the baselines evaluated with it
    (`evaluate_baselines`); the heading says how to add OpenCV's rows where the task named none."""
    runs = _runs(results, Path(results.get("pred_dir") or "model"))
    columns = [column for column in QUALITY_COLUMNS if any(run.value(column[1]) is not None for run in runs)]
    restorable = "|".join(task for task, methods in BASELINES.items() if methods)
    hint = "" if results.get("task") in BASELINES else f" (--task {restorable} adds OpenCV's rows)"
    if not columns:  # diversity only: one sample per input has none
        return "No baseline rows: the metrics asked for need several samples per input."
    return "\n".join([f"Beside what a user already has{hint}:", *_table(runs, columns)])


def _single_sample(run: _Run) -> bool:
    """One sample per input: no diversity to measure (baselines and single-sample runs)."""
    return run.results.get("samples_per_input") == 1


def _table(runs: Sequence[_Run], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    lines = ["| Model | " + " | ".join(header for header, _, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for run in runs:
        cells = []
        for _, metric, template in columns:
            value = run.value(metric)
            cells.append("–" if value is None else template.format(value))
        lines.append(f"| {run.model} | " + " | ".join(cells) + " |")
    return lines


def _bar_chart(runs: Sequence[_Run], path: Path) -> Path | None:
    """One bar panel per metric that any run has; None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone
    except ImportError:
        return None
    columns = [c for c in QUALITY_COLUMNS + DIVERSITY_COLUMNS if any(run.value(c[1]) is not None for run in runs)]
    several_tasks = len({run.task for run in runs}) > 1
    labels = [f"{run.model}\n{run.task}" if several_tasks else run.model for run in runs]
    panels_per_row = min(4, max(1, len(columns)))
    rows = max(1, math.ceil(len(columns) / panels_per_row))
    figure = Figure(figsize=(3.2 * panels_per_row, 2.8 * rows), layout="constrained")
    for index, (header, metric, _) in enumerate(columns):
        axes = figure.add_subplot(rows, panels_per_row, index + 1)
        values = [run.value(metric) for run in runs]
        axes.bar(range(len(runs)), [math.nan if v is None else v for v in values], color="tab:blue")
        axes.set_xticks(range(len(runs)), labels, rotation=30, ha="right", fontsize=7)
        axes.set_title(("diversity " if metric.startswith("diversity_") else "") + header, fontsize=9)
    ensure_folder(path)
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=120, format="png"))
    return path


def render_report(result_files: Sequence[str | Path], out: str | Path) -> Path:
    """Write a Markdown report of the given evaluate results (and a PNG bar chart beside it); returns its path."""
    if not result_files:
        raise ValueError("render_report needs at least one evaluate JSON file")
    runs = [run for path in result_files for run in _load_runs(path)]
    out = Path(out)
    sources = [Path(path) for path in result_files]
    chart_path = out.with_suffix(".png")
    refuse_writing_over([out, chart_path], sources)
    if chart_path.exists() and not out.exists():  # a rerun replaces its own chart, never another file
        raise ValueError(f"{chart_path}: exists, and the report's chart beside {out} would replace it; "
                         "choose another --out")
    names = [source.name for source in sources]
    if len(set(names)) < len(names):  # validate.sh writes <set>/<model>.json: name the folder too
        names = [f"{source.parent.name}/{source.name}" for source in sources]
    lines = ["# Palette evaluation", "", "Results: " + ", ".join(f"`{name}`" for name in names), ""]
    for task in dict.fromkeys(run.task for run in runs):
        task_runs = [run for run in runs if run.task == task]
        lines += [f"## {task}", "", *_table(task_runs, QUALITY_COLUMNS), ""]
        counts = ", ".join(f"{run.model}: {run.results.get('num_images', '?')} images, "
                           f"{run.results.get('samples_per_input', '?')} sample(s) each" for run in task_runs)
        lines += [f"Images: {counts}.", ""]
        sampled = [run for run in task_runs if not _single_sample(run)]
        if sampled:
            lines += ["Sample diversity: mean similarity of each input's first sample to its other samples "
                      "(lower = more diverse; needs 2 or more samples per input).", "",
                      *_table(sampled, DIVERSITY_COLUMNS), ""]

    lines += ["## Notes", "",
              "- L1, PSNR (MAX = 1) and SSIM are on [0, 1] intensities, mean over images; CA is top-1 accuracy.",
              "- SWD is PGGAN's sliced Wasserstein distance on Laplacian-pyramid patches, x 1e3, mean over levels.",
              "- fid_proxy_random_inception is FID's formula on a fixed-seed *randomly initialised* Inception-v3. "
              "It is not FID and cannot be compared with published FIDs; it only ranks runs evaluated alike.",
              "- Colour ÷ target is the mean colourfulness (Hasler & Süsstrunk 2003) of the outputs over the "
              "targets'; 100% matches them, a gray output scores 0%."]
    if any(run.model in BASELINE_LABELS.values() for run in runs):
        lines.append(f"- Baselines: {BASELINE_LABELS['input']} is the input as a user has it (gray, mid-gray hole, "
                     f"decoded JPEG); the OpenCV rows are `palette baseline` outputs (inpainting as "
                     f"palette.tasks.inpaint_fill, NL-means h = {NLMEANS_STRENGTH}).")
    # One line per distinct reason, naming the metrics and the runs it applies to.
    skipped: dict[str, tuple[dict[str, None], dict[str, None]]] = {}
    for run in runs:
        for metric, reason in run.results.get("skipped", {}).items():
            if metric.startswith("diversity_") and _single_sample(run):
                continue  # such runs have no row in the diversity table
            metrics, names = skipped.setdefault(reason, ({}, {}))
            metrics[metric] = names[f"{run.model} ({run.task})"] = None
    for reason, (metrics, names) in skipped.items():
        scope = "all runs" if len(names) == len(runs) else ", ".join(names)
        lines.append(f"- {', '.join(metrics)} skipped for {scope}: {reason}")
    for run in runs:
        for kind, found in run.results.get("weights", {}).items():
            lines.append(f"- {run.model} ({run.task}): {kind} weights {Path(found['path']).name}, "
                         f"sha256 {found['sha256'][:12]}…")
        lines += [f"- {run.model} ({run.task}): {note}" for note in run.results.get("notes", [])]

    chart = _bar_chart(runs, chart_path)
    lines += ["", f"![metrics]({chart.name})" if chart else
              "Bar chart skipped: matplotlib is not installed (pip install 'palette[report]')."]
    ensure_folder(out)
    write_atomic(out, lambda temporary: temporary.write_text("\n".join(lines) + "\n"))
    return out
