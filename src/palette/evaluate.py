"""Metrics over folders of outputs and targets: the numbers of Palette's tables (Saharia et al. 2022, §5).

    results = evaluate_folders("out/samples", "eval/targets", inception_weights="pt_inception-2015-12-05-6726825d.pth")
    print(format_table(results))
    # CLI: palette evaluate --pred out/samples --target eval/targets --inception-weights FILE --out results.json

Predictions are matched to targets by their path relative to the folder, without suffix: `<stem>.png` is
the single sample for target `<stem>.*`, and `<stem>_0.png, <stem>_1.png, ...` are K samples of it.
Every single-sample metric uses the lowest-numbered sample; only sample diversity looks at the others.

The metrics live in `palette.metrics` (and the file pairing in `palette.metrics.folders`); this module picks
the metrics that can run, streams the images through them once and collects the numbers. Colourfulness is
reported for the predictions and as a ratio to the targets', so "at least 70% of the targets' colourfulness"
is one number. Nothing is ever downloaded: a metric asked for by name whose weights are missing raises
MissingWeightsError naming the flag; one only implied by the default set lands in `skipped` with the same hint.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import check_device
from .imageio import load_image
from .masks import load_mask
from .metrics.distribution import (IS_SPLITS, KID_SUBSETS, feature_statistics, fid_from_features, frechet_distance,
                                   inception_score, kernel_inception_distance, load_reference_stats,
                                   save_reference_stats)
from .metrics.folders import (FolderMismatchError, ImagePair, image_sizes, keyed_images, known_region_dirs,
                              match_predictions, pair_class_ids)
from .metrics.networks import (FID_INCEPTION_SHA256_PREFIX, PROXY_INCEPTION_SEED, MissingWeightsError, WeightsFile,
                               fid_inception, find_weights, imagenet_input, load_network, random_fid_inception_state,
                               run_by_size, weights_hint)
from .metrics.pixel import colourfulness, l1_error, psnr, ssim
from .metrics.swd import SWD_SETTINGS, SlicedWassersteinCollector

DIVERSITY_METRICS = ("diversity_ssim", "diversity_lpips")  # they compare the samples of one input
TOO_FEW_SAMPLES = "needs >= 2 samples per input (<stem>_0.png, <stem>_1.png, ...); found {}"
# Every metric, in the order tables list them.
METRIC_NAMES = ("l1", "psnr", "ssim", "colourfulness", "colourfulness_ratio", "known_region_l1", "swd",
                "fid_proxy_random_inception", "fid", "fid_reference", "is", "kid", "pd", "ca", *DIVERSITY_METRICS)
METRIC_ALIASES = {"diversity": DIVERSITY_METRICS, "lpips": ("diversity_lpips",)}
PER_IMAGE_METRICS = ("l1", "psnr", "ssim", "colourfulness", "known_region_l1", "pd", "ca", *DIVERSITY_METRICS)


def _to_unit(image: torch.Tensor) -> torch.Tensor:
    return (image + 1) / 2


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _mean_ci(values: torch.Tensor) -> dict[str, Any]:
    """Mean and 95% confidence half-width 1.96 std / sqrt(n) (normal approximation)."""
    values = values.double()
    count = values.numel()
    half_width = 1.96 * float(values.std()) / math.sqrt(count) if count > 1 else None
    return {"mean": float(values.mean()), "ci95": half_width, "n": count}


def _similarity_to_first(samples: torch.Tensor, similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                         ) -> float:
    """Palette §5.4: mean similarity between the first sample and each other sample of one input."""
    others = samples[1:]
    return float(similarity(samples[:1].expand_as(others), others).mean())


@dataclass(frozen=True)
class _Setup:
    """What the data and the caller provide, which decides the metrics that can run."""

    num_images: int
    samples_per_input: int
    sizes: frozenset[tuple[int, int]]
    weights: dict[str, WeightsFile | None]
    labels: str | Path | None
    reference_stats: str | Path | None
    known_region: tuple[Path, Path] | None  # (input dir, masks dir)


def _missing_requirements(metric: str, setup: _Setup) -> tuple[bool, list[str]]:
    """(whether weights are among them, what `metric` lacks)."""
    lacks: list[tuple[bool, str]] = []

    def need_weights(kind: str) -> None:
        if setup.weights[kind] is None:
            lacks.append((True, weights_hint(kind)))

    def need(condition: bool, message: str) -> None:
        if not condition:
            lacks.append((False, message))

    if metric in ("fid", "fid_reference", "is", "kid"):
        need_weights("inception")
    if metric in ("fid", "fid_reference", "kid", "fid_proxy_random_inception"):
        need(setup.num_images >= 2, f"needs >= 2 images for a covariance; found {setup.num_images}")
    if metric == "fid_reference":
        need(setup.reference_stats is not None, "needs reference statistics: pass --reference-stats FILE.npz")
    if metric == "pd" and setup.weights["inception_v1"] is None:
        need_weights("inception")
    if metric == "ca":
        need_weights("resnet50")
        need(setup.labels is not None, "needs ImageNet labels: pass --labels FILE (stem -> class id)")
    if metric in DIVERSITY_METRICS:
        need(setup.samples_per_input >= 2, TOO_FEW_SAMPLES.format(setup.samples_per_input))
    if metric == "diversity_lpips":
        need_weights("lpips")
    if metric == "swd":
        need(len(setup.sizes) == 1, f"needs every image at one size; found {sorted(setup.sizes)} (HxW)")
    if metric == "known_region_l1":
        need(setup.known_region is not None, "needs --input DIR and masks (DIR/../masks or masks_dir)")
    return any(is_weights for is_weights, _ in lacks), [message for _, message in lacks]


def _requested(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(explicit, implied): the metrics that `names` ask for and those an alias only implies."""
    explicit, implied = [], []
    for name in (n.strip().lower() for n in names if n.strip()):
        if name in METRIC_ALIASES:  # "diversity": SSIM surely, LPIPS when its weights are there
            first, *rest = METRIC_ALIASES[name]
            explicit.append(first)
            implied += rest
        elif name in METRIC_NAMES:
            explicit.append(name)
        else:
            choices = ", ".join(METRIC_NAMES + tuple(METRIC_ALIASES))
            raise ValueError(f"unknown metric {name!r}; choose from {choices}")
    return explicit, implied


