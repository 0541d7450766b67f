"""Evaluation folders: which predictions belong to which target, and what else the folders hold.

    pairs = match_predictions("out/samples", "eval/targets")   # [ImagePair(key, target, samples), ...]

`<stem>.png` is the single sample for target `<stem>.*`, and `<stem>_0.png, <stem>_1.png, ...` are K samples
of it, matched by path relative to the folder, without suffix.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..imageio import ImageError, image_inputs, input_root


class FolderMismatchError(ValueError):
    """Predictions and targets do not pair up; the message names the unmatched files."""


@dataclass(frozen=True)
class ImagePair:
    key: str  # path relative to the target folder, without suffix
    target: Path
    samples: tuple[Path, ...]  # predictions, by sample index


def keyed_images(folder: str | Path, *exclude: str | Path | None) -> dict[str, Path]:
    """Images under `folder` (or the one image file) by relative path without suffix, but none under a folder of
    `exclude` inside it (see `image_inputs`); two files with one key are an error."""
    root = input_root(folder)
    keyed: dict[str, Path] = {}
    for path in image_inputs(folder, *exclude):
        key = path.relative_to(root).with_suffix("").as_posix()
        if key in keyed:
            raise ImageError(f"{keyed[key]} and {path} have the same name; keep one")
        keyed[key] = path
    return keyed


def name_list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_predictions(pred_dir: str | Path, target_dir: str | Path) -> list[ImagePair]:
    """Pair every target with its predictions (`<stem>.*` or `<stem>_<k>.*`); unmatched files are an error."""
    targets = keyed_images(target_dir)
    if not targets:
        raise ImageError(f"{target_dir}: no images")
    samples: dict[str, dict[int, Path]] = defaultdict(dict)
    orphans = []
    for key, path in keyed_images(pred_dir).items():
        numbered = re.fullmatch(r"(.+)_(\d+)", key)
        if key in targets:
            owner, index = key, 0
        elif numbered and numbered[1] in targets:
            owner, index = numbered[1], int(numbered[2])
        else:
            orphans.append(path.name if "/" not in key else key)
            continue
        if index in samples[owner]:
            raise FolderMismatchError(f"{samples[owner][index]} and {path} are both sample {index} of {owner}")
        samples[owner][index] = path
    missing = sorted(key for key in targets if key not in samples)
    problems = []
    if orphans:
        problems.append(f"{len(orphans)} prediction(s) in {pred_dir} match no target: {name_list(orphans)}")
    if missing:
        problems.append(f"{len(missing)} target(s) in {target_dir} have no prediction: {name_list(missing)}")
    if problems:
        raise FolderMismatchError("; ".join(problems))
    return [ImagePair(key, targets[key], tuple(path for _, path in sorted(samples[key].items())))
            for key in sorted(targets)]


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as error:
        raise ImageError(f"{path}: not a readable image ({error})") from error


def load_labels(path: str | Path) -> dict[str, int]:
    """ImageNet class ids by image stem, from JSON ({stem: id}) or text lines `stem id` (space, tab or comma)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file (--labels)")
    text = path.read_text()
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        entries = list(json.loads(text).items())
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.replace(",", " ").split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected 'stem class_id', got {line!r}")
            entries.append((fields[0], fields[1]))
    labels = {}
    for stem, value in entries:
        try:
            labels[str(stem)] = int(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: class id of {stem!r} is not an integer: {value!r}") from error
    return labels


def known_region_dirs(input_dir: str | Path | None, masks_dir: str | Path | None) -> tuple[Path, Path] | None:
    """Inputs and masks for known_region_l1; masks default to `palette degrade`'s sibling masks/ folder."""
    for folder, flag in ((input_dir, "--input"), (masks_dir, "masks_dir")):
        if folder is not None and not Path(folder).is_dir():
            raise ImageError(f"{folder}: not a directory ({flag})")
    if input_dir is None:
        return None
    masks = Path(masks_dir) if masks_dir is not None else Path(input_dir).parent / "masks"
    return (Path(input_dir), masks) if masks.is_dir() else None


def image_sizes(pairs: Sequence[ImagePair], samples_per_input: int) -> frozenset[tuple[int, int]]:
    """The (height, width) sizes present; a prediction whose size differs from its target is an error."""
    sizes = set()
    for pair in pairs:
        size = _image_size(pair.target)
        for sample in pair.samples[:samples_per_input]:
            if _image_size(sample) != size:
                raise ImageError(f"{sample} is {_image_size(sample)} but its target {pair.target} is {size} (HxW)")
        sizes.add(size)
    return frozenset(sizes)


def pair_class_ids(pairs: Sequence[ImagePair], labels: str | Path) -> torch.Tensor:
    """ImageNet class id per pair, looked up by relative key, then by file stem."""
    known = load_labels(labels)
    ids = {pair.key: known.get(pair.key, known.get(Path(pair.key).name)) for pair in pairs}
    unlabelled = [key for key, value in ids.items() if value is None]
    if unlabelled:
        raise ValueError(f"{labels} has no class id for {len(unlabelled)} image(s): {name_list(unlabelled)}")
    return torch.tensor([ids[pair.key] for pair in pairs])
