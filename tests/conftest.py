"""Shared fixtures: tiny image folders and a tiny config that trains in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from palette.config import config_from_dict

torch.set_num_threads(1)


def write_images(folder: Path, count: int = 3, size: int = 40, seed: int = 0) -> list[Path]:
    """Smooth random colour images (gradients plus blobs) as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    grid = np.linspace(0, 1, size)
    for index in range(count):
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-120, 120, (2, 3))
        image = base + grid[:, None, None] * slope[0] + grid[None, :, None] * slope[1]
        image = np.clip(image, 0, 255).astype(np.uint8)
        path = folder / f"image{index}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    write_images(tmp_path / "images")
    return tmp_path / "images"


def tiny_values(source: Path, **train) -> dict:
    return {
        "network": {"preset": "tiny"},
        "data": {"source": str(source), "image_size": 16, "num_workers": 0, "crop_scale": [0.5, 1.0],
                 "tasks": {"colorization": 1, "inpainting": 1, "uncropping": 1, "jpeg": 1}},
        "train": {"steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2, "ema_decay": 0.9,
                  "checkpoint_every": 3, "sample_every": 1000, "log_every": 1, **train},
        "sampling": {"sampler": "ddim", "steps": 4},
    }


@pytest.fixture
def tiny_config(image_folder: Path):
    return config_from_dict(tiny_values(image_folder))


def save_tiny_model(folder: Path, tasks: dict[str, float] | None = None, seed: int = 0,
                    name: str = "model.safetensors", sampler: str = "ddim") -> Path:
    """A tiny random PaletteNet (16 px, `tiny_values`, trained on `tasks` by its config, sampling with `sampler`)
    saved as a checkpoint; sampling it takes milliseconds."""
    from palette.checkpoint import save_weights
    from palette.network import PaletteNet

    values = tiny_values(folder)
    values["data"]["tasks"] = tasks or values["data"]["tasks"]
    values["sampling"]["sampler"] = sampler
    config = config_from_dict(values)
    torch.manual_seed(seed)
    net = PaletteNet.from_config(config)
    for parameter in net.parameters():  # a random net, not the zero-initialised one
        torch.nn.init.normal_(parameter, std=0.05)
    save_weights(folder / name, net.state_dict(), config)
    return folder / name
