"""The ADM-style U-Net (Dhariwal & Nichol 2021): scale-shift norm, resnet up/down sampling, attention per resolution.

    unet = UNet(network_config, image_size=64)
    out = unet(concat(condition, noisy_target), timestep)      # [N, 3, H, W]

The layers, parameter names and registration order are those of diffusers' `UNet2DModel` built with
`ResnetDownsampleBlock2D`/`AttnDownBlock2D`, `resnet_time_scale_shift="scale_shift"` and resnet resampling, so its
weights and optimizer states load here unchanged; tests/test_unet.py checks both give the same output. We write it
ourselves because importing diffusers costs about 2.8 s (torch._dynamo and scipy.stats) on every `palette` call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import NetworkConfig

EPS = 1e-5
Resample = Literal["down", "up"] | None


def timestep_embedding(timesteps: torch.Tensor, channels: int) -> torch.Tensor:
    """Sinusoidal embedding [N, channels], cosines first (Vaswani et al. 2017; DDPM's timestep embedding)."""
    half = channels // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    angles = timesteps[:, None].float() * frequencies[None]
    return F.pad(torch.cat([angles.cos(), angles.sin()], dim=-1), (0, channels % 2))


class TimeEmbedding(nn.Module):
    def __init__(self, channels: int, width: int):
        super().__init__()
        self.linear_1 = nn.Linear(channels, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(embedding)))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second norm scaled and shifted by the time embedding (ADM's AdaGN)."""

    def __init__(self, channels_in: int, channels_out: int, time_width: int, groups: int, dropout: float,
                 resample: Resample = None):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels_in, eps=EPS)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_width, 2 * channels_out)
        self.norm2 = nn.GroupNorm(groups, channels_out, eps=EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else None
        self.resample = resample
        self.checkpointed = False  # recompute activations in the backward pass to save memory

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        if self.checkpointed and torch.is_grad_enabled():
            return checkpoint(self._forward, x, time, use_reentrant=False)
        return self._forward(x, time)

    def _forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        if self.resample == "down":
            x, h = F.avg_pool2d(x, 2), F.avg_pool2d(h, 2)
        elif self.resample == "up":
            x, h = F.interpolate(x, scale_factor=2.0), F.interpolate(h, scale_factor=2.0)  # nearest
        h = self.conv1(h)
        scale, shift = self.time_emb_proj(F.silu(time))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all positions, with a residual connection; optional GroupNorm in front."""

    def __init__(self, channels: int, head_channels: int, groups: int | None):
        super().__init__()
        self.heads, self.head_channels = channels // head_channels, head_channels
        inner = self.heads * head_channels
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS) if groups else None
        self.to_q = nn.Linear(channels, inner)
        self.to_k = nn.Linear(channels, inner)
        self.to_v = nn.Linear(channels, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels)])
        self.perturbed = False  # see perturbed_attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = x.flatten(2)
        if self.group_norm is not None:
            h = self.group_norm(h)
        h = h.transpose(1, 2)
        q, k, v = (project(h).view(batch, -1, self.heads, self.head_channels).transpose(1, 2)
                   for project in (self.to_q, self.to_k, self.to_v))
        out = v if self.perturbed else F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).flatten(2)
        return x + self.to_out[0](out).transpose(1, 2).reshape(batch, channels, height, width)


@contextmanager
def perturbed_attention(net: nn.Module) -> Iterator[None]:
    """Within the block every self-attention of `net` attends each position to itself only (its map is the identity).

    That is the weak model of perturbed-attention guidance (Ahn et al. 2024): the same weights without
    their global structure, so guiding away from it needs no second network.
    """
    layers = [module for module in net.modules() if isinstance(module, SelfAttention)]
    if not layers:
        raise ValueError("guidance perturbs self-attention, and this network has none")
    for layer in layers:
        layer.perturbed = True
    try:
        yield
    finally:
        for layer in layers:
            layer.perturbed = False


class DownBlock(nn.Module):
    """`layers` ResBlocks (each followed by attention when `head_channels` is set), then a downsampling ResBlock."""

    def __init__(self, channels_in: int, channels_out: int, network: NetworkConfig, time_width: int, attend: bool,
                 downsample: bool):
        super().__init__()
        layers, groups = network.layers_per_block, network.norm_groups
        if attend:
            self.attentions = nn.ModuleList(SelfAttention(channels_out, network.head_channels, groups)
                                            for _ in range(layers))
        self.resnets = nn.ModuleList(ResBlock(channels_in if i == 0 else channels_out, channels_out, time_width,
                                              groups, network.dropout) for i in range(layers))
        if downsample:
            self.downsamplers = nn.ModuleList([ResBlock(channels_out, channels_out, time_width, groups, network.dropout,
                                                        resample="down")])

    def forward(self, x: torch.Tensor, time: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for index, resnet in enumerate(self.resnets):
            x = resnet(x, time)
            if hasattr(self, "attentions"):
                x = self.attentions[index](x)
            skips.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x, time)
            skips.append(x)
        return x


class UpBlock(nn.Module):
    """`layers + 1` ResBlocks, each fed the matching skip connection, then an upsampling ResBlock."""

    def __init__(self, channels_in: int, channels_out: int, channels_below: int, network: NetworkConfig,
                 time_width: int, attend: bool, upsample: bool):
        super().__init__()
        layers, groups = network.layers_per_block + 1, network.norm_groups
        if attend:
            self.attentions = nn.ModuleList(SelfAttention(channels_out, network.head_channels, groups)
                                            for _ in range(layers))
        self.resnets = nn.ModuleList(
            ResBlock((channels_below if i == 0 else channels_out) + (channels_in if i == layers - 1 else channels_out),
                     channels_out, time_width, groups, network.dropout) for i in range(layers))
        if upsample:
            self.upsamplers = nn.ModuleList([ResBlock(channels_out, channels_out, time_width, groups, network.dropout,
                                                      resample="up")])

    def forward(self, x: torch.Tensor, time: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for index, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), time)
            if hasattr(self, "attentions"):
                x = self.attentions[index](x)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x, time)
        return x


class MidBlock(nn.Module):
    """ResBlock, attention (without a norm of its own, as in UNet2DModel with scale-shift norm), ResBlock."""

    def __init__(self, channels: int, network: NetworkConfig, time_width: int):
        super().__init__()
        if network.mid_attention:
            self.attentions = nn.ModuleList([SelfAttention(channels, network.head_channels, None)])
        self.resnets = nn.ModuleList(ResBlock(channels, channels, time_width, network.norm_groups, network.dropout)
                                     for _ in range(2))

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, time)
        if hasattr(self, "attentions"):
            x = self.attentions[0](x)
        return self.resnets[1](x, time)


class UNet(nn.Module):
    def __init__(self, network: NetworkConfig, image_size: int, in_channels: int = 6, out_channels: int = 3):
        super().__init__()
        widths = [network.base_channels * multiple for multiple in network.channel_mults]
        time_width, last = 4 * widths[0], len(widths) - 1
        resolutions = [image_size // 2 ** level for level in range(len(widths))]
        attends = [resolution in network.attention_resolutions for resolution in resolutions]
        self.time_channels = widths[0]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimeEmbedding(widths[0], time_width)
        self.down_blocks = nn.ModuleList(
            DownBlock(widths[max(level - 1, 0)], widths[level], network, time_width, attends[level], level < last)
            for level in range(len(widths)))
        # Up blocks before the middle: UNet2DModel registers them in this order, and optimizer states follow it.
        self.up_blocks = nn.ModuleList(
            UpBlock(widths[max(level - 1, 0)], widths[level], widths[min(level + 1, last)], network, time_width,
                    attends[level], level > 0)
            for level in reversed(range(len(widths))))
        self.mid_block = MidBlock(widths[-1], network, time_width)
        self.conv_norm_out = nn.GroupNorm(network.norm_groups, widths[0], eps=EPS)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        for module in self.modules():
            if isinstance(module, ResBlock):
                module.checkpointed = enabled

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        embedding = timestep_embedding(timestep.expand(sample.shape[0]), self.time_channels)
        time = self.time_embedding(embedding.to(self.conv_in.weight.dtype))
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x = block(x, time, skips)
        x = self.mid_block(x, time)
        for block in self.up_blocks:
            x = block(x, time, skips)
        return self.conv_out(F.silu(self.conv_norm_out(x)))
