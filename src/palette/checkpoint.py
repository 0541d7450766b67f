"""Checkpoints: safetensors weights that carry their resolved config, written atomically.

A run directory holds `checkpoints/step_XXXXXXXX/` folders and a `checkpoints/latest` pointer. Each folder has
`ema.safetensors` (enough on its own to sample), `model.safetensors`, `training_state.safetensors` (optimizer
moments) and `training_state.json` (step and optimizer hyper-parameters). Random streams need no state:
training derives every seed from (seed, rank, step), so the step restores them.

Crash safety: a process killed at any moment (SIGKILL included) leaves `latest` naming a complete folder, and every
`step_*` folder complete. Folders are built under a dot-name and renamed into place, and are renamed back to a
dot-name before they are deleted; the dot-names a kill leaves behind are removed by the next write or resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import (Config, ConfigError, DiffusionConfig, NetworkConfig, apply_overrides, config_from_dict,
                     config_to_dict)
from .files import ensure_folder, write_atomic
from .network import with_mask_input

CONFIG_KEY = "palette_config"
# The models bundled with the package, by the name a checkpoint argument also accepts (MODEL_CARD.md): the
# multi-task default, and a JPEG-only model that takes more of the blocks out of a heavily compressed photo.
BUNDLED_MODELS = {"multitask": "palette-multitask-64.safetensors", "jpeg": "palette-jpeg-64.safetensors"}


class CheckpointError(ValueError):
    """A checkpoint path that does not hold what is needed; the message names it."""


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], config: Config,
                 dtype: torch.dtype | None = None) -> None:
    """Write weights plus the config as safetensors metadata, atomically (temp file + rename)."""
    tensors = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state_dict.items()}
    metadata = {CONFIG_KEY: json.dumps(config_to_dict(config))}
    write_atomic(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


# The first bytes of what torch.save (a zip archive) and pickle (PROTO opcode, protocol 2-5) write.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = 0x80


def _is_pickle(head: bytes) -> bool:
    return head.startswith(ZIP_MAGIC) or (len(head) > 1 and head[0] == PICKLE_PROTO and 2 <= head[1] <= 5)


def _not_safetensors(path: Path, error: Exception) -> CheckpointError:
    """A one-line CheckpointError saying what `path` holds instead of safetensors, as far as its bytes tell.

    A safetensors file is an 8-byte little-endian header length, a JSON header starting with `{`, then the data.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    header_length = int.from_bytes(head[:8], "little")
    if size == 0:
        what = "an empty file (0 bytes)"
    elif _is_pickle(head):
        what = ("a pickle (torch.save, .pt or .ckpt), which palette never loads because unpickling can run any "
                "code; palette reads only the .safetensors files it writes")
    elif head[8:9] == b"{" and (8 + header_length > size or "incomplete" in str(error)):
        what = f"a truncated safetensors file ({size} bytes; {error})"
    else:
        what = f"not a safetensors file ({error})"
    return CheckpointError(f"{path}: {what}")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or a CheckpointError naming it; nothing is unpickled."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path)), metadata
    except SafetensorError as error:
        raise _not_safetensors(path, error) from error
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read ({error.strerror or error})") from error


def _stored_config(path: Path, metadata: dict[str, str]) -> Config:
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{path}: no palette config in its metadata; was it written by palette?")
    try:
        return config_from_dict(json.loads(metadata[CONFIG_KEY]))
    except (ConfigError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: stored config is invalid: {error}") from error


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Config]:
    """Read weights (as float32) and the config stored beside them."""
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    config = _stored_config(path, metadata)
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, config


def load_config_only(path: str | Path) -> Config:
    """The config stored in a weights file (or a checkpoint folder's EMA weights), without reading any tensor."""
    path = Path(path)
    path = path / "ema.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return _stored_config(path, handle.metadata() or {})
    except SafetensorError as error:
        raise _not_safetensors(path, error) from error


