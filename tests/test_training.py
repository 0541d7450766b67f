"""Training: bit-exact resume, run directories, seeds, the DDP gloo run, the objectives, and bad data."""

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from palette.checkpoint import (CheckpointError, latest_checkpoint, load_weights, read_checkpoint,
                                write_checkpoint)
from palette.config import ConfigError, config_from_dict, load_config
from palette.demo import shipped_model_path
from palette.diffusion import RESIDUAL_RMS, sample_noise_level, training_noise_levels
from palette.imageio import ImageError
from palette.inference import Model, load_model, restore
from palette.network import PaletteNet
from palette.tasks import source_estimate
from palette.training import RUN_FILES, RunDirectoryError, diffusion_loss, learning_rate, step_seeds, train

from conftest import tiny_values

REPO = Path(__file__).resolve().parents[1]


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> list[float]:
    return [entry["loss"] for entry in _log(run_dir)]


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_config, tmp_path):
    whole = train(tiny_config, tmp_path / "whole", progress=False)
    stopped = replace(tiny_config, train=replace(tiny_config.train, steps=3))
    train(stopped, tmp_path / "split", progress=False)
    resumed = train(tiny_config, tmp_path / "split", resume=True, progress=False)
    assert len(_losses(tmp_path / "whole")) == 6
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")  # bit-exact on CPU
    for name, value in whole.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[name]), name
    state = read_checkpoint(latest_checkpoint(tmp_path / "split"))
    assert state["step"] == 6 and state["config"] == tiny_config
    for name, value in whole.ema.state_dict().items():
        assert torch.equal(value, state["ema"][name]), name


def test_a_resumed_run_rewrites_the_log_past_its_checkpoint(tiny_config, tmp_path):
    train(tiny_config, tmp_path / "run", progress=False)
    whole = _log(tmp_path / "run")
    # As if the run had died after logging steps 4 to 6 but before writing their checkpoint, mid-line.
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "latest").write_text("step_00000003")
    shutil.rmtree(checkpoints / "step_00000006")
    with open(tmp_path / "run" / "log.jsonl", "a") as log:
        log.write('{"step": 7, "lo')
    train(None, tmp_path / "run", resume=True, progress=False)
    resumed = _log(tmp_path / "run")
    assert [entry["step"] for entry in resumed] == [1, 2, 3, 4, 5, 6]
    assert [entry["loss"] for entry in resumed] == [entry["loss"] for entry in whole]


def test_checkpoints_are_complete_and_pruned(tiny_config, tmp_path):
    config = replace(tiny_config, train=replace(tiny_config.train, checkpoint_every=1, keep_checkpoints=2))
    train(config, tmp_path / "run", progress=False)
    folders = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert folders == ["latest", "step_00000005", "step_00000006"]  # no temp folders left behind
    assert (tmp_path / "run" / "config.yaml").is_file()
    # The EMA differs from the raw weights and is what sampling loads.
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000006")
    assert any(not torch.equal(state["model"][k], state["ema"][k]) for k in state["model"])
    model = load_model(tmp_path / "run", "cpu")
    assert all(torch.equal(v, state["ema"][k]) for k, v in model.net.state_dict().items())


def test_pruning_deletes_only_checkpoints_older_than_the_one_written(tiny_config, tmp_path):
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(net.parameters())
    state = (tiny_config, net.state_dict(), net.state_dict(), optimizer.state_dict())
    for step in (1, 2, 3, 4):
        write_checkpoint(tmp_path / "run", step, *state, keep=2)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == \
        ["latest", "step_00000003", "step_00000004"]
    # A higher step left by another run is neither what gets deleted nor what `latest` loses.
    write_checkpoint(tmp_path / "other", 9, *state, keep=1)
    write_checkpoint(tmp_path / "other", 3, *state, keep=1)
    assert sorted(p.name for p in (tmp_path / "other" / "checkpoints").iterdir()) == \
        ["latest", "step_00000003", "step_00000009"]
    assert latest_checkpoint(tmp_path / "other").name == "step_00000003"
    with pytest.raises(ValueError, match="keep.*>= 1"):
        write_checkpoint(tmp_path / "run", 5, *state, keep=0)


