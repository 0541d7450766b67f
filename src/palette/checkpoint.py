"""Checkpoints: safetensors weights that carry their resolved config, written atomically.

A run directory holds `checkpoints/step_XXXXXXXX/` folders and a `checkpoints/latest` pointer. Each folder has
`ema.safetensors` (enough on its own to sample), `model.safetensors`, `training_state.safetensors` (optimizer
moments) and `training_state.json` (step and optimizer hyper-parameters). Random streams need no state:
training derives every seed from (seed, rank, step), so the step restores them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import Config, ConfigError, config_from_dict, config_to_dict

CONFIG_KEY = "palette_config"


class CheckpointError(ValueError):
    """A checkpoint path that does not hold what is needed; the message names it."""


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], config: Config,
                 dtype: torch.dtype | None = None) -> None:
    """Write weights plus the config as safetensors metadata, atomically (temp file + rename)."""
    path = Path(path)
    tensors = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state_dict.items()}
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        save_file(tensors, temp, metadata={CONFIG_KEY: json.dumps(config_to_dict(config))})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # the temp file is 0600; give it the permissions a plain write would
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Config]:
    """Read weights (as float32) and the config stored beside them."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path}: no palette config in its metadata; was it written by palette?")
    try:
        config = config_from_dict(json.loads(metadata[CONFIG_KEY]))
    except ConfigError as error:
        raise CheckpointError(f"{path}: stored config is invalid: {error}") from error
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, config


def load_state(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load weights read from `path` into `module`, or raise CheckpointError naming what does not fit."""
    try:
        missing, unexpected = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # a shape mismatch
        raise CheckpointError(f"{path}: weights do not fit this network ({str(error).splitlines()[-1].strip()})") \
            from error
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit this network "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def resolve_weights(path: str | Path) -> Path:
    """A .safetensors file, a checkpoint folder, or a run folder (its latest checkpoint) -> EMA weights file."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "ema.safetensors").is_file():
        return path / "ema.safetensors"
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / "ema.safetensors"
    raise CheckpointError(f"{path}: no checkpoint found (expected a .safetensors file, a checkpoint folder or a run folder)")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if folder.is_dir() else None


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small text file so that a reader sees the old or the new text, never a part."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and plain values (for JSON)."""
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                plain["state"].setdefault(str(index), {})[name] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def write_checkpoint(run_dir: str | Path, step: int, config: Config, model: dict[str, torch.Tensor],
                     ema: dict[str, torch.Tensor], optimizer: dict[str, Any], keep: int = 2) -> Path:
    """Write a complete checkpoint folder under a temporary name, rename it, move the pointer, then prune.

    Pruning keeps the `keep` newest checkpoints up to this one and deletes only older (lower-step) folders, so the
    folder `latest` names always exists.
    """
    if keep < 1:
        raise ValueError(f"keep: must be >= 1 (the checkpoint just written), got {keep}")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    temp = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step:08d}."))
    try:
        save_weights(temp / "model.safetensors", model, config)
        save_weights(temp / "ema.safetensors", ema, config)
        tensors, plain = _flatten_optimizer(optimizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temp / "training_state.safetensors")
        (temp / "training_state.json").write_text(json.dumps({"step": step, "optimizer": plain}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(temp, final)
    finally:
        if temp.exists():
            shutil.rmtree(temp)
    write_text_atomic(root / "latest", final.name)
    older = sorted((folder for folder in root.glob("step_*") if _step_of(folder) < step), key=_step_of)
    for old in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old)
    return final


def _step_of(folder: Path) -> int:
    """The step a `step_XXXXXXXX` folder holds; a name without digits counts as the newest, so it is never pruned."""
    digits = folder.name.removeprefix("step_")
    return int(digits) if digits.isdigit() else 2**63


def read_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Everything `write_checkpoint` stored: step, config, model, ema and optimizer states."""
    folder = Path(folder)
    for name in ("model.safetensors", "ema.safetensors", "training_state.safetensors", "training_state.json"):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete checkpoint, {name} is missing")
    model, config = load_weights(folder / "model.safetensors")
    ema, _ = load_weights(folder / "ema.safetensors")
    tensors = load_file(str(folder / "training_state.safetensors"))
    plain = json.loads((folder / "training_state.json").read_text())
    return {
        "step": plain["step"],
        "config": config,
        "model": model,
        "ema": ema,
        "optimizer": _unflatten_optimizer(tensors, plain["optimizer"]),
    }


def export_weights(checkpoint: str | Path, out: str | Path, half: bool = True) -> Path:
    """Copy a checkpoint's EMA weights (fp16 storage by default) and config into one self-contained file."""
    state, config = load_weights(resolve_weights(checkpoint))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, state, config, dtype=torch.float16 if half else None)
    return out