def load_state(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load weights read from `path` into `module`, or raise CheckpointError naming what does not fit."""
    try:
        missing, unexpected = module.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches, one line each after a heading
        mismatches = [line.strip() for line in str(error).splitlines()[1:] if line.strip()] or [str(error)]
        raise CheckpointError(f"{path}: weights do not fit this network, {len(mismatches)} tensor(s) differ "
                              f"(first: {mismatches[0]}); a checkpoint of another network preset?") from error
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit this network "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def check_device(name: str | torch.device | None) -> torch.device:
    """The torch device `name` names (None: cuda if available, else cpu), or a ValueError saying why it cannot run.

    Checked before a model is loaded, so `--device cuda` on a machine without CUDA is one line, not a traceback.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {name}: not a device name (e.g. cpu, cuda, cuda:1)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: palette runs on cpu, cuda or mps")
    return device


def bundled_model_path(name: str) -> Path:
    """The weights file of a bundled model (BUNDLED_MODELS)."""
    return Path(str(resources.files("palette") / "assets" / BUNDLED_MODELS[name]))


def bundled_name(weights: str | Path) -> str | None:
    """Which bundled model a weights file is (a name of BUNDLED_MODELS), None for any other file."""
    return next((name for name in BUNDLED_MODELS if bundled_model_path(name).resolve() == Path(weights).resolve()),
                None)


def resolve_weights(path: str | Path) -> Path:
    """A .safetensors file, a checkpoint folder, a run folder (its latest checkpoint) or the name of a bundled
    model that is not also a path here -> EMA weights file."""
    path = Path(path)
    if not path.exists() and str(path) in BUNDLED_MODELS:
        return bundled_model_path(str(path))
    if path.is_file():
        return path
    if (path / "ema.safetensors").is_file():
        return path / "ema.safetensors"
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / "ema.safetensors"
    raise CheckpointError(f"{path}: no checkpoint found (expected a .safetensors file, a checkpoint folder, a run "
                          f"folder or a bundled model: {', '.join(BUNDLED_MODELS)})")


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    return folder if folder.is_dir() else None


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small text file so that a reader sees the old or the new text, never a part."""
    write_atomic(path, lambda temporary: temporary.write_text(text))


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
    remove_partial_checkpoints(run_dir)
    final = root / f"step_{step:08d}"
    temp = _scratch_folder(root, final.name)
    try:
        save_weights(temp / "model.safetensors", model, config)
        save_weights(temp / "ema.safetensors", ema, config)
        tensors, plain = _flatten_optimizer(optimizer)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, temp / "training_state.safetensors")
        (temp / "training_state.json").write_text(json.dumps({"step": step, "optimizer": plain}))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o777 & ~umask)  # mkdtemp makes it 0700; a checkpoint is as readable as any folder
        if final.exists():
            _delete(final)
        os.replace(temp, final)
    finally:
        if temp.exists():
            shutil.rmtree(temp)
    write_text_atomic(root / "latest", final.name)
    prune_checkpoints(run_dir, step, keep)
    return final


def prune_checkpoints(run_dir: str | Path, step: int, keep: int) -> None:
    """Delete the checkpoints older than `step` but the `keep - 1` newest of them.

    `write_checkpoint` prunes after each write; a resumed run prunes again, since a kill can land between a write
    and its pruning (at a run's last step, no later write would prune).
    """
    root = Path(run_dir) / "checkpoints"
    older = sorted((folder for folder in root.glob("step_*") if _step_of(folder) < step), key=_step_of)
    for old in older[:max(0, len(older) - (keep - 1))]:
        _delete(old)


PARTIAL_PREFIXES = (".step_", ".latest.")  # what a killed write_checkpoint can leave: folders, the pointer's temp


def _scratch_folder(root: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))


def _delete(folder: Path) -> None:
    """Rename `folder` to a dot-name first, so that a kill halfway through deleting leaves no torn `step_*`."""
    doomed = _scratch_folder(folder.parent, folder.name)
    os.replace(folder, doomed)  # onto the empty folder mkdtemp made: atomic
    shutil.rmtree(doomed)


def remove_partial_checkpoints(run_dir: str | Path) -> list[Path]:
    """Delete what a killed checkpoint write or prune left in `run_dir/checkpoints`; returns what it deleted."""
    root = Path(run_dir) / "checkpoints"
    partial = sorted(p for p in root.glob(".*") if p.name.startswith(PARTIAL_PREFIXES)) if root.is_dir() else []
    for path in partial:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return partial


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
    tensors, _ = _read_safetensors(folder / "training_state.safetensors")
    try:
        plain = json.loads((folder / "training_state.json").read_text())
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"{folder / 'training_state.json'}: not valid JSON ({error})") from error
    return {
        "step": plain["step"],
        "config": config,
        "model": model,
        "ema": ema,
        "optimizer": _unflatten_optimizer(tensors, plain["optimizer"]),
    }


def export_weights(checkpoints: str | Path | Sequence[str | Path], out: str | Path, half: bool = True,
                   overrides: Sequence[str] = (), overwrite: bool = False) -> Path:
    """Copy a checkpoint's EMA weights (fp16 storage by default) and config into one self-contained file.

    Several checkpoints give their uniform mean (a model soup, Wortsman et al. 2022): branches fine-tuned from
    one trunk average into one network. They must share the network and the diffusion settings, dropout aside;
    a network without the mask input joins one with it listed first (with_mask_input widens it). The config is
    the first one's. `overrides` (`sampling.KEY=VALUE`) change the sampling defaults stored with the weights;
    nothing that shaped the training can be changed here. An existing `out` is refused unless `overwrite`: an
    export may be the only copy of weights whose run has moved on.
    """
    if str(out).endswith(("/", os.sep)):
        raise CheckpointError(f"{out}: names a folder; --out takes the file to write (e.g. {out}model.safetensors)")
    if Path(out).exists() and not overwrite:
        raise CheckpointError(f"{out}: exists; choose another --out, or pass --overwrite to replace it")
    for override in overrides:
        if not override.startswith("sampling."):
            raise ConfigError(f"export --set {override}: only sampling.* defaults can change after training")
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    state, config = load_weights(resolve_weights(paths[0]))
    for path in paths[1:]:
        other, other_config = load_weights(resolve_weights(path))
        if architecture(other_config) != architecture(config):  # the same network: the same tensors
            raise CheckpointError(f"{path}: another network or diffusion setting than {paths[0]}; only branches of "
                                  "one model can be averaged")
        if other_config.network.mask_input and not config.network.mask_input:
            raise CheckpointError(f"{path}: its network takes the mask and {paths[0]}'s does not; list it first")
        other = with_mask_input(other, config.network)
        state = {k: v + other[k] if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v / len(paths) if v.is_floating_point() else v for k, v in state.items()}
    if overrides:
        config = config_from_dict(apply_overrides(config_to_dict(config), list(overrides)))
    out = Path(out)
    ensure_folder(out)
    save_weights(out, state, config, dtype=torch.float16 if half else None)
    return out


def architecture(config: Config) -> tuple[NetworkConfig, DiffusionConfig]:
    """What two checkpoints must share to be averaged, or to guide one another: the network (dropout, mask input
    and gradient checkpointing aside, which leave the tensors as they are) and the diffusion settings (the loss's
    rebalancing aside, which sampling does not see)."""
    return (replace(config.network, dropout=0.0, mask_input=False, gradient_checkpointing=False),
            replace(config.diffusion, residual_rebalance={}))