def test_a_resumed_run_prunes_what_a_kill_before_pruning_left(tiny_config, tmp_path):
    # A kill between the last checkpoint's write and its pruning leaves one folder too many; the finished run,
    # resumed, writes nothing more, so resuming itself must prune.
    train(tiny_config, tmp_path / "run", progress=False)  # checkpoints at 3 and 6, keep 2
    root = tmp_path / "run" / "checkpoints"
    shutil.copytree(root / "step_00000003", root / "step_00000001")
    train(None, tmp_path / "run", resume=True, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003", "step_00000006"]


def test_resuming_with_a_network_the_checkpoint_does_not_fit_is_one_line(tiny_config, tmp_path, capsys):
    from palette.cli import main

    train(tiny_config, tmp_path / "run", progress=False)
    old = _contents(tmp_path / "run")
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--resume", str(tmp_path / "run"), "--set", "network.base_channels=32"])
    [line] = capsys.readouterr().err.splitlines()
    assert stopped.value.code == 2
    assert line.startswith(f"palette train: error: {tmp_path / 'run/checkpoints/step_00000006/model.safetensors'}: "
                           f"weights do not fit this network")
    assert line.endswith("; this config changes network.base_channels 16 -> 32")
    assert _contents(tmp_path / "run") == old


@pytest.mark.parametrize("steps", [4, 6])
def test_resuming_a_run_at_or_past_its_steps_says_so_and_changes_nothing(tiny_config, tmp_path, capsys, steps):
    train(tiny_config, tmp_path / "run", progress=False)
    old = _contents(tmp_path / "run")
    capsys.readouterr()
    shorter = replace(tiny_config, train=replace(tiny_config.train, steps=steps))
    result = train(shorter, tmp_path / "run", resume=True, progress=False)
    assert capsys.readouterr().out == f"palette: {tmp_path / 'run'} is already at step 6 of train.steps={steps}; " \
        "nothing to do (raise train.steps to train on)\n"
    assert _contents(tmp_path / "run") == old  # config.yaml still says steps: 6
    assert "  steps: 6\n" in (tmp_path / "run" / "config.yaml").read_text()
    assert result.checkpoint == tmp_path / "run" / "checkpoints" / "step_00000006"
    state = read_checkpoint(result.checkpoint)
    assert all(torch.equal(value, state["ema"][name]) for name, value in result.ema.state_dict().items())


@pytest.mark.parametrize("marker", RUN_FILES)
def test_a_fresh_run_refuses_a_directory_holding_a_run(tiny_config, tmp_path, marker):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / marker).write_text("the old run")
    with pytest.raises(RunDirectoryError, match="--resume.*--overwrite"):
        train(tiny_config, tmp_path / "run", progress=False)
    assert _contents(tmp_path / "run") == {marker: b"the old run"}


def test_overwrite_moves_the_old_run_aside_and_starts_afresh(tiny_config, tmp_path, capsys):
    short = replace(tiny_config, train=replace(tiny_config.train, steps=3))
    train(tiny_config, tmp_path / "run", progress=False)
    old = _contents(tmp_path / "run")
    with pytest.raises(RunDirectoryError):
        train(short, tmp_path / "run", progress=False)
    assert _contents(tmp_path / "run") == old
    result = train(short, tmp_path / "run", overwrite=True, progress=False)
    [aside] = tmp_path.glob("run.old-*")
    assert f"moved the previous run in {tmp_path / 'run'} to {aside}" in capsys.readouterr().out
    assert _contents(aside) == old
    assert [entry["step"] for entry in _log(tmp_path / "run")] == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step_00000003"]
    assert latest_checkpoint(tmp_path / "run") == result.checkpoint
    with pytest.raises(ValueError, match="choose one"):
        train(None, tmp_path / "run", resume=True, overwrite=True, progress=False)


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_a_bar_on_a_terminal_and_a_line_per_log_step_in_a_log_file(tiny_config, tmp_path, capsys,
                                                                               monkeypatch, terminal):
    config = replace(tiny_config, train=replace(tiny_config.train, log_every=2))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    train(config, tmp_path / "run")
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("palette: step")]
    logged = _log(tmp_path / "run")
    assert [entry["step"] for entry in logged] == [2, 4, 6]
    if terminal:
        assert lines == [] and "\rtraining: 100%" in err
    else:
        assert lines == [f"palette: step {entry['step']}/6, loss {entry['loss']:.4f}, "
                         f"{entry['images_per_second']:.1f} img/s, lr 0.001" for entry in logged]
        assert "\r" not in out + err


