"""Build the benchmark image set from Debian's wallpaper packages.

The pool (`assets/wallpaper-pool.tsv`) names each image by package, name and kind.
The images keep their packages' licences, so the repository holds only this builder:

    palette data wallpapers --out OUT_DIR       # apt-get installs the packages if missing

writes OUT_DIR/images/<package>__<stem>.jpg (short side 768, JPEG quality 92),
OUT_DIR/train.txt and OUT_DIR/val.txt (paths relative to OUT_DIR) and OUT_DIR/manifest.tsv.
Running it again rebuilds OUT_DIR in place; a folder whose lists or manifest are not a build's is refused.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import random
import re
import shutil
import subprocess
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, get_args
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageOps

from .files import ensure_folder, write_atomic

logger = logging.getLogger(__name__)

Kind = Literal["photo", "art"]
Split = Literal["train", "val"]
ShadeType = Literal["solid", "horizontal-gradient", "vertical-gradient"]
KINDS: tuple[str, ...] = get_args(Kind)
POOL_COLUMNS = ("package", "name", "kind")
MANIFEST_COLUMNS = ("file", "package", "name", "kind", "split", "width", "height", "sha256")

# Files dpkg lists that can be wallpapers; the pool's names all end in one of these.
WALLPAPER_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# "1920x1080.jpg" (plasma) or "Elephants_5640x3172.jpg" (mate).
_RESOLUTION = re.compile(r"(?:^|_)(\d+)x(\d+)$")
# Transparent wallpapers without a declared desktop colour are flattened onto this one.
ALPHA_BACKGROUND = (0, 0, 0)
# Stems that name variants of one picture: GNOME's "-d"/"-l", MATE's "-Dark"/"-Light", and
# Ubuntu MATE's one picture in four colourings.
_VARIANT_RULES = (
    (r"-(d|l|dark|light)$", ""),
    (r"^Ubuntu-Mate-\w+-no-logo$", "Ubuntu-Mate-no-logo"),
)
# GNOME/MATE packages declare each wallpaper's desktop colours here (used under transparent images).
_BACKGROUND_PROPERTIES = re.compile(r"/share/[^/]*background-properties/[^/]+\.xml$")


class WallpaperError(ValueError):
    """The set cannot be built: dpkg, apt-get or the pool's packages are missing, or files of others are in the way."""


@dataclass(frozen=True)
class DesktopShade:
    """The colour a desktop paints under a wallpaper: `<shade_type>`, `<pcolor>`, `<scolor>`."""

    shade_type: ShadeType
    primary: tuple[int, int, int]
    secondary: tuple[int, int, int]

    def render(self, size: tuple[int, int]) -> Image.Image:
        """The shade as an RGB image; gradients run left to right or top to bottom."""
        width, height = size
        start, end = np.array(self.primary, np.float64), np.array(self.secondary, np.float64)
        if self.shade_type == "horizontal-gradient":
            t = np.linspace(0.0, 1.0, width)[None, :, None]
        elif self.shade_type == "vertical-gradient":
            t = np.linspace(0.0, 1.0, height)[:, None, None]
        else:
            t = np.zeros((1, 1, 1))
        pixels = np.broadcast_to(start + (end - start) * t, (height, width, 3))
        return Image.fromarray(np.ascontiguousarray(pixels.round().astype(np.uint8)), "RGB")


@dataclass(frozen=True, order=True)
class PoolEntry:
    """One image of the pool: which package installs it, which file it is, and what it shows."""

    package: str
    name: str
    kind: Kind

    @property
    def output_name(self) -> str:
        """File name of the built image, unique within the pool."""
        return f"{self.package}__{PurePosixPath(self.name).stem}.jpg"