def one_sample_metrics(requested: Sequence[str] | None) -> tuple[list[str] | None, dict[str, str]]:
    """The metrics of `requested` that a run with one sample per input (a baseline's) computes, and those it skips."""
    if requested is None:
        return None, {}
    explicit, implied = _requested(requested)
    skipped = {name: TOO_FEW_SAMPLES.format(1) for name in DIVERSITY_METRICS if name in explicit + implied}
    return [name for name in explicit if name not in skipped], skipped


def _select_metrics(requested: Sequence[str] | None, setup: _Setup) -> tuple[list[str], dict[str, str]]:
    """The metrics to compute and the implied ones skipped; a requested metric that cannot run raises."""
    if requested is None:
        implied = [name for name in METRIC_NAMES if name not in ("fid_reference", "known_region_l1")]
        implied += ["fid_reference"] if setup.reference_stats is not None else []
        implied += ["known_region_l1"] if setup.known_region is not None else []
        explicit: list[str] = []
    else:
        explicit, implied = _requested(requested)
    selected, skipped = [], {}
    for name in METRIC_NAMES:
        if name not in explicit and name not in implied:
            continue
        is_weights, lacks = _missing_requirements(name, setup)
        if not lacks:
            selected.append(name)
        elif name in explicit:
            error = MissingWeightsError if is_weights else ValueError
            raise error(f"metric {name} " + "; ".join(lacks))
        else:
            skipped[name] = "; ".join(lacks)
    return selected, skipped


def _load_networks(selected: Sequence[str], weights: Mapping[str, WeightsFile | None], need_inception: bool,
                   device: torch.device) -> tuple[dict[str, nn.Module], dict[str, WeightsFile]]:
    """The networks the selected metrics need, and the weights files they were loaded from."""
    wanted = {
        "inception": need_inception,
        "resnet50": "ca" in selected,
        "inception_v1": "pd" in selected and weights["inception_v1"] is not None,
        "lpips": "diversity_lpips" in selected,
    }
    networks, used = {}, {}
    for kind, needed in wanted.items():
        if needed:
            networks[kind] = load_network(kind, weights[kind].path).to(device)
            used[kind] = weights[kind]
    if "fid_proxy_random_inception" in selected:
        networks["proxy"] = fid_inception(random_fid_inception_state(), ["2048"]).to(device)
    return networks, used


