"""scripts/unseen_photos.py: the held-out photo crops are read from the installed packages, the same on every run."""

import hashlib
import importlib.util
import sys
from pathlib import Path

from PIL import Image

SCRIPT = Path(__file__).parents[1] / "scripts" / "unseen_photos.py"


def _run(out: Path, monkeypatch) -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("unseen_photos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["unseen_photos.py", "--out", str(out)])
    module.main()
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(out.iterdir())}


def test_the_unseen_photos_give_24_crops_of_64_px_the_same_each_run(tmp_path, monkeypatch):
    first = _run(tmp_path / "a", monkeypatch)
    assert first == _run(tmp_path / "b", monkeypatch)
    names = (tmp_path / "a" / "list.txt").read_text().split()
    assert len(names) == 24 and set(names) | {"list.txt"} == set(first)
    assert names[:4] == ["cheetah_0.png", "cheetah_1.png", "cheetah_2.png", "cheetah_3.png"]
    for name in names:
        with Image.open(tmp_path / "a" / name) as crop:
            assert crop.size == (64, 64) and crop.mode == "RGB"