def read_pool(pool_file: str | Path | None = None) -> list[PoolEntry]:
    """Parse the pool TSV (default: the copy bundled with palette), sorted by package and name."""
    if pool_file is None:
        text = importlib.resources.files("palette").joinpath("assets", "wallpaper-pool.tsv").read_text("utf-8")
        source = "bundled wallpaper-pool.tsv"
    else:
        text = Path(pool_file).read_text("utf-8")
        source = str(pool_file)
    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or tuple(lines[0][1].split("\t")) != POOL_COLUMNS:
        raise ValueError(f"{source}: the first line must be the header {'<TAB>'.join(POOL_COLUMNS)}")
    entries: list[PoolEntry] = []
    for number, line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(POOL_COLUMNS) or not all(fields):
            raise ValueError(f"{source}:{number}: expected 3 tab-separated fields, got {line!r}")
        package, name, kind = fields
        if kind not in KINDS:
            raise ValueError(f"{source}:{number}: kind {kind!r} is not one of {', '.join(KINDS)}")
        entries.append(PoolEntry(package, name, kind))  # type: ignore[arg-type]
    duplicates = sorted(name for name, count in Counter(e.output_name for e in entries).items() if count > 1)
    if duplicates:
        raise ValueError(f"{source}: entries map to the same output file: {', '.join(duplicates)}")
    return sorted(entries)


def _parse_colour(text: str) -> tuple[int, int, int]:
    digits = text.strip().lstrip("#")
    if len(digits) not in (6, 12):  # #rrggbb, or GTK's 16-bit #rrrrggggbbbb
        raise ValueError(f"not a colour: {text!r}")
    step = len(digits) // 3
    return tuple(int(digits[i : i + 2], 16) for i in range(0, len(digits), step))  # type: ignore[return-value]


def parse_background_properties(xml_text: str) -> dict[str, DesktopShade]:
    """Wallpaper file path -> its declared DesktopShade, from a `*-background-properties/*.xml` file."""
    shades: dict[str, DesktopShade] = {}
    for wallpaper in ElementTree.fromstring(xml_text).iter("wallpaper"):
        shade_type, primary = wallpaper.findtext("shade_type", "solid"), wallpaper.findtext("pcolor")
        if primary is None or shade_type not in get_args(ShadeType):
            continue
        shade = DesktopShade(shade_type, _parse_colour(primary), _parse_colour(wallpaper.findtext("scolor", primary)))
        for tag in ("filename", "filename-dark"):  # GNOME pairs a dark variant with the same shade
            filename = wallpaper.findtext(tag)
            if filename:
                shades[filename.strip()] = shade
    return shades


def resolution_from_name(path: str) -> tuple[int, int] | None:
    """(width, height) written in a file name such as `5120x2880.png` or `Dune_3840x2160.jpg`."""
    match = _RESOLUTION.search(PurePosixPath(path).stem)
    return (int(match[1]), int(match[2])) if match else None


def _matches(package: str, name: str, path: PurePosixPath) -> bool:
    if package == "plasma-workspace-wallpapers":
        # <name>/contents/images/<W>x<H>.<ext>; images_dark/ holds a different (dark) picture.
        return (
            path.parts[-4:-1] == (name, "contents", "images")
            and re.fullmatch(r"\d+x\d+", path.stem) is not None
        )
    if package == "mate-backgrounds":
        stem = re.sub(r"_\d+x\d+$", "", path.stem)
        return stem + path.suffix == name
    return path.name == name


def find_image(
    package: str,
    name: str,
    paths: Iterable[str],
    pixel_count: Callable[[str], int] | None = None,
) -> str | None:
    """The file of `paths` (a `dpkg -L` listing) that is pool image `name`, or None.

    Several candidates (one picture at several resolutions) resolve to the largest by pixel
    count: from the `WIDTHxHEIGHT` in the file name when there is one, else from
    `pixel_count(path)` when given, else 0. Ties go to the first path in sorted order.
    """
    candidates = sorted(
        path
        for path in set(paths)
        if PurePosixPath(path).suffix.lower() in WALLPAPER_SUFFIXES and _matches(package, name, PurePosixPath(path))
    )

    def size(path: str) -> int:
        resolution = resolution_from_name(path)
        if resolution is not None:
            return resolution[0] * resolution[1]
        return pixel_count(path) if pixel_count is not None else 0

    # max() keeps the first of equal keys, so ties follow the sorted order.
    return max(candidates, key=size) if candidates else None