def _collect(pairs: Sequence[ImagePair], selected: Sequence[str], networks: Mapping[str, nn.Module],
             samples_per_input: int, known_region: tuple[Path, Path] | None,
             swd: SlicedWassersteinCollector | None, batch_size: int, device: torch.device
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One pass over the images: per-image values [N] by metric, and network outputs [N, D] by name."""
    per_image: dict[str, list[float]] = defaultdict(list)
    outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
    pixel_metrics = [(name, fn) for name, fn in (("l1", l1_error), ("psnr", psnr), ("ssim", ssim)) if name in selected]
    inputs, masks = (keyed_images(known_region[0]), keyed_images(known_region[1])) if known_region else ({}, {})

    def imagenet(kind: str, centre_crop: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda images: networks[kind](imagenet_input(_to_unit(images), centre_crop))

    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        targets = [load_image(pair.target).to(device) for pair in batch]
        preds = [load_image(pair.samples[0]).to(device) for pair in batch]
        for pair, pred, target in zip(batch, preds, targets):
            for name, metric in pixel_metrics:
                per_image[name].append(float(metric(_to_unit(pred)[None], _to_unit(target)[None])))
            if "colourfulness" in selected or "colourfulness_ratio" in selected:
                per_image["colourfulness"].append(float(colourfulness(_to_unit(pred)[None])))
                per_image["target_colourfulness"].append(float(colourfulness(_to_unit(target)[None])))
            if "known_region_l1" in selected:
                if pair.key not in inputs or pair.key not in masks:
                    raise FolderMismatchError(f"known_region_l1: no input or mask named {pair.key} in "
                                              f"{known_region[0]} / {known_region[1]}")
                known = 1 - load_mask(masks[pair.key], *pred.shape[-2:]).to(device)
                error = (_to_unit(pred) - _to_unit(load_image(inputs[pair.key]).to(device))).abs()
                known_values = (known.sum() * len(pred)).clamp_min(1)  # mask [1, H, W] covers every channel
                per_image["known_region_l1"].append(float((error * known).sum() / known_values))
            if any(name in selected for name in DIVERSITY_METRICS):
                samples = torch.stack([load_image(path) for path in pair.samples[:samples_per_input]]).to(device)
                with torch.inference_mode():
                    if "diversity_ssim" in selected:
                        per_image["diversity_ssim"].append(_similarity_to_first(_to_unit(samples), ssim))
                    if "diversity_lpips" in selected:
                        per_image["diversity_lpips"].append(_similarity_to_first(samples, networks["lpips"]))
        if swd is not None:
            swd.add(torch.stack(preds), torch.stack(targets))
        uint8_preds, uint8_targets = [_to_uint8(x) for x in preds], [_to_uint8(x) for x in targets]
        if "inception" in networks:
            pool, logits = run_by_size(networks["inception"], uint8_preds)
            outputs["pred_pool"].append(pool)
            outputs["pred_logits"].append(logits)
            outputs["target_pool"].append(run_by_size(networks["inception"], uint8_targets)[0])
        if "proxy" in networks:
            outputs["proxy_pred"].append(run_by_size(networks["proxy"], uint8_preds)[0])
            outputs["proxy_target"].append(run_by_size(networks["proxy"], uint8_targets)[0])
        if "resnet50" in networks:
            outputs["class_logits"].append(run_by_size(imagenet("resnet50", centre_crop=True), preds)[0])
        if "inception_v1" in networks:  # whole image to 224: a centre crop would hide uncropped borders
            outputs["v1_pred"].append(run_by_size(imagenet("inception_v1", centre_crop=False), preds)[0])
            outputs["v1_target"].append(run_by_size(imagenet("inception_v1", centre_crop=False), targets)[0])
    return ({name: torch.tensor(values, dtype=torch.float64) for name, values in per_image.items()},
            {name: torch.cat(parts) for name, parts in outputs.items()})


def evaluate_folders(
    pred_dir: str | Path,
    target_dir: str | Path,
    input_dir: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    inception_weights: str | Path | None = None,
    resnet50_weights: str | Path | None = None,
    inception_v1_weights: str | Path | None = None,
    lpips_weights: str | Path | None = None,
    reference_stats: str | Path | None = None,
    labels: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    save_stats: str | Path | None = None,
    model: str | None = None,
    task: str | None = None,
    masks_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of predictions against targets; a JSON-ready dict (see the module docstring for conventions).

    `metrics=None` runs every metric whose weights and data are there and lists the others in `skipped`.
    `save_stats` writes the targets' FID Inception mean and covariance (.npz) for a later `reference_stats`.
    `masks_dir` (default: `input_dir/../masks` when it exists) enables known_region_l1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = check_device(device)
    pairs = match_predictions(pred_dir, target_dir)
    samples_per_input = min(len(pair.samples) for pair in pairs)
    sizes = image_sizes(pairs, samples_per_input)
    weights = {kind: find_weights(kind, given) for kind, given in (
        ("inception", inception_weights), ("resnet50", resnet50_weights),
        ("inception_v1", inception_v1_weights), ("lpips", lpips_weights))}
    setup = _Setup(len(pairs), samples_per_input, sizes, weights, labels, reference_stats,
                   known_region_dirs(input_dir, masks_dir))
    selected, skipped = _select_metrics(metrics, setup)
    inception = weights["inception"]
    if save_stats is not None and inception is None:
        raise MissingWeightsError(f"--save-stats {weights_hint('inception')}")

    reference = load_reference_stats(reference_stats) if "fid_reference" in selected else None
    if reference is not None and str(reference.get("weights_sha256", inception.sha256)) != inception.sha256:
        raise ValueError(f"{reference_stats} was computed with other Inception weights (sha256 "
                         f"{str(reference['weights_sha256'])[:12]}...) than {inception.path}")
    class_ids = pair_class_ids(pairs, labels) if "ca" in selected else None

    pd_uses_googlenet = "pd" in selected and weights["inception_v1"] is not None
    need_inception = save_stats is not None or any(m in selected for m in ("fid", "fid_reference", "is", "kid")) \
        or ("pd" in selected and not pd_uses_googlenet)
    networks, used_weights = _load_networks(selected, weights, need_inception, device)
    notes = []
    if max(len(pair.samples) for pair in pairs) > samples_per_input:
        notes.append(f"inputs have different sample counts; diversity uses the first {samples_per_input}")
    if "inception" in used_weights and not inception.sha256.startswith(FID_INCEPTION_SHA256_PREFIX):
        notes.append(f"{inception.path.name} is not the standard FID Inception (sha256 {inception.sha256[:8]}..., "
                     f"expected {FID_INCEPTION_SHA256_PREFIX}...): its numbers are not comparable with published ones")
    swd = SlicedWassersteinCollector(*next(iter(sizes))) if "swd" in selected else None
    per_image, outputs = _collect(pairs, selected, networks, samples_per_input, setup.known_region, swd,
                                  batch_size, device)
    if "pd" in selected:
        # Palette §5 computes PD on Inception-v1 pool features; by default we use the FID Inception-v3 pool3
        # (2048-d) instead: the same local weights as FID, the standard feature space. GoogLeNet on request.
        pred_features, target_features = (outputs["v1_pred"], outputs["v1_target"]) if pd_uses_googlenet \
            else (outputs["pred_pool"], outputs["target_pool"])
        per_image["pd"] = (pred_features - target_features).norm(dim=1)
    if "ca" in selected:
        per_image["ca"] = (outputs["class_logits"].argmax(1) == class_ids).double()

    results: dict[str, Any] = {name: _mean_ci(per_image[name]) for name in selected if name in PER_IMAGE_METRICS}
    if "colourfulness_ratio" in selected:  # ratio of means: a gray target (M = 0) would break a mean of ratios
        target_mean = float(per_image["target_colourfulness"].mean())
        ratio = float(per_image["colourfulness"].mean()) / target_mean if target_mean > 0 else None
        results["colourfulness_ratio"] = {"value": ratio, "target_mean": target_mean}
    if swd is not None:
        results["swd"] = swd.compute()
    if "fid_proxy_random_inception" in selected:
        results["fid_proxy_random_inception"] = {"value": fid_from_features(outputs["proxy_target"],
                                                                            outputs["proxy_pred"])}
    if "fid" in selected:
        results["fid"] = {"value": fid_from_features(outputs["target_pool"], outputs["pred_pool"])}
    if reference is not None:
        mu, sigma = feature_statistics(outputs["pred_pool"])
        results["fid_reference"] = {"value": frechet_distance(reference["mu"], reference["sigma"], mu, sigma,
                                                              features2=outputs["pred_pool"])}
    if "is" in selected:
        mean, std = inception_score(outputs["pred_logits"])
        results["is"] = {"mean": mean, "std": std, "splits": min(IS_SPLITS, len(pairs))}
    if "kid" in selected:
        mean, std, size = kernel_inception_distance(outputs["target_pool"], outputs["pred_pool"])
        results["kid"] = {"mean": mean, "std": std, "subset_size": size, "subsets": KID_SUBSETS}
    if save_stats is not None:
        save_reference_stats(save_stats, outputs["target_pool"], inception.sha256)

    return {
        "model": model,
        "task": task,
        "pred_dir": str(pred_dir),
        "target_dir": str(target_dir),
        "input_dir": None if input_dir is None else str(input_dir),
        "num_images": len(pairs),
        "samples_per_input": samples_per_input,
        "metrics": {name: results[name] for name in METRIC_NAMES if name in results},
        "skipped": skipped,
        "weights": {kind: {"path": str(found.path), "sha256": found.sha256} for kind, found in used_weights.items()},
        "settings": {
            "pixel_range": "[0, 1]; PSNR with MAX = 1, capped at 100 dB",
            "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid filtering, mean over RGB",
            "colourfulness": "Hasler & Süsstrunk 2003 M on 0..255 RGB; ratio = mean over predictions / over targets",
            "single_sample_metrics_use": "sample 0 of each input",
            "pd_features": "googlenet_pool_1024" if pd_uses_googlenet else "fid_inception_v3_pool3_2048",
            "ca_preprocessing": "resize 256, centre crop 224, ImageNet mean/std",
            "swd": dict(SWD_SETTINGS),
            "fid_proxy_random_inception": {"seed": PROXY_INCEPTION_SEED,
                                           "init": "He-normal convs, identity batch norm"},
            "saved_stats": None if save_stats is None else str(save_stats),
        },
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------- output


def headline_value(entry: Mapping[str, Any]) -> float | None:
    """The one number a table shows for a metric entry: its mean or its value."""
    value = entry.get("mean", entry.get("value"))
    return None if value is None or not math.isfinite(value) else float(value)


def format_table(results: Mapping[str, Any]) -> str:
    """A readable plain-text table of evaluate_folders' results."""
    title = f"{results['num_images']} images, {results['samples_per_input']} sample(s) per input"
    if results.get("model") or results.get("task"):
        title += f"  [model: {results.get('model') or '-'}, task: {results.get('task') or '-'}]"
    lines = [title, f"{'metric':<28} value"]
    for name, entry in results["metrics"].items():
        value = headline_value(entry)
        text = "n/a" if value is None else f"{value:.4f}"
        if entry.get("ci95") is not None:
            text += f" ± {entry['ci95']:.4f}"
        elif entry.get("std") is not None:
            text += f" (std {entry['std']:.4f})"
        if "levels" in entry:
            text += "  levels " + ", ".join(f"{res}px: {v:.2f}" for res, v in entry["levels"].items())
        lines.append(f"{name:<28} {text}")
    for name, reason in results["skipped"].items():
        lines.append(f"{name:<28} skipped: {reason}")
    for kind, found in results["weights"].items():
        lines.append(f"weights {kind}: {found['path']} (sha256 {found['sha256'][:12]}…)")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)
