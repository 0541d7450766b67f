"""The Palette U-Net: diffusers' UNet2DModel built from a preset, wrapped to take (x_t, noise_level, condition).

    net = PaletteNet.from_config(config)
    out = net(noisy_target, noise_level, condition)   # eps, v or x0, as the objective says

The wrapper is the only place that knows how a noise level becomes the network's timestep input.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from .config import Config, NetworkConfig
from .diffusion import noise_level_to_timestep, training_log_snr_range, training_noise_levels


def build_unet(network: NetworkConfig, image_size: int) -> UNet2DModel:
    """ADM-style U-Net (Dhariwal & Nichol 2021): scale-shift norm, resnet up/down, attention per resolution."""
    down_types, up_types = [], []
    resolution = image_size
    for _ in network.channel_mults:
        attend = resolution in network.attention_resolutions
        down_types.append("AttnDownBlock2D" if attend else "ResnetDownsampleBlock2D")
        up_types.insert(0, "AttnUpBlock2D" if attend else "ResnetUpsampleBlock2D")
        resolution //= 2
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=6,  # Palette §2: concat(condition, noisy target)
        out_channels=3,
        down_block_types=tuple(down_types),
        up_block_types=tuple(up_types),
        block_out_channels=tuple(network.base_channels * m for m in network.channel_mults),
        layers_per_block=network.layers_per_block,
        downsample_type="resnet",
        upsample_type="resnet",
        add_attention=network.mid_attention,
        attention_head_dim=network.head_channels,
        norm_num_groups=network.norm_groups,
        resnet_time_scale_shift="scale_shift",
        dropout=network.dropout,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    # The output starts at zero so the first loss is that of predicting zero (ADM's zero_module).
    nn.init.zeros_(unet.conv_out.weight)
    nn.init.zeros_(unet.conv_out.bias)
    if network.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


class PaletteNet(nn.Module):
    """U-Net plus the noise-level preconditioning; knows no task and no sampler."""

    def __init__(self, unet: UNet2DModel, log_snr_range: tuple[float, float]):
        super().__init__()
        self.unet = unet
        self.log_snr_range = log_snr_range

    @classmethod
    def from_config(cls, config: Config) -> PaletteNet:
        levels = training_noise_levels(config.diffusion)
        return cls(build_unet(config.network, config.data.image_size), training_log_snr_range(levels))

    def forward(self, noisy_target: torch.Tensor, noise_level: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        timestep = noise_level_to_timestep(noise_level, self.log_snr_range)
        sample = torch.cat([condition, noisy_target], dim=1)
        return self.unet(sample, timestep, return_dict=False)[0]


def regression_output(net: nn.Module, condition: torch.Tensor) -> torch.Tensor:
    """The regression baseline (Palette §5.1): one forward pass from the condition, at the clean noise level."""
    zeros = torch.zeros_like(condition)
    return net(zeros, torch.ones(condition.shape[0], device=condition.device), condition).float()


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA when the config asks for it; a no-op elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and precision == "bf16")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