def variant_group(entry: PoolEntry) -> str:
    """Key shared by entries that are variants of one picture, so a split never separates them."""
    stem = PurePosixPath(entry.name).stem
    for pattern, replacement in _VARIANT_RULES:
        stem = re.sub(pattern, replacement, stem, flags=re.IGNORECASE)
    return f"{entry.package}/{stem}"


def split_pool(entries: Sequence[PoolEntry], val_fraction: float = 0.2, seed: int = 0) -> dict[PoolEntry, Split]:
    """Seeded train/val split, stratified by kind, keeping variant groups whole.

    Depends only on the set of entries and the seed. Per kind, whole groups go to val in a
    seeded order until val holds round(n * val_fraction) images; train always keeps one group.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    split: dict[PoolEntry, Split] = {}
    for kind in KINDS:
        groups: dict[str, list[PoolEntry]] = {}
        for entry in sorted(e for e in set(entries) if e.kind == kind):
            groups.setdefault(variant_group(entry), []).append(entry)
        order = sorted(groups)
        # A string seed per kind: adding photos never reshuffles the art split, and vice versa.
        random.Random(f"palette-wallpapers:{seed}:{kind}").shuffle(order)
        target = round(sum(map(len, groups.values())) * val_fraction)
        if val_fraction > 0:
            target = max(target, 1)
        n_val = 0
        for index, key in enumerate(order):
            side: Split = "val" if n_val < target and index < len(order) - 1 else "train"
            n_val += len(groups[key]) if side == "val" else 0
            split.update((entry, side) for entry in groups[key])
    return split


def _dpkg(*arguments: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("dpkg") is None:
        raise WallpaperError("dpkg not found on PATH: the wallpaper set is built from Debian packages; "
                             "run on a Debian-based system with dpkg on PATH (or copy a set built there)")
    return subprocess.run(["dpkg", *arguments], capture_output=True, text=True)


def list_package_files(package: str) -> list[str]:
    """Paths that an installed Debian package put on disk (`dpkg -L`); empty if not installed."""
    result = _dpkg("-L", package)
    return result.stdout.splitlines() if result.returncode == 0 else []


def is_installed(package: str) -> bool:
    """Whether dpkg reports `package` as installed."""
    result = _dpkg("-s", package)
    return result.returncode == 0 and "install ok installed" in result.stdout


def install_packages(packages: Iterable[str]) -> None:
    """Install the packages that are missing with apt-get (one update, one install)."""
    missing = sorted(p for p in set(packages) if not is_installed(p))
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise WallpaperError(f"packages {', '.join(missing)} are not installed and apt-get is not available; "
                             "install them by other means or run where apt-get works")
    logger.info("installing %s", " ".join(missing))
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *missing]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise WallpaperError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}\n"
                                 f"install {' '.join(missing)} as root, then rerun with --no-install")


def to_rgb(image: Image.Image, shade: DesktopShade | None = None) -> Image.Image:
    """Upright RGB image; transparency is flattened onto `shade` (default: ALPHA_BACKGROUND)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        shade = shade or DesktopShade("solid", ALPHA_BACKGROUND, ALPHA_BACKGROUND)
        return Image.alpha_composite(shade.render(rgba.size).convert("RGBA"), rgba).convert("RGB")
    return image.convert("RGB")


def resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """Lanczos-resize so the short side is `short_side`; smaller images are left as they are."""
    width, height = image.size
    if min(width, height) <= short_side:
        return image
    scale = short_side / min(width, height)
    size = (short_side, round(height * scale)) if width <= height else (round(width * scale), short_side)
    return image.resize(size, Image.Resampling.LANCZOS)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_out_dir(out_dir: Path, targets: Sequence[Path]) -> None:
    """Refuse a folder that holds any of `targets` but no manifest.tsv of a previous build."""
    manifest = out_dir / "manifest.tsv"
    if manifest.is_file():
        with manifest.open(encoding="utf-8", errors="replace") as file:
            if file.readline().rstrip("\n") == "\t".join(MANIFEST_COLUMNS):
                return
    in_the_way = [path.relative_to(out_dir).as_posix() for path in targets if path.exists()]
    if in_the_way:
        raise WallpaperError(f"{out_dir} holds {', '.join(in_the_way)} but no manifest.tsv of a wallpaper build, "
                             "so they are not replaced; remove them or choose another output folder")


