"""Guidance's weak model: a twin network's weights (autoguidance), found beside the model or among the bundled."""

from pathlib import Path

import pytest
import torch

from palette.checkpoint import CheckpointError, export_weights, save_weights
from palette.config import config_from_dict
from palette.demo import shipped_model_path
from palette.guidance import load_guide, weak_network
from palette.inference import load_model, make_denoiser
from palette.network import PaletteNet

from conftest import tiny_values

GUIDE = {"guide": "twin.safetensors", "task_guidance": {"colorization": 2.0}}


def _save(path: Path, seed: int, network: dict | None = None, sampling: dict | None = None,
          diffusion: dict | None = None) -> PaletteNet:
    values = tiny_values(path.parent)
    values["network"].update(network or {})
    values["sampling"].update(sampling or {})
    values["diffusion"] = {"objective": "v", **(diffusion or {})}
    config = config_from_dict(values)
    torch.manual_seed(seed)
    net = PaletteNet.from_config(config)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    save_weights(path, net.state_dict(), config)
    return net.eval()


def test_autoguidance_moves_the_estimate_away_from_the_twin(tmp_path):
    strong = _save(tmp_path / "model.safetensors", 0, sampling=GUIDE)
    twin = _save(tmp_path / "twin.safetensors", 1)
    model = load_model(tmp_path / "model.safetensors", "cpu")
    noisy, noise_level = torch.randn(1, 3, 16, 16), torch.tensor([0.5])
    condition = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        full, weak = strong(noisy, noise_level, condition), twin(noisy, noise_level, condition)
        denoise = make_denoiser(model.net, model.config, condition, torch.zeros(1, 3, 16, 16), lambda image: image,
                                guidance=2.0, guide=model.guide)
        # v-prediction: x0 = sqrt(gamma) x_t - sqrt(1 - gamma) v, with v = weak + 2 (full - weak)
        expected = 0.5 ** 0.5 * noisy - 0.5 ** 0.5 * (weak + 2 * (full - weak))
        torch.testing.assert_close(denoise(noisy, noise_level), expected)
        torch.testing.assert_close(model.net(noisy, noise_level, condition), full)  # its own weights are back
    assert (full - weak).abs().amax() > 0.01  # two different networks


def test_the_twin_takes_the_place_of_a_wrapped_networks_weights_and_gives_it_back():
    net = PaletteNet.from_config(config_from_dict(tiny_values(Path("unused"))))
    guide = [torch.full_like(parameter, 0.25) for parameter in net.parameters()]
    wrapper = torch.nn.ModuleList([net])  # as TiledNetwork wraps it
    own = [parameter.clone() for parameter in net.parameters()]
    with weak_network(wrapper, guide):
        assert all(torch.equal(parameter, weight) for parameter, weight in zip(net.parameters(), guide))
    assert all(torch.equal(parameter, weight) for parameter, weight in zip(net.parameters(), own))
    with pytest.raises(ValueError, match="do not fit"):
        with weak_network(wrapper, guide[:-1]):
            pass


def test_a_missing_or_foreign_guide_is_named_and_a_twin_without_the_mask_is_widened(tmp_path):
    _save(tmp_path / "model.safetensors", 0, network={"mask_input": True}, sampling=GUIDE)
    with pytest.raises(CheckpointError, match=r"twin.safetensors: the guide that sampling.guide names is neither"):
        load_model(tmp_path / "model.safetensors", "cpu")
    export_weights(tmp_path / "model.safetensors", tmp_path / "unguided.safetensors", overrides=["sampling.guide="])
    assert load_model(tmp_path / "unguided.safetensors", "cpu").guide is None  # the way out the message names
    _save(tmp_path / "twin.safetensors", 1, network={"base_channels": 32})
    with pytest.raises(CheckpointError, match="must be a twin of the model's network"):
        load_model(tmp_path / "model.safetensors", "cpu")
    twin = _save(tmp_path / "twin.safetensors", 1)  # no mask input
    model = load_model(tmp_path / "model.safetensors", "cpu")
    conv_in = dict(zip(dict(model.net.named_parameters()), model.guide))["unet.conv_in.weight"]
    assert conv_in.shape[1] == 7 and not conv_in[:, 3].any()  # the mask's column starts at zero
    torch.testing.assert_close(conv_in[:, [0, 1, 2, 4, 5, 6]], twin.unet.conv_in.weight)


def test_a_twin_trained_without_rebalancing_guides_a_model_trained_with_it(tmp_path):
    _save(tmp_path / "model.safetensors", 0, sampling=GUIDE,
          diffusion={"residual": True, "residual_rebalance": {"colorization": 1.0}})
    _save(tmp_path / "twin.safetensors", 1)  # not a residual model: another diffusion
    with pytest.raises(CheckpointError, match="must be a twin of the model's network"):
        load_model(tmp_path / "model.safetensors", "cpu")
    twin = _save(tmp_path / "twin.safetensors", 1, diffusion={"residual": True})  # the loss's weights aside
    guide = load_model(tmp_path / "model.safetensors", "cpu").guide
    assert all(torch.equal(a, b) for a, b in zip(guide, twin.parameters()))


def test_the_shipped_model_finds_its_bundled_guide_from_anywhere(tmp_path):
    model = load_model(shipped_model_path(), "cpu")
    assert model.config.sampling.guide and model.config.sampling.for_task("guidance", "colorization") > 1
    elsewhere = load_guide(model.config, tmp_path)  # not beside: the bundled file
    assert all(torch.equal(a, b) for a, b in zip(elsewhere, model.guide))
    assert any(not torch.equal(a, b) for a, b in zip(model.guide, model.net.parameters()))
