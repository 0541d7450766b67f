"""Crash safety, measured: training killed with SIGKILL at random moments resumes, reads no torn checkpoint, loses at
most one checkpoint interval per kill, and ends bit for bit where the uninterrupted run ends; alone and under DDP.

Every run is a real `python -m palette train` process (or `torchrun` job), killed and resumed by `--resume RUN`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from palette.checkpoint import CheckpointError, latest_checkpoint, read_checkpoint
from palette.training import train

from conftest import tiny_values

STEPS, EVERY, KILLS = 40, 2, 20
CHECKPOINT_FILES = {"model.safetensors", "ema.safetensors", "training_state.safetensors", "training_state.json"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--monitor-interval=0.2"]


def config_file(folder: Path, images: Path, **train_values) -> Path:
    """A tiny run's YAML config (16 px, tiny preset), as `palette train --config` reads it."""
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tiny_values(images, **train_values)))
    return path


def train_command(run: Path, config: Path, launcher: list[str] | None = None) -> list[str]:
    """`palette train` that starts the run, or resumes it once it has written its config."""
    fresh = ["--config", str(config), "--run-dir", str(run)]
    return (launcher or [sys.executable]) + ["-m", "palette", "train",
                                              *(["--resume", str(run)] if (run / "config.yaml").is_file() else fresh)]


def launch(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=ENV, cwd=log.parent)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def logged_steps(run: Path) -> list[int]:
    """Steps of the complete lines of log.jsonl (a line cut short by a kill is not one)."""
    path = run / "log.jsonl"
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("\n")]


def check_checkpoints(run: Path) -> int:
    """Assert that `latest` names a complete folder and every visible `step_*` folder is complete, loads and has
    ordinary permissions; returns the step `latest` names (0 if none)."""
    root = run / "checkpoints"
    umask = os.umask(0)
    os.umask(umask)
    for folder in root.glob("step_*"):
        assert {p.name for p in folder.iterdir()} == CHECKPOINT_FILES, folder
        assert read_checkpoint(folder)["step"] == int(folder.name.removeprefix("step_"))
        assert folder.stat().st_mode & 0o777 == 0o777 & ~umask, oct(folder.stat().st_mode)
    if not (root / "latest").exists():
        return 0
    folder = latest_checkpoint(run)
    assert folder is not None, f"latest names {(root / 'latest').read_text()!r}, which is missing"
    return int(folder.name.removeprefix("step_"))


def checkpoint_contents(folder: Path) -> dict[str, object]:
    """Every tensor and number of a checkpoint folder, for bit-exact comparison."""
    contents: dict[str, object] = {"json": json.loads((folder / "training_state.json").read_text())}
    for name in ("model", "ema", "training_state"):
        contents.update({f"{name}/{key}": value for key, value in load_file(folder / f"{name}.safetensors").items()})
    return contents


def assert_same_run(run: Path, reference: Path) -> None:
    """Same log (steps and losses) and the same final checkpoint, bit for bit."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [entry["step"] for entry in expected]
    assert [entry["loss"] for entry in log] == [entry["loss"] for entry in expected]
    ours, theirs = checkpoint_contents(latest_checkpoint(run)), checkpoint_contents(latest_checkpoint(reference))
    assert ours.keys() == theirs.keys()
    differing = [key for key, value in ours.items()
                 if not (torch.equal(value, theirs[key]) if torch.is_tensor(value) else value == theirs[key])]
    assert differing == []


def wait_for_step(run: Path, step: int, process: subprocess.Popen, since: float) -> None:
    """Wait until this process has logged `step` (lines a killed process logged past its checkpoint do not count);
    return early if it ends, or after 300 s, so a hung job fails the test's next assertion instead of hanging it."""
    log = run / "log.jsonl"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if log.is_file() and log.stat().st_mtime > since and (logged_steps(run) or [0])[-1] >= step:
            return
        time.sleep(0.01)


def test_a_run_killed_at_20_random_moments_resumes_to_the_uninterrupted_weights(image_folder, tmp_path):
    config = config_file(tmp_path, image_folder, steps=STEPS, batch_size=2, checkpoint_every=EVERY)
    began = time.monotonic()
    # The uninterrupted run, timed: when its first step is logged, and when it ends.
    reference = tmp_path / "reference"
    process = launch(train_command(reference, config), tmp_path / "reference.log")
    wait_for_step(reference, 1, process, 0.0)
    startup = time.monotonic() - began
    assert process.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    step_time = (time.monotonic() - began - startup) / STEPS

    # The kill moments: 20 steps drawn over the run, each with a delay of up to one checkpoint interval after the
    # step is logged (so kills land in steps and checkpoint writes alike). The last target leaves three intervals
    # to go, so a run that steps faster than the timed one cannot end before its kill. A step the resumed run has
    # already saved means a kill during start-up instead, at a moment drawn over the start-up time.
    rng = np.random.default_rng(20)
    run, kills = tmp_path / "run", []
    for target in sorted(rng.integers(1, STEPS - 3 * EVERY + 1, size=KILLS)):
        saved = check_checkpoints(run)
        since = time.time()
        process = launch(train_command(run, config), tmp_path / "run.log")
        if target <= saved:
            time.sleep(rng.uniform(0, startup))
        else:
            wait_for_step(run, int(target), process, since)
            time.sleep(rng.uniform(0, EVERY * step_time))
        assert process.poll() is None, f"ended before its kill:\n{(tmp_path / 'run.log').read_text()[-2000:]}"
        process.send_signal(signal.SIGKILL)
        process.wait()
        logged = (logged_steps(run) or [0])[-1]
        now_saved = check_checkpoints(run)  # latest names a complete folder; every step_* folder loads
        assert now_saved >= logged - EVERY  # at most one checkpoint interval lost
        kills.append({"in": "start-up" if target <= saved else "training", "logged": logged, "saved": now_saved,
                      "left_behind": [p.name for p in [*run.glob(".*"), *(run / "checkpoints").glob(".*")]]})
    process = launch(train_command(run, config), tmp_path / "run.log")
    assert process.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-2000:]
    check_checkpoints(run)
    assert_same_run(run, reference)  # also: the log holds steps 1..STEPS once each
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000038", "step_00000040"]
    assert list(run.rglob(".*")) == []  # what kills left half written was cleaned up
    assert len(kills) == KILLS
    print(f"\n{len(kills)} kills in {time.monotonic() - began:.0f} s (first step logged at {startup:.1f} s, "
          f"{step_time:.2f} s a step); in start-up: {sum(k['in'] == 'start-up' for k in kills)}, leaving "
          f"temporaries: {sum(bool(k['left_behind']) for k in kills)}\n{json.dumps(kills)}")