def _write_text(path: Path, lines: Iterable[str]) -> None:
    write_atomic(path, lambda temporary: temporary.write_text("".join(line + "\n" for line in lines), "utf-8"))


def _image_pixel_count(path: Path) -> int:
    if not path.is_file():
        return 0
    with Image.open(path) as image:
        return image.width * image.height


def build_wallpapers(
    out_dir: str | Path,
    pool_file: str | Path | None = None,
    short_side: int = 768,
    quality: int = 92,
    val_fraction: float = 0.2,
    seed: int = 0,
    install: bool = True,
    package_root: str | Path = "/",
) -> Path:
    """Build the benchmark set in `out_dir` from the pool's packages; returns `out_dir`.

    Missing pool images are reported with a warning; finding none is an error. The split is
    fixed by the pool and the seed alone, so a missing image never moves another one.
    A folder with a previous build (a manifest.tsv with MANIFEST_COLUMNS as header) is rebuilt in place, and so
    is one where a build stopped before its lists; a folder that holds a train.txt, val.txt or manifest.tsv of
    another kind is refused before anything is installed or written. Every file is written atomically, the
    manifest last.
    """
    out_dir = Path(out_dir)
    package_root = Path(package_root)
    entries = read_pool(pool_file)
    split = split_pool(entries, val_fraction, seed)
    images_dir = out_dir / "images"
    lists = {name: out_dir / f"{name}.txt" for name in get_args(Split)}
    _check_out_dir(out_dir, [*lists.values(), out_dir / "manifest.tsv"])  # images/ holds only <package>__ names
    packages = sorted({e.package for e in entries})
    if install:
        install_packages(packages)
    listings = {package: list_package_files(package) for package in packages}

    def on_disk(path: str) -> Path:
        return package_root / path.lstrip("/")

    shades: dict[str, DesktopShade] = {}
    for listing in listings.values():
        for path in listing:
            if _BACKGROUND_PROPERTIES.search(path) and on_disk(path).is_file():
                shades.update(parse_background_properties(on_disk(path).read_text("utf-8")))

    rows: list[dict[str, str]] = []
    missing: list[str] = []
    for entry in entries:
        source = find_image(
            entry.package, entry.name, listings[entry.package], pixel_count=lambda p: _image_pixel_count(on_disk(p))
        )
        if source is None or not on_disk(source).is_file():
            missing.append(f"{entry.package}/{entry.name}")
            continue
        with Image.open(on_disk(source)) as original:
            image = resize_short_side(to_rgb(original, shades.get(source)), short_side)
        target = images_dir / entry.output_name
        ensure_folder(target)
        write_atomic(target, lambda temporary: image.save(temporary, "JPEG", quality=quality))
        relative = target.relative_to(out_dir).as_posix()
        logger.info("%s <- %s (%dx%d)", relative, source, image.width, image.height)
        rows.append(
            {
                "file": relative,
                "package": entry.package,
                "name": entry.name,
                "kind": entry.kind,
                "split": split[entry],
                "width": str(image.width),
                "height": str(image.height),
                "sha256": _sha256(target),
            }
        )

    not_installed = [p for p in packages if not listings[p]]
    hint = f" (not installed: {', '.join(not_installed)})" if not_installed else ""
    if not rows:
        advice = (f"install them: apt-get install {' '.join(not_installed)}" if not_installed
                  else "the installed packages hold other files; compare the pool with dpkg -L")
        raise WallpaperError(f"none of the {len(entries)} pool images was found{hint}; {advice}")
    if missing:
        warnings.warn(f"{len(missing)} pool image(s) not found{hint}: {', '.join(missing)}", stacklevel=2)

    for name, path in lists.items():
        _write_text(path, [row["file"] for row in rows if row["split"] == name])
    manifest = ["\t".join(MANIFEST_COLUMNS)] + ["\t".join(row[c] for c in MANIFEST_COLUMNS) for row in rows]
    _write_text(out_dir / "manifest.tsv", manifest)
    return out_dir

