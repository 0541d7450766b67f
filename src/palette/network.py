"""The Palette network: the U-Net of unet.py built from a preset, wrapped to take (x_t, noise_level, condition).

    net = PaletteNet.from_config(config)
    out = net(noisy_target, noise_level, network_input(config, condition, mask))   # eps, v or x0

The wrapper is the only place that knows how a noise level becomes the network's timestep input.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import Config, NetworkConfig
from .diffusion import noise_level_to_timestep, training_log_snr_range, training_noise_levels
from .unet import UNet

IMAGE_CHANNELS = 3


def build_unet(network: NetworkConfig, image_size: int) -> UNet:
    """The U-Net of `network`, its output layer zeroed: the first loss is that of predicting zero (ADM's zero_module)."""
    unet = UNet(network, image_size, in_channels=IMAGE_CHANNELS * 2 + network.mask_input)
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)
    unet.set_gradient_checkpointing(network.gradient_checkpointing)
    return unet


class PaletteNet(nn.Module):
    """U-Net plus the noise-level preconditioning; knows no task and no sampler."""

    def __init__(self, unet: UNet, log_snr_range: tuple[float, float]):
        super().__init__()
        self.unet = unet
        self.log_snr_range = log_snr_range

    @classmethod
    def from_config(cls, config: Config) -> PaletteNet:
        levels = training_noise_levels(config.diffusion)
        return cls(build_unet(config.network, config.data.image_size), training_log_snr_range(levels))

    def forward(self, noisy_target: torch.Tensor, noise_level: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """`condition` is network_input's: the task's condition, and the mask if the network takes it."""
        timestep = noise_level_to_timestep(noise_level, self.log_snr_range)
        sample = torch.cat([condition, noisy_target], dim=1)
        return self.unet(sample, timestep)


def network_input(config: Config, condition: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the network sees beside x_t: the condition [N, 3, H, W], then the mask if `network.mask_input`."""
    return torch.cat([condition, mask.to(condition)], dim=1) if config.network.mask_input else condition


def with_mask_input(state: dict[str, torch.Tensor], network: NetworkConfig) -> dict[str, torch.Tensor]:
    """Weights for `network`: those of a network without the mask input, for one with it, get zero weights for
    the mask, so the network computes what it did until training moves them; any others come back as they are."""
    weight = state["unet.conv_in.weight"]
    if not network.mask_input or weight.shape[1] != IMAGE_CHANNELS * 2:
        return state
    mask_column = weight.new_zeros(weight.shape[0], 1, *weight.shape[2:])
    widened = torch.cat([weight[:, :IMAGE_CHANNELS], mask_column, weight[:, IMAGE_CHANNELS:]], dim=1)
    return {**state, "unet.conv_in.weight": widened}


def regression_output(net: nn.Module, condition: torch.Tensor) -> torch.Tensor:
    """The regression baseline (Palette §5.1): one forward pass from the condition, at the clean noise level."""
    zeros = condition.new_zeros(condition.shape[0], IMAGE_CHANNELS, *condition.shape[2:])
    return net(zeros, torch.ones(condition.shape[0], device=condition.device), condition).float()


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA when the config asks for it; a no-op elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and precision == "bf16")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