def test_a_resume_removes_what_a_kill_left_half_written(tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config, run, progress=False)
    checkpoints = run / "checkpoints"
    # As a kill leaves them: a checkpoint being built, one being deleted, temporaries of the pointer and the log.
    for name in (".step_00000009.x1y2", ".step_00000003.a7b8"):
        (checkpoints / name).mkdir()
        (checkpoints / name / "model.safetensors").write_bytes(b"half")
    (checkpoints / ".latest.k3j4.tmp").write_text("step_0000")
    (run / ".log.jsonl.q1w2.tmp").write_text('{"step": 1')
    (run / ".config.yaml.e5r6.tmp").write_text("network:")
    train(None, run, resume=True, progress=False)  # nothing left to train: it only cleans up
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000003", "step_00000006"]
    assert list(run.rglob(".*")) == []
    assert check_checkpoints(run) == 6


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tiny_config, tmp_path):
    whole = train(tiny_config, tmp_path / "whole", progress=False)
    # As if killed after writing its config and logging two steps, before the first checkpoint (step 3).
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((tmp_path / "whole" / "config.yaml").read_text())
    (run / "log.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 9.0}\n{"step": 3, "lo')
    resumed = train(None, run, resume=True, progress=False)
    assert logged_steps(run) == [1, 2, 3, 4, 5, 6]
    assert_same_run(run, tmp_path / "whole")
    assert all(torch.equal(v, resumed.net.state_dict()[k]) for k, v in whole.net.state_dict().items())
    # A pointer naming a missing folder is an error, not a silent restart from step 0.
    (tmp_path / "lost" / "checkpoints").mkdir(parents=True)
    (tmp_path / "lost" / "config.yaml").write_text((run / "config.yaml").read_text())
    (tmp_path / "lost" / "checkpoints" / "latest").write_text("step_00000003")
    with pytest.raises(CheckpointError, match="latest: names 'step_00000003', which is not in"):
        train(None, tmp_path / "lost", resume=True, progress=False)


def torchrun_workers(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the processes a torchrun started."""
    workers = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == launcher.pid:
                environ = (stat.parent / "environ").read_bytes().split(b"\0")
                rank = next(int(v[5:]) for v in environ if v.startswith(b"RANK="))
                workers[rank] = int(stat.parent.name)
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers through /proc")
def test_a_ddp_run_with_a_killed_rank_resumes_to_the_uninterrupted_weights(image_folder, tmp_path):
    steps = 20  # room after the second kill's target, so the job is still training when it is killed
    config = config_file(tmp_path, image_folder, steps=steps, batch_size=2, checkpoint_every=EVERY)
    ddp = lambda: TORCHRUN + ["--nproc_per_node=2", "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    reference = tmp_path / "reference"
    assert launch(train_command(reference, config, ddp()), tmp_path / "reference.log").wait(timeout=300) == 0
    run, rng, kills = tmp_path / "run", np.random.default_rng(2), []
    for victim in (1, 0):  # a rank that only trains, then the one that writes checkpoints
        since = time.time()
        launcher = launch(train_command(run, config, ddp()), tmp_path / "run.log")
        target = check_checkpoints(run) + int(rng.integers(2, 4))
        wait_for_step(run, target, launcher, since)  # not the steps the last killed job logged past its checkpoint
        time.sleep(rng.uniform(0, 0.1))
        workers = torchrun_workers(launcher)
        assert sorted(workers) == [0, 1], (tmp_path / "run.log").read_text()[-2000:]
        os.kill(workers[victim], signal.SIGKILL)
        killed = time.monotonic()
        assert launcher.wait(timeout=120) != 0  # the whole job dies with one rank
        logged = logged_steps(run)
        saved = check_checkpoints(run)
        assert logged[-1] >= target and saved >= logged[-1] - EVERY
        kills.append({"rank": victim, "logged": logged[-1], "saved": saved,
                      "job_ended_after_s": round(time.monotonic() - killed, 2)})
    assert launch(train_command(run, config, ddp()), tmp_path / "run.log").wait(timeout=300) == 0
    assert_same_run(run, reference)
    assert "world size 2" in (tmp_path / "run.log").read_text()
    print(f"\nDDP kills: {json.dumps(kills)}")
