"""Photos that no training run or sampling choice has seen, as crops for scripts/validate.sh: a check of the bars
on images from outside the wallpaper pool, as the model issue's held-out check is.

    python scripts/unseen_photos.py --out eval/unseen                  # 24 crops of 64 px and eval/unseen/list.txt
    scripts/validate.sh MODEL - eval/unseen/validation eval/unseen/list.txt

The photos are the sample images that the installed packages (`make .venv/.installed`: gradio's UI extra and
matplotlib's test extra) ship: two cheetahs, a lion, Groot, a lit tower and Grace Hopper. They are read where the
packages put them and never copied into the repository. Each gives its centre crop and three random crops of 35-100%
of its short side (`palette.data.evaluation_crops`), resized to 64 px. The lion and the smaller cheetah are small,
heavily compressed JPEGs: their own blocks show in their crops, which favours a JPEG input on the JPEG sets.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from palette.data import evaluation_crops

PHOTOS = {"gradio": ["media_assets/images/cheetah.jpg", "media_assets/images/cheetah1.jpg",
                     "media_assets/images/groot.jpeg", "media_assets/images/lion.jpg",
                     "media_assets/images/tower.jpg"],
          "matplotlib": ["mpl-data/sample_data/grace_hopper.jpg"]}
CROPS_PER_PHOTO = 4
SEED = 11


def photo_paths() -> list[Path]:
    """The photos' paths in the installed packages; an error names a missing package or file."""
    paths = []
    for package, names in PHOTOS.items():
        try:
            root = Path(importlib.import_module(package).__file__).parent
        except ImportError as error:
            raise SystemExit(f"{package} is not installed ({error}); run make .venv/.installed") from error
        for name in names:
            if not (root / name).is_file():
                raise SystemExit(f"{root / name}: missing from the installed {package}")
            paths.append(root / name)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = photo_paths()
    crops = evaluation_crops(paths, args.size, CROPS_PER_PHOTO, SEED)
    names = [f"{path.stem}_{k}.png" for path in paths for k in range(CROPS_PER_PHOTO)]
    for name, crop in zip(names, crops):
        crop.save(args.out / name)
    (args.out / "list.txt").write_text("\n".join(names) + "\n")
    print(f"wrote {len(names)} crops and {args.out / 'list.txt'}")


if __name__ == "__main__":
    main()
