"""restore and sample_folder with fake networks whose ideal output is known."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from palette.config import config_from_dict
from palette.diffusion import training_noise_levels, v_target
from palette.filters import smooth_chroma, smooth_deep_hole_colour
from palette.folders import sample_folder
from palette.inference import Model, derive_seed, make_denoiser, restore
from palette.samplers import SAMPLERS
from palette.tasks import get_task, luma, source_estimate
from palette.unet import SelfAttention

from conftest import save_tiny_model, tiny_values


class Oracle(torch.nn.Module):
    """Predicts the exact eps or v that lead from x_t to a fixed clean image (or to condition + offset)."""

    def __init__(self, clean: torch.Tensor, objective: str, add_to_condition: bool = False, scale: float = 1.0):
        super().__init__()
        self.clean, self.objective, self.add_to_condition, self.scale = clean, objective, add_to_condition, scale

    def forward(self, noisy, noise_level, condition):
        target = (self.clean - condition) * self.scale if self.add_to_condition else self.clean.expand_as(noisy)
        gamma = noise_level.view(-1, 1, 1, 1)
        eps = (noisy - gamma.sqrt() * target) / (1 - gamma).sqrt()
        return eps if self.objective == "eps" else v_target(target, noise_level, eps)


def _model(objective: str, clean: torch.Tensor, residual: bool = False, scale: float | None = None) -> Model:
    values = tiny_values(Path("unused"))
    values["diffusion"] = {"objective": objective, "residual": residual}
    if scale is not None:
        values["diffusion"]["residual_scale"] = {"colorization": scale}
    config = config_from_dict(values)
    return Model(Oracle(clean, objective, add_to_condition=residual, scale=scale or 1.0), config, torch.device("cpu"))


@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_eps_and_v_outputs_become_the_clean_image(objective, sampler):
    clean = torch.linspace(-0.9, 0.9, 3 * 8 * 8).view(1, 3, 8, 8)
    model = _model(objective, clean)
    condition = torch.zeros(2, 3, 8, 8)
    output = restore(model, condition, torch.ones(2, 1, 8, 8), sampler=sampler, steps=10 if sampler != "ddpm" else 50)
    assert torch.allclose(output, clean.expand(2, -1, -1, -1), atol=2e-3)


@pytest.mark.parametrize("scale", [None, 4.0])
def test_a_residual_model_adds_its_output_to_the_estimate_and_keeps_the_luma(scale):
    clean = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    model = _model("v", clean, residual=True, scale=scale)
    task = get_task("colorization")
    condition = task.degrade(clean[0], None).condition[None]
    output = restore(model, condition, torch.ones(1, 1, 8, 8), sampler="dpmpp", steps=8, task=task)
    assert torch.allclose(output, clean, atol=2e-3)
    if scale is not None:  # the network's residual is in scaled units: sampling must know the task
        with pytest.raises(ValueError, match="pass the task"):
            restore(model, condition, torch.ones(1, 1, 8, 8), sampler="dpmpp", steps=8)


def test_seeds_are_per_image_and_name():
    assert derive_seed(0, "a.png", "0") == derive_seed(0, "a.png", "0")
    assert len({derive_seed(0, "a.png", "0"), derive_seed(0, "b.png", "0"), derive_seed(0, "a.png", "1"),
                derive_seed(1, "a.png", "0")}) == 4


def test_sample_folder_output_does_not_depend_on_batch_size_or_neighbours(tmp_path):
    save_tiny_model(tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(3):
        Image.new("L", (16, 16), 40 * index + 60).save(inputs / f"gray{index}.png")
    common = dict(checkpoint=tmp_path / "model.safetensors", task="colorization", num_samples=2, progress=False,
                  device="cpu")
    sample_folder(input=inputs, output=tmp_path / "batch1", batch_size=1, **common)
    sample_folder(input=inputs, output=tmp_path / "batch4", batch_size=4, **common)
    sample_folder(input=inputs / "gray2.png", output=tmp_path / "alone", batch_size=2, **common)

    def pixels(path):
        with Image.open(path) as image:
            return torch.from_numpy(np.asarray(image).copy())

    for name in ("gray0_0.png", "gray1_1.png", "gray2_0.png", "gray2_1.png"):
        assert torch.equal(pixels(tmp_path / "batch1" / name), pixels(tmp_path / "batch4" / name))
    assert torch.equal(pixels(tmp_path / "alone" / "gray2_1.png"), pixels(tmp_path / "batch1" / "gray2_1.png"))
    assert not torch.equal(pixels(tmp_path / "batch1" / "gray2_0.png"), pixels(tmp_path / "batch1" / "gray2_1.png"))


@pytest.mark.parametrize("flag, value, message", [
    ("steps", 0, "--steps must be an integer from 1 to 1000"),
    ("steps", -3, "--steps must be an integer from 1 to 1000"),
    ("steps", 5000, "--steps must be an integer from 1 to 1000"),
    ("num_samples", 0, "--num-samples must be a positive integer"),
    ("batch_size", 0, "--batch-size must be a positive integer"),
    ("sampler", "euler", "--sampler: unknown sampler 'euler'"),
    ("guidance", 0.5, "--guidance must be from 1"),
    ("strength", 0, "--strength must be in"),
])
def test_bad_sampling_options_fail_before_the_model_loads(tmp_path, flag, value, message):
    # The checkpoint does not exist: an error about it would mean the model was loaded first.
    with pytest.raises(ValueError, match=message):
        sample_folder(tmp_path / "missing.safetensors", "jpeg", tmp_path, tmp_path / "out", **{flag: value})


@pytest.fixture
def random_tiny_model(tmp_path) -> Path:
    return save_tiny_model(tmp_path)


def _gray_inputs(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        Image.new("L", (16, 16), 30 * index + 40).save(folder / f"gray{index}.png")
    return folder


def test_a_rerun_skips_complete_outputs_and_redoes_missing_ones(random_tiny_model, tmp_path, capsys):
    inputs = _gray_inputs(tmp_path / "inputs", 3)
    common = dict(checkpoint=random_tiny_model, task="colorization", input=inputs, output=tmp_path / "out",
                  progress=False, device="cpu", steps=2)
    first = sample_folder(**common)
    kept = (tmp_path / "out" / "gray0.png").stat().st_mtime_ns
    (tmp_path / "out" / "gray1.png").unlink()  # as if the first run had been killed before writing it
    again = sample_folder(**common)
    assert [p.name for p in again] == ["gray1.png"] and len(first) == 3
    assert (tmp_path / "out" / "gray0.png").stat().st_mtime_ns == kept
    assert "skipped 2 input(s)" in capsys.readouterr().out
    assert len(sample_folder(**common, overwrite=True)) == 3


def test_an_output_folder_inside_the_input_folder_is_not_read_as_inputs(random_tiny_model, tmp_path, capsys):
    inputs = _gray_inputs(tmp_path / "photos", 2)
    common = dict(checkpoint=random_tiny_model, task="colorization", input=inputs, output=inputs / "colour",
                  progress=False, device="cpu", steps=2)
    assert [p.name for p in sample_folder(**common)] == ["gray0.png", "gray1.png"]
    assert sample_folder(**common) == []  # the rerun sees the 2 inputs, both done; not 4 with clashing names
    assert "skipped 2 input(s)" in capsys.readouterr().out


def test_an_all_black_mask_copies_the_input_with_a_warning(random_tiny_model, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 60)).save(inputs / "photo.png")
    (tmp_path / "masks").mkdir()
    Image.new("L", (16, 16), 0).save(tmp_path / "masks" / "photo.png")
    with pytest.warns(UserWarning, match="photo.png.*nothing to generate"):
        written = sample_folder(random_tiny_model, "inpainting", inputs, tmp_path / "out", mask=tmp_path / "masks",
                                progress=False, device="cpu")
    with Image.open(written[0]) as output, Image.open(inputs / "photo.png") as given:
        assert np.array_equal(np.asarray(output), np.asarray(given))


def test_inputs_that_would_share_an_output_name_are_refused(random_tiny_model, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("L", (16, 16), 50).save(inputs / "a.png")
    Image.new("L", (16, 16), 90).save(inputs / "a.jpg")
    with pytest.raises(ValueError, match="a.jpg.*a.png|a.png.*a.jpg"):
        sample_folder(random_tiny_model, "colorization", inputs, tmp_path / "out", progress=False, device="cpu")
    assert not (tmp_path / "out").exists()


def test_ranks_restore_disjoint_shares_that_match_a_single_process(random_tiny_model, tmp_path, monkeypatch):
    inputs = _gray_inputs(tmp_path / "inputs", 5)
    common = dict(checkpoint=random_tiny_model, task="colorization", input=inputs, progress=False, device="cpu",
                  steps=2)
    single = sample_folder(output=tmp_path / "single", **common)
    shares = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append([p.name for p in sample_folder(output=tmp_path / "ranks", **common)])
    assert sorted(shares[0] + shares[1]) == sorted(p.name for p in single) and not set(shares[0]) & set(shares[1])
    for path in single:
        with Image.open(path) as one, Image.open(tmp_path / "ranks" / path.name) as other:
            assert np.array_equal(np.asarray(one), np.asarray(other))


def test_export_stores_changed_sampling_defaults_and_refuses_training_keys(random_tiny_model, tmp_path, capsys):
    from palette.checkpoint import load_weights
    from palette.cli import main

    out = tmp_path / "exported.safetensors"
    main(["export", "--checkpoint", str(random_tiny_model), "--out", str(out),
          "--set", "sampling.task_steps.colorization=3"])
    state, config = load_weights(out)
    original, _ = load_weights(random_tiny_model)
    assert config.sampling.task_steps == {"colorization": 3}
    assert all(torch.equal(state[k], original[k].half().float()) for k in state)  # fp16 storage
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(random_tiny_model), "--out", str(out), "--set", "train.lr=1",
              "--overwrite"])
    assert "only sampling.* defaults can change after training" in capsys.readouterr().err
    before = out.read_bytes()  # an existing export is kept unless --overwrite says otherwise
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(random_tiny_model), "--out", str(out)])
    assert f"{out}: exists; choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before
    main(["export", "--checkpoint", str(random_tiny_model), "--out", str(out), "--overwrite"])
    assert load_weights(out)[1].sampling.task_steps == {}
    for bad, words in ((f"{tmp_path / 'new'}/", "names a folder; --out takes the file to write"),
                       (str(out / "x.safetensors"), "cannot create its folder")):  # below a file
        with pytest.raises(SystemExit):
            main(["export", "--checkpoint", str(random_tiny_model), "--out", bad])
        assert words in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_export_of_several_checkpoints_is_the_mean_of_their_weights(random_tiny_model, tmp_path, capsys):
    from palette.checkpoint import load_weights, save_weights
    from palette.cli import main

    state, config = load_weights(random_tiny_model)
    branch = tmp_path / "branch.safetensors"  # the same network with dropout and gradient checkpointing
    save_weights(branch, {k: 3 * v + 1 for k, v in state.items()},
                 replace(config, network=replace(config.network, dropout=0.1, gradient_checkpointing=True)))
    out = tmp_path / "soup.safetensors"
    main(["export", "--checkpoint", str(random_tiny_model), "--checkpoint", str(branch), "--out", str(out), "--fp32",
          "--set", "sampling.steps=7"])
    soup, soup_config = load_weights(out)
    assert all(torch.allclose(soup[k], 2 * v + 0.5, atol=1e-6) for k, v in state.items())
    assert soup_config.network == config.network and soup_config.sampling.steps == 7

    other = tmp_path / "other.safetensors"
    schedule = replace(config.diffusion, train_steps=config.diffusion.train_steps + 1)  # another noise schedule
    save_weights(other, state, replace(config, diffusion=schedule))
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(random_tiny_model), "--checkpoint", str(other), "--out",
              str(tmp_path / "failed.safetensors")])
    assert f"{other}: another network or diffusion setting" in capsys.readouterr().err

    # A branch that learned to take the mask (network.mask_input) joins the soup first; the other's mask weights
    # count as zero.
    masked_config = replace(config, network=replace(config.network, mask_input=True))
    masked = tmp_path / "masked.safetensors"
    widened = dict(state, **{"unet.conv_in.weight": torch.ones(state["unet.conv_in.weight"].shape[0], 7, 3, 3)})
    save_weights(masked, widened, masked_config)
    main(["export", "--checkpoint", str(masked), "--checkpoint", str(random_tiny_model), "--out", str(out), "--fp32",
          "--overwrite"])
    soup, soup_config = load_weights(out)
    mixed = soup["unet.conv_in.weight"]
    assert soup_config.network.mask_input and torch.equal(mixed[:, 3], torch.full_like(mixed[:, 3], 0.5))
    assert torch.allclose(mixed[:, [0, 1, 2, 4, 5, 6]], (1 + state["unet.conv_in.weight"]) / 2)
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(random_tiny_model), "--checkpoint", str(masked), "--out",
              str(tmp_path / "failed.safetensors")])
    assert f"{masked}: its network takes the mask and {random_tiny_model}'s does not; list it first" in \
        capsys.readouterr().err


def test_a_task_samples_with_its_own_default_steps():
    clean = torch.zeros(1, 3, 8, 8)
    model = _model("v", clean)
    model = Model(model.net, replace(model.config, sampling=replace(model.config.sampling, task_steps={"jpeg": 3})),
                  model.device)
    calls = []
    model.net.register_forward_hook(lambda module, args, output: calls.append(1))
    restore(model, torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 8, 8), task=get_task("jpeg"))
    restore(model, torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 8, 8), task=get_task("colorization"))
    assert len(calls) == 3 + model.config.sampling.steps


class Guided(torch.nn.Module):
    """Outputs v = 1 everywhere, or 0 while its attention is perturbed: the guided v is then the weight itself."""

    def __init__(self):
        super().__init__()
        self.attention = SelfAttention(4, head_channels=4, groups=None)

    def forward(self, noisy, noise_level, condition):
        return torch.zeros_like(noisy) if self.attention.perturbed else torch.ones_like(noisy)


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_guidance_extrapolates_away_from_the_perturbed_network(guidance):
    config = config_from_dict({**tiny_values(Path("unused")), "diffusion": {"objective": "v"},
                               "sampling": {"task_guidance": {"colorization": guidance}}})
    net = Guided()
    calls = []
    net.register_forward_hook(lambda module, args, output: calls.append(1))
    noisy, noise_level = torch.zeros(1, 3, 4, 4), torch.full((1,), 0.36)
    denoise = make_denoiser(net, config, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), lambda x: x,
                            guidance=config.sampling.for_task("guidance", "colorization"))
    # x0 = sqrt(gamma) x_t - sqrt(1 - gamma) v, with v = 0 + guidance * (1 - 0)
    torch.testing.assert_close(denoise(noisy, noise_level), torch.full((1, 3, 4, 4), -0.8 * guidance))
    assert len(calls) == (1 if guidance == 1 else 2)
    assert config.sampling.for_task("guidance", "jpeg") == 1.0
    with pytest.raises(ValueError, match="--guidance must be from 1"):
        restore(Model(net, config, torch.device("cpu")), torch.zeros(1, 3, 4, 4), torch.ones(1, 1, 4, 4),
                task=get_task("colorization"), guidance=0.5)


def test_a_task_strength_below_one_starts_from_the_input_estimate_and_runs_that_share_of_the_steps():
    clean = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    model = _model("v", clean, residual=True)
    sampling = replace(model.config.sampling, steps=20, task_strength={"inpainting": 0.25})
    model = Model(model.net, replace(model.config, sampling=sampling), model.device)
    task = get_task("inpainting")
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    condition = torch.where(mask > 0.5, 0.0, clean)
    calls = []
    model.net.register_forward_hook(lambda module, args, output: calls.append(1))
    output = restore(model, condition, mask, task=task, seed=3)
    assert len(calls) == 5  # round(0.25 * 20)
    explicit = restore(model, condition, mask, task=task, seed=3, init=source_estimate(condition, mask), strength=0.25)
    assert torch.equal(output, explicit)
    assert torch.allclose(output, clean, atol=2e-3)  # the ideal denoiser still lands on the clean image
    restore(model, condition, mask, task=task, seed=3, strength=1.0)
    assert len(calls) == 5 + 5 + 20


def test_a_task_final_denoising_step_asks_the_network_once_more_at_its_level():
    clean = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    model = _model("v", clean, residual=True)
    final = training_noise_levels(model.config.diffusion)[50].item()
    # An ideal denoiser for the clean image at the final step's level, and for half of it at any other.
    near, far = model.net, Oracle(clean / 2, "v", add_to_condition=True)
    levels = []

    def net(noisy, noise_level, condition):
        levels.append(noise_level.item())
        return (near if noise_level.item() == pytest.approx(final) else far)(noisy, noise_level, condition)

    sampling = replace(model.config.sampling, steps=4, task_final_denoise={"inpainting": 49})
    model = Model(net, replace(model.config, sampling=sampling), model.device)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    condition = torch.where(mask > 0.5, 0.0, clean)
    output = restore(model, condition, mask, task=get_task("inpainting"), seed=3)
    assert len(levels) == 5 and levels[-1] == pytest.approx(final)
    assert torch.allclose(output, clean, atol=2e-3)  # the final step's estimate is the output
    restore(model, condition, mask, task=get_task("jpeg"), seed=3)
    assert len(levels) == 5 + 4 and final not in levels[5:]  # JPEG has no final step here
    without = replace(model.config, sampling=replace(sampling, task_final_denoise={}))
    output = restore(Model(net, without, model.device), condition, mask, task=get_task("inpainting"), seed=3)
    assert torch.allclose(output, torch.where(mask > 0.5, clean / 2, clean), atol=2e-3)


def test_the_chroma_filter_smooths_the_colour_of_a_colorization_and_keeps_its_luma():
    clean = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 1.6 - 0.8
    model = _model("v", clean, residual=True)
    task = get_task("colorization")
    condition = task.degrade(clean[0], None).condition[None]
    sampling = replace(model.config.sampling, task_chroma_filter={"colorization": 1})
    smoothed = restore(Model(model.net, replace(model.config, sampling=sampling), model.device), condition,
                       torch.ones(1, 1, 8, 8), sampler="dpmpp", steps=8, task=task)
    assert torch.allclose(smoothed, task.keep_input(smooth_chroma(clean, 1), condition), atol=2e-3)
    assert torch.allclose(luma(smoothed), luma(condition), atol=1e-6)  # the given luma
    assert (smoothed - clean).abs().amax() > 0.1  # the oracle's random colour was smoothed


@pytest.mark.parametrize("residual", [False, True])
def test_keeping_the_estimates_colour_takes_only_the_luma_of_what_the_network_adds(residual):
    clean = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    model = _model("v", clean, residual=residual)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:7, 1:6] = 1
    condition = torch.where(mask > 0.5, 0.0, clean)
    task = get_task("inpainting")
    plain = restore(model, condition, mask, task=task, seed=3)
    assert torch.allclose(plain, clean, atol=2e-3)  # the ideal denoiser, colour and all
    sampling = replace(model.config.sampling, task_estimate_chroma={"inpainting": True})
    kept = restore(Model(model.net, replace(model.config, sampling=sampling), model.device), condition, mask,
                   task=task, seed=3)
    fill = source_estimate(condition, mask)
    assert torch.allclose(luma(kept), luma(clean), atol=2e-3)  # the luma is the network's
    assert torch.allclose(kept - luma(kept), fill - luma(fill), atol=2e-3)  # the colour is the fill's
    assert torch.equal(kept * (1 - mask), condition * (1 - mask))  # known pixels exact
    assert (kept - clean).abs().amax() > 0.05  # and the fill's colour differs from the truth here


def test_a_deep_hole_has_its_colour_smoothed_and_a_thin_one_keeps_its_own():
    clean = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 1.6 - 0.8
    model = _model("v", clean, residual=True)
    task = get_task("inpainting")
    sampling = replace(model.config.sampling, task_hole_colour_depth={"inpainting": 4})
    recolouring = Model(model.net, replace(model.config, sampling=sampling), model.device)
    deep, thin = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    deep[..., 4:12, 4:12] = 1  # 4 px from its centre to a known pixel
    thin[..., 2:14, 7:10] = 1  # 2 px
    for mask, expected in ((deep, smooth_deep_hole_colour(clean, deep, 4)), (thin, clean)):
        output = restore(recolouring, torch.where(mask > 0.5, 0.0, clean), mask, task=task, seed=3)
        assert torch.allclose(output, expected, atol=2e-3)  # the ideal denoiser's, smoothed where deep
    assert (smooth_deep_hole_colour(clean, deep, 4) - clean).abs().amax() > 0.1
