"""Tests for the wallpaper benchmark builder: pool parsing, file finding, split, and a fake build."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from palette import wallpapers
from palette.cli import main
from palette.files import OutputError
from palette.wallpapers import (
    DesktopShade,
    PoolEntry,
    WallpaperError,
    build_wallpapers,
    find_image,
    parse_background_properties,
    read_pool,
    resize_short_side,
    split_pool,
    variant_group,
)

# --- pool parsing -----------------------------------------------------------------------


def test_bundled_pool_parses():
    pool = read_pool()
    assert len(pool) == 78
    assert pool == sorted(pool)
    assert Counter(e.kind for e in pool) == {"art": 59, "photo": 19}
    assert PoolEntry("plasma-workspace-wallpapers", "Volna", "photo") in pool
    assert len({e.output_name for e in pool}) == len(pool)


def test_pool_rejects_bad_kind_and_header(tmp_path):
    bad_kind = tmp_path / "kind.tsv"
    bad_kind.write_text("package\tname\tkind\npkg\ta.jpg\tdrawing\n")
    with pytest.raises(ValueError, match=r"kind\.tsv:2: kind 'drawing' is not one of photo, art"):
        read_pool(bad_kind)
    bad_header = tmp_path / "header.tsv"
    bad_header.write_text("pkg\ta.jpg\tart\n")
    with pytest.raises(ValueError, match="header"):
        read_pool(bad_header)
    clash = tmp_path / "clash.tsv"
    clash.write_text("package\tname\tkind\npkg\ta.jpg\tart\npkg\ta.png\tart\n")
    with pytest.raises(ValueError, match="pkg__a.jpg"):
        read_pool(clash)


# --- finding files ----------------------------------------------------------------------

PLASMA = [
    "/usr/share/wallpapers/Altai",
    "/usr/share/wallpapers/Altai/contents/images/1080x1920.png",
    "/usr/share/wallpapers/Altai/contents/images/5120x2880.png",
    "/usr/share/wallpapers/Altai/contents/images/999x999.png",
    "/usr/share/wallpapers/Altai/contents/images_dark/7680x4320.png",
    "/usr/share/wallpapers/Altai/contents/screenshot.png",
    "/usr/share/wallpapers/Altai/metadata.json",
    "/usr/share/wallpapers/AltaiNight/contents/images/9000x9000.png",
]


def test_plasma_takes_largest_resolution_of_the_folder():
    # By pixel count (not name order), only contents/images/, never the screenshot or other folders.
    assert find_image("plasma-workspace-wallpapers", "Altai", PLASMA) == PLASMA[2]
    assert find_image("plasma-workspace-wallpapers", "Missing", PLASMA) is None


def test_mate_strips_resolution_suffix_and_takes_largest():
    paths = [
        "/usr/share/backgrounds/mate/abstract/Elephants_3840x2160.jpg",
        "/usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg",
        "/usr/share/backgrounds/mate/abstract/Elephants-Dark.jpg",
        "/usr/share/backgrounds/mate/nature/Dune.jpg",
    ]
    assert find_image("mate-backgrounds", "Elephants.jpg", paths) == paths[1]
    assert find_image("mate-backgrounds", "Dune.jpg", paths) == paths[3]
    assert find_image("mate-backgrounds", "Dune.png", paths) is None


def test_unsuffixed_file_is_sized_by_the_callback():
    paths = ["/b/mate/Elephants.jpg", "/b/mate/Elephants_3840x2160.jpg"]
    assert find_image("mate-backgrounds", "Elephants.jpg", paths) == paths[1]
    larger = find_image("mate-backgrounds", "Elephants.jpg", paths, pixel_count=lambda p: 10_000 * 10_000)
    assert larger == paths[0]


def test_other_packages_match_the_exact_base_name():
    paths = [
        "/usr/share/backgrounds/gnome/adwaita-d.webp",
        "/usr/share/backgrounds/gnome/adwaita-d.webp.xml",
        "/usr/share/backgrounds/gnome/old-adwaita-d.webp",
        "/usr/share/gnome-background-properties/adwaita.xml",
    ]
    assert find_image("gnome-backgrounds", "adwaita-d.webp", paths) == paths[0]
    assert find_image("gnome-backgrounds", "adwaita.xml", paths) is None  # not an image suffix


# --- split ------------------------------------------------------------------------------


def test_split_is_reproducible_stratified_and_disjoint():
    pool = read_pool()
    split = split_pool(pool, val_fraction=0.2, seed=0)
    assert split == split_pool(list(reversed(pool)), val_fraction=0.2, seed=0)
    assert set(split) == set(pool)
    counts = Counter((e.kind, side) for e, side in split.items())
    assert counts == {("art", "train"): 47, ("art", "val"): 12, ("photo", "train"): 15, ("photo", "val"): 4}
    assert split != split_pool(pool, val_fraction=0.2, seed=1)
    # Golden: the recorded validation set of the benchmark (seed 0).
    val = sorted(f"{e.package}/{e.name}" for e, side in split.items() if side == "val")
    assert val == [
        "mate-backgrounds/Gulp.png",
        "mate-backgrounds/LadyBird.jpg",
        "mate-backgrounds/Stripes.png",
        "mate-backgrounds/Wood.jpg",
        "mate-backgrounds/YellowFlower.jpg",
        "plasma-workspace-wallpapers/Cascade",
        "plasma-workspace-wallpapers/Cluster",
        "plasma-workspace-wallpapers/ColorfulCups",
        "plasma-workspace-wallpapers/Flow",
        "plasma-workspace-wallpapers/FlyingKonqui",
        "plasma-workspace-wallpapers/MilkyWay",
        "plasma-workspace-wallpapers/OneStandsOut",
        "plasma-workspace-wallpapers/Opal",
        "ukui-wallpapers/2004default.jpg",
        "ukui-wallpapers/fluent-color.png",
        "ukui-wallpapers/rollpaper.png",
    ]


def test_split_keeps_variants_of_one_picture_together():
    pool = read_pool()
    groups = Counter(variant_group(e) for e in pool)
    assert groups["gnome-backgrounds/adwaita"] == 2
    assert groups["mate-backgrounds/Ubuntu-Mate-no-logo"] == 4
    assert groups["mate-backgrounds/MATE-Stripes"] == 2
    for seed in range(20):
        split = split_pool(pool, seed=seed)
        sides: dict[str, set[str]] = {}
        for entry, side in split.items():
            sides.setdefault(variant_group(entry), set()).add(side)
        assert all(len(s) == 1 for s in sides.values()), seed


def test_split_edge_cases():
    entries = [PoolEntry("p", f"{i}.jpg", "photo") for i in range(3)]
    assert set(split_pool(entries, val_fraction=0.0).values()) == {"train"}
    # Tiny pools still get one validation image and keep one for training.
    assert Counter(split_pool(entries, val_fraction=0.01).values()) == {"train": 2, "val": 1}
    assert Counter(split_pool(entries, val_fraction=0.9).values()) == {"train": 1, "val": 2}
    with pytest.raises(ValueError, match="val_fraction"):
        split_pool(entries, val_fraction=1.0)


# --- image helpers ----------------------------------------------------------------------


def test_resize_short_side_never_upscales():
    assert resize_short_side(Image.new("RGB", (320, 200)), 64).size == (102, 64)
    assert resize_short_side(Image.new("RGB", (200, 320)), 64).size == (64, 102)
    assert resize_short_side(Image.new("RGB", (50, 40)), 64).size == (50, 40)


def test_background_properties_and_gradient():
    xml = """<?xml version="1.0"?><!DOCTYPE wallpapers SYSTEM "mate-wp-list.dtd"><wallpapers>
      <wallpaper deleted="false"><name>Flow</name><filename>/usr/share/b/Flow.png</filename>
        <shade_type>vertical-gradient</shade_type><pcolor>#27587E</pcolor><scolor>#627F5A</scolor></wallpaper>
      <wallpaper><filename>/b/l.webp</filename><filename-dark>/b/d.webp</filename-dark><pcolor>#77767B</pcolor></wallpaper>
      <wallpaper deleted="false"><name>Plain</name><filename>/usr/share/b/Plain.png</filename></wallpaper>
    </wallpapers>"""
    shades = parse_background_properties(xml)
    grey = DesktopShade("solid", (0x77, 0x76, 0x7B), (0x77, 0x76, 0x7B))
    assert shades == {
        "/usr/share/b/Flow.png": DesktopShade("vertical-gradient", (0x27, 0x58, 0x7E), (0x62, 0x7F, 0x5A)),
        "/b/l.webp": grey,
        "/b/d.webp": grey,
    }
    pixels = np.asarray(shades["/usr/share/b/Flow.png"].render((4, 3)))
    assert pixels.shape == (3, 4, 3)
    assert pixels[0, 0].tolist() == [0x27, 0x58, 0x7E]
    assert pixels[2, 3].tolist() == [0x62, 0x7F, 0x5A]
    midway = (np.array([0x27, 0x58, 0x7E]) + np.array([0x62, 0x7F, 0x5A])) / 2
    assert np.abs(pixels[1, 0] - midway).max() <= 0.5
    assert (pixels[:, 0] == pixels[:, 3]).all()  # vertical: constant along a row


# --- a build on a fake package tree -------------------------------------------------------


def _fake_tree(root: Path) -> dict[str, list[str]]:
    """Write a small fake set of installed packages under `root`; return their dpkg listings."""

    def image(path: str, size: tuple[int, int], colour, mode: str = "RGB") -> str:
        file = root / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, colour).save(file)
        return path

    properties = "/usr/share/mate-background-properties/mate.xml"
    (root / properties.lstrip("/")).parent.mkdir(parents=True)
    (root / properties.lstrip("/")).write_text(
        "<wallpapers><wallpaper><filename>/usr/share/backgrounds/mate/Clear.png</filename>"
        "<shade_type>solid</shade_type><pcolor>#2050A0</pcolor><scolor>#000000</scolor></wallpaper></wallpapers>"
    )
    return {
        "plasma-workspace-wallpapers": [
            "/usr/share/wallpapers/Hill",
            image("/usr/share/wallpapers/Hill/contents/images/160x100.png", (160, 100), (255, 0, 0)),
            image("/usr/share/wallpapers/Hill/contents/images/320x200.jpg", (320, 200), (0, 255, 0)),
            image("/usr/share/wallpapers/Hill/contents/screenshot.png", (400, 250), (0, 0, 255)),
        ],
        "mate-backgrounds": [
            image("/usr/share/backgrounds/mate/Tree_90x150.jpg", (90, 150), (10, 10, 10)),
            image("/usr/share/backgrounds/mate/Tree_180x300.jpg", (180, 300), (200, 200, 200)),
            image("/usr/share/backgrounds/mate/Clear.png", (100, 80), (255, 255, 255, 0), "RGBA"),
            properties,
        ],
        "other-wallpapers": [
            image("/usr/share/backgrounds/small.webp", (50, 40), (0, 0, 255)),
        ],
    }


def _fake_pool(path: Path) -> Path:
    rows = [
        ("plasma-workspace-wallpapers", "Hill", "photo"),
        ("mate-backgrounds", "Tree.jpg", "photo"),
        ("mate-backgrounds", "Clear.png", "art"),
        ("other-wallpapers", "small.webp", "art"),
        ("other-wallpapers", "gone.jpg", "art"),
    ]
    path.write_text("package\tname\tkind\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_build_on_fake_tree(tmp_path, monkeypatch):
    root = tmp_path / "root"
    listings = _fake_tree(root)
    monkeypatch.setattr(wallpapers, "list_package_files", lambda package: listings.get(package, []))
    pool = _fake_pool(tmp_path / "pool.tsv")
    out = tmp_path / "out"

    with pytest.warns(UserWarning, match="1 pool image.*not found.*other-wallpapers/gone.jpg"):
        result = build_wallpapers(out, pool_file=pool, short_side=64, val_fraction=0.5, install=False, package_root=root)
    assert result == out

    manifest = [line.split("\t") for line in (out / "manifest.tsv").read_text().splitlines()]
    assert manifest[0] == ["file", "package", "name", "kind", "split", "width", "height", "sha256"]
    rows = {row[0]: dict(zip(manifest[0], row)) for row in manifest[1:]}
    assert sorted(rows) == [
        "images/mate-backgrounds__Clear.jpg",
        "images/mate-backgrounds__Tree.jpg",
        "images/other-wallpapers__small.jpg",
        "images/plasma-workspace-wallpapers__Hill.jpg",
    ]
    for file, row in rows.items():
        written = out / file
        assert hashlib.sha256(written.read_bytes()).hexdigest() == row["sha256"]
        with Image.open(written) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == (int(row["width"]), int(row["height"]))

    def pixel(name: str) -> np.ndarray:
        return np.asarray(Image.open(out / "images" / name), dtype=np.int64)[4, 4]

    # The largest plasma resolution (green 320x200) was used and resized to short side 64.
    assert rows["images/plasma-workspace-wallpapers__Hill.jpg"]["width"] == "102"
    assert np.abs(pixel("plasma-workspace-wallpapers__Hill.jpg") - [0, 255, 0]).max() <= 3
    # mate: the 180x300 file (grey 200) beat the 90x150 one (grey 10).
    assert (rows["images/mate-backgrounds__Tree.jpg"]["width"], rows["images/mate-backgrounds__Tree.jpg"]["height"]) == ("64", "107")
    assert np.abs(pixel("mate-backgrounds__Tree.jpg") - 200).max() <= 3
    # Smaller than short_side: kept at its size, not upscaled.
    assert (rows["images/other-wallpapers__small.jpg"]["width"], rows["images/other-wallpapers__small.jpg"]["height"]) == ("50", "40")
    # Fully transparent: what shows is the package's declared desktop colour.
    assert np.abs(pixel("mate-backgrounds__Clear.jpg") - [0x20, 0x50, 0xA0]).max() <= 3

    # The lists hold paths relative to their own folder; together they are the manifest.
    train = (out / "train.txt").read_text().splitlines()
    val = (out / "val.txt").read_text().splitlines()
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(rows)
    assert all((out / line).is_file() for line in train + val)
    for file, row in rows.items():
        assert (file in val) == (row["split"] == "val")
    # The split comes from the pool and the seed, not from which images were found.
    expected = {e.output_name: side for e, side in split_pool(read_pool(pool), 0.5, seed=0).items()}
    assert {f: row["split"] for f, row in rows.items()} == {f"images/{n}": s for n, s in expected.items() if n != "other-wallpapers__gone.jpg"}
    assert Counter(rows[f]["kind"] for f in val)["photo"] == 1

    # A rebuild writes byte-identical files.
    first = (out / "manifest.tsv").read_text()
    with pytest.warns(UserWarning):
        build_wallpapers(out, pool_file=pool, short_side=64, val_fraction=0.5, install=False, package_root=root)
    assert (out / "manifest.tsv").read_text() == first


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_rebuild_replaces_each_file_atomically(tmp_path, monkeypatch):
    root = tmp_path / "root"
    listings = _fake_tree(root)
    monkeypatch.setattr(wallpapers, "list_package_files", lambda package: listings.get(package, []))
    pool, out = _fake_pool(tmp_path / "pool.tsv"), tmp_path / "out"
    with pytest.warns(UserWarning):
        build_wallpapers(out, pool_file=pool, short_side=64, install=False, package_root=root)
    before = _files(out)

    def full_disk(image, fp, format=None, **options):
        Path(fp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OutputError) as raised:
        build_wallpapers(out, pool_file=pool, short_side=64, install=False, package_root=root)
    assert str(raised.value) == f"{out}/images/mate-backgrounds__Clear.jpg: cannot write: the disk is full"
    assert _files(out) == before  # the old image intact, no temporary file left


def test_build_refuses_files_it_did_not_write(tmp_path, monkeypatch):
    root = tmp_path / "root"
    listings = _fake_tree(root)
    monkeypatch.setattr(wallpapers, "list_package_files", lambda package: listings.get(package, []))
    installed: list[str] = []
    monkeypatch.setattr(wallpapers, "install_packages", installed.extend)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "train.txt").write_bytes(b"my/own/list.png\n")
    (out / "val.txt").write_bytes(b"")
    (out / "manifest.tsv").write_bytes(b"file\tauthor\n")  # a manifest, but not of a wallpaper build
    (out / "images" / "mate-backgrounds__Tree.jpg").write_bytes(b"my picture")
    before = _files(out)
    with pytest.raises(WallpaperError) as raised:
        build_wallpapers(out, pool_file=_fake_pool(tmp_path / "pool.tsv"), package_root=root)
    assert str(raised.value) == (
        f"{out} holds train.txt, val.txt, manifest.tsv but no manifest.tsv of a wallpaper build, "
        "so they are not replaced; remove them or choose another output folder"
    )
    assert _files(out) == before
    assert installed == []  # refused before anything was installed


def test_missing_dpkg_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(wallpapers.shutil, "which", lambda tool: None)
    out = tmp_path / "wp0"
    with pytest.raises(SystemExit) as exited:
        main(["data", "wallpapers", "--out", str(out), "--no-install"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "palette data: error: dpkg not found on PATH: the wallpaper set is built from Debian packages; "
        "run on a Debian-based system with dpkg on PATH (or copy a set built there)\n"
    )
    assert not out.exists()


def test_build_fails_when_nothing_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(wallpapers, "list_package_files", lambda package: [])
    pool = _fake_pool(tmp_path / "pool.tsv")
    packages = "mate-backgrounds, other-wallpapers, plasma-workspace-wallpapers"
    with warnings.catch_warnings(), pytest.raises(WallpaperError) as raised:
        warnings.simplefilter("error")  # the error says it all: no warning beside it
        build_wallpapers(tmp_path / "out", pool_file=pool, install=False, package_root=tmp_path)
    assert str(raised.value) == (
        f"none of the 5 pool images was found (not installed: {packages}); "
        f"install them: apt-get install {packages.replace(',', '')}"
    )
    assert not (tmp_path / "out").exists()


def test_install_errors_say_what_to_do(monkeypatch):
    monkeypatch.setattr(wallpapers.shutil, "which", lambda tool: None if tool == "apt-get" else "/bin/" + tool)
    monkeypatch.setattr(wallpapers, "is_installed", lambda package: package == "here")
    with pytest.raises(WallpaperError, match="packages absent-a, absent-b are not installed and apt-get is not avail"):
        wallpapers.install_packages(["here", "absent-b", "absent-a"])
    wallpapers.install_packages(["here"])  # nothing missing: no apt-get needed

    monkeypatch.setattr(wallpapers.shutil, "which", lambda tool: "/bin/" + tool)
    denied = "E: Could not open lock file /var/lib/dpkg/lock-frontend - open (13: Permission denied)"
    failing = lambda command, **_: subprocess.CompletedProcess(command, 100, "", denied)  # noqa: E731
    monkeypatch.setattr(wallpapers.subprocess, "run", failing)
    with pytest.raises(WallpaperError) as raised:
        wallpapers.install_packages(["absent-a"])
    advice = "install absent-a as root, then rerun with --no-install"
    assert str(raised.value) == f"`apt-get update` failed (100): {denied}\n{advice}"