def test_step_seeds_are_distinct_across_seeds_ranks_steps_and_streams():
    assert step_seeds(0, 1, 0) != step_seeds(0, 0, 7919)  # the old linear formula made these equal
    assert step_seeds(0, 0, 5) == step_seeds(0, 0, 5)
    seeds = [value for seed, rank, step in itertools.product(range(2), range(4), range(1000))
             for value in step_seeds(seed, rank, step)]
    assert len(set(seeds)) == len(seeds) == 2 * 2 * 4 * 1000  # dropout and noise seeds differ too
    assert all(0 <= value < 2**64 for value in seeds)


def test_training_lowers_the_loss_of_a_fixed_batch(image_folder, tmp_path):
    config = config_from_dict(tiny_values(image_folder, steps=60, checkpoint_every=60, lr=3e-3))
    result = train(config, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:3]) / 3
    assert result.checkpoint.name == "step_00000060"


def test_regression_baseline_trains_and_samples_in_one_pass(image_folder, tmp_path):
    values = tiny_values(image_folder, steps=4)
    values["diffusion"] = {"objective": "regression"}
    train(config_from_dict(values), tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run", "cpu")
    calls = []
    model.net.register_forward_hook(lambda *args: calls.append(1))
    condition, mask = torch.zeros(2, 3, 16, 16), torch.ones(2, 1, 16, 16)
    output = restore(model, condition, mask, sampler="ddpm", steps=50)
    assert output.shape == (2, 3, 16, 16) and len(calls) == 1


def test_the_v_objective_scores_the_velocity_inside_the_mask(image_folder, tmp_path):
    values = tiny_values(image_folder, steps=3)
    values["diffusion"] = {"objective": "v"}
    config = config_from_dict(values)
    target = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.ones(2, 1, 16, 16)
    mask[1, :, :, :8] = 0  # the second sample's left half is known
    batch = {"target": target, "condition": torch.zeros_like(target), "mask": mask}
    levels = training_noise_levels(config.diffusion)
    # By hand: the same draws give gamma and eps, v = sqrt(gamma) eps - sqrt(1 - gamma) x_0 (Salimans & Ho §4).
    draws = torch.Generator().manual_seed(5)
    gamma = sample_noise_level(levels, 2, draws).view(2, 1, 1, 1)
    eps = torch.randn(target.shape, generator=draws)
    velocity = gamma.sqrt() * eps - (1 - gamma).sqrt() * target
    # A freshly built network predicts zero (zero-initialised output layer), so it scores the mean square of v.
    zero = PaletteNet.from_config(config)
    loss = diffusion_loss(zero, batch, config, levels, torch.Generator().manual_seed(5))
    expected = torch.stack([velocity[0].square().mean(), velocity[1, :, :, 8:].square().mean()])
    assert torch.allclose(loss, expected, rtol=1e-5)
    # A network that predicts v exactly from x_t and the clean target scores zero; predicting eps does not.
    ideal = lambda noisy, noise_level, condition: velocity
    assert diffusion_loss(ideal, batch, config, levels, torch.Generator().manual_seed(5)).abs().max() < 1e-10
    wrong = lambda noisy, noise_level, condition: eps
    assert diffusion_loss(wrong, batch, config, levels, torch.Generator().manual_seed(5)).amin() > 1e-3
    train(config, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3 and all(0 < loss < 10 for loss in losses)


def test_a_residual_model_starts_from_the_input_and_learns_the_residual(image_folder, tmp_path):
    values = tiny_values(image_folder, steps=1)
    values["diffusion"] = {"objective": "regression", "residual": True}
    config = config_from_dict(values)
    # The zero-initialised output layer predicts a zero residual: JPEG comes back as given, holes filled smoothly.
    net = PaletteNet.from_config(config)
    model = Model(net.eval(), config, torch.device("cpu"))
    condition = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.ones(2, 1, 16, 16)
    mask[1, :, :, :8] = 0
    output = restore(model, condition, mask)
    assert torch.equal(output, source_estimate(condition, mask))
    # The loss is that of the residual: a fake network predicting target - input exactly scores zero.
    # Tasks are numbered in sorted order: 2 = jpeg, 1 = inpainting.
    batch = {"target": torch.rand(2, 3, 16, 16) * 2 - 1, "condition": condition, "mask": mask,
             "task": torch.tensor([2, 1])}
    residual = batch["target"] - source_estimate(condition, mask)
    ideal = lambda noisy, noise_level, condition: residual
    generator = torch.Generator().manual_seed(0)
    levels = training_noise_levels(config.diffusion)
    assert diffusion_loss(ideal, batch, config, levels, generator).abs().max() < 1e-12
    direct = replace(config, diffusion=replace(config.diffusion, residual=False))
    assert diffusion_loss(ideal, batch, direct, levels, generator).amin() > 1e-3
    # With network.mask_input the network sees the mask beside the estimate, in training and in sampling.
    seen = []
    recording = lambda noisy, noise_level, condition: seen.append(condition) or torch.zeros_like(noisy)
    masked = replace(config, network=replace(config.network, mask_input=True))
    diffusion_loss(recording, batch, masked, levels, generator)
    restore(Model(recording, replace(masked, diffusion=replace(masked.diffusion, objective="v")), torch.device("cpu")),
            condition, mask, steps=2)
    assert len(seen) == 3
    for condition_seen in seen:
        assert torch.equal(condition_seen, torch.cat([source_estimate(condition, mask), mask], dim=1))
    # Per-task residual scales: the target of sample i is its residual times its task's scale.
    scaled = replace(config, diffusion=replace(config.diffusion, residual_scale={"jpeg": 4.0, "inpainting": 2.0}))
    factor = torch.tensor([4.0, 2.0]).view(2, 1, 1, 1)
    ideal_scaled = lambda noisy, noise_level, condition: residual * factor
    assert diffusion_loss(ideal_scaled, batch, scaled, levels, generator).abs().max() < 1e-10
    assert diffusion_loss(ideal, batch, scaled, levels, generator).amin() > 1e-3
    # Rebalancing weighs the errors of the tasks it names (jpeg here) by their residual's size, and no other's.
    zero = lambda noisy, noise_level, condition: torch.zeros_like(noisy)
    rebalanced = replace(config, diffusion=replace(config.diffusion, residual_rebalance={"jpeg": 2.0}))
    plain, weighted = (diffusion_loss(zero, batch, c, levels, generator) for c in (config, rebalanced))
    size = residual[0].square().mean(0).sqrt() / RESIDUAL_RMS
    assert weighted[0].item() == pytest.approx(((1 + 2 * size) * residual[0].square()).mean().item(), rel=1e-5)
    assert weighted[1].item() == plain[1].item()


def test_a_run_can_start_from_trained_weights(tiny_config, image_folder, tmp_path):
    first = train(tiny_config, tmp_path / "first", progress=False)
    # One step at lr 0 leaves the starting weights as they are.
    started = replace(tiny_config, train=replace(tiny_config.train, steps=1, lr=0.0, init_from=str(tmp_path / "first")))
    second = train(started, tmp_path / "second", progress=False)
    for name, value in first.ema.state_dict().items():
        assert torch.equal(second.net.state_dict()[name], value), name
        assert torch.equal(second.ema.state_dict()[name], value), name
    # A network that takes the mask starts from one that did not: its mask weights at zero, the rest as trained.
    masked = replace(started, network=replace(started.network, mask_input=True))
    widened = train(masked, tmp_path / "masked", progress=False).net.state_dict()["unet.conv_in.weight"]
    given = first.ema.state_dict()["unet.conv_in.weight"]
    assert torch.count_nonzero(widened[:, 3]) == 0 and torch.equal(widened[:, [0, 1, 2, 4, 5, 6]], given)
    other = config_from_dict(tiny_values(image_folder, steps=1, init_from=str(tmp_path / "first")))
    other = replace(other, network=replace(other.network, base_channels=32))
    with pytest.raises(CheckpointError, match="first.*do not fit this network"):
        train(other, tmp_path / "third", progress=False)


def test_make_train_default_branches_from_the_shipped_model(image_folder, tmp_path):
    """A fresh clone's `make train-default`: the default recipe starts from the shipped weights, and its network,
    diffusion and sampling settings are the shipped model's, so a soup led by the chunk exports like it."""
    shipped = shipped_model_path()
    dry_run = subprocess.run(["make", "-n", "-C", str(REPO), "train-default", "SEED=9"], capture_output=True,
                             text=True, check=True).stdout
    assert f"--set train.init_from={shipped.relative_to(REPO)} --set train.seed=9" in dry_run
    assert shipped.stat().st_size < 10e6  # the model issue: the repository grows by at most 10 MB per chunk
    config = load_config(REPO / "configs" / "default-cpu.yaml", [
        f"data.source={image_folder}", f"data.preview_source={image_folder}", "train.steps=1", "train.decay_steps=0",
        "train.batch_size=2", f"train.init_from={shipped}"])
    started = train(replace(config, train=replace(config.train, lr=0.0)), tmp_path / "default", progress=False)
    weights, stored = load_weights(shipped)
    assert (stored.network, stored.diffusion, stored.sampling) == (config.network, config.diffusion, config.sampling)
    ema = started.ema.state_dict()
    for name, value in weights.items():  # one step at lr 0 leaves them as they are
        assert torch.equal(ema[name], value.float()), name


def test_a_corrupt_image_is_skipped_with_a_warning_naming_it(image_folder, tmp_path):
    (image_folder / "broken.png").write_bytes(b"not a png at all")
    config = config_from_dict(tiny_values(image_folder, steps=1))
    with pytest.warns(UserWarning) as caught:  # with no `match`, pytest keeps every warning it catches
        train(config, tmp_path / "run", progress=False)
    messages = [str(w.message) for w in caught]
    assert any("broken.png" in message for message in messages)
    assert any("skipped 1 unreadable image(s) of 4" in message for message in messages)


def test_a_folder_without_usable_images_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="empty: no usable image"):
        train(config_from_dict(tiny_values(tmp_path / "empty")), tmp_path / "run", progress=False)


def test_a_list_file_is_a_data_source(image_folder, tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("images/image0.png\nimages/image2.png\n")
    result = train(config_from_dict(tiny_values(listing, steps=1)), tmp_path / "run", progress=False)
    assert result.checkpoint is not None


def test_ddp_with_two_gloo_processes_ends_with_identical_weights(image_folder, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, torch
        import torch.distributed as dist
        from safetensors.torch import save_file
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import tiny_values
        from palette.config import config_from_dict
        from palette.training import train
        torch.set_num_threads(1)
        result = train(config_from_dict(tiny_values({str(image_folder)!r}, steps=3)), {str(tmp_path / "run")!r},
                       progress=False)
        assert not dist.is_initialized()  # train() started the process group, so it also destroyed it
        save_file(result.net.state_dict(), {str(tmp_path)!r} + f"/rank{{os.environ['RANK']}}.safetensors")
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                    str(script)], check=True, env=env, timeout=300, cwd=tmp_path)
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # The two ranks saw different data, so the run is not just a single-process run twice.
    single = train(config_from_dict(tiny_values(image_folder, steps=3)), tmp_path / "single", progress=False)
    assert any(not torch.equal(rank0[k], v) for k, v in single.net.state_dict().items())


def test_learning_rate_warms_up_holds_and_cools_down_to_zero():
    settings = config_from_dict({"train": {"steps": 1000, "lr": 1e-3, "warmup_steps": 100,
                                           "decay_steps": 200}}).train
    rates = [learning_rate(settings, step) for step in (0, 49, 99, 500, 799, 800, 900, 999)]
    assert rates == pytest.approx([1e-5, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-6])
    constant = replace(settings, decay_steps=0)
    assert learning_rate(constant, 999) == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"train.decay_steps: must be at most train.steps \(1000\), got 1001"):
        config_from_dict({"train": {"steps": 1000, "decay_steps": 1001}})
