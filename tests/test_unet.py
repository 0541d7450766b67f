"""Our U-Net against diffusers' UNet2DModel, the library it replaces at run time: same names, order and outputs."""

import pytest
import torch
from diffusers import UNet2DModel

from palette.config import config_from_dict
from palette.unet import SelfAttention, UNet, perturbed_attention


def _diffusers_unet(network, image_size: int) -> UNet2DModel:
    """The UNet2DModel that palette built before unet.py; its weights are what the shipped model was trained as."""
    down_types, up_types, resolution = [], [], image_size
    for _ in network.channel_mults:
        attend = resolution in network.attention_resolutions
        down_types.append("AttnDownBlock2D" if attend else "ResnetDownsampleBlock2D")
        up_types.insert(0, "AttnUpBlock2D" if attend else "ResnetUpsampleBlock2D")
        resolution //= 2
    return UNet2DModel(
        sample_size=image_size, in_channels=6, out_channels=3, down_block_types=tuple(down_types),
        up_block_types=tuple(up_types),
        block_out_channels=tuple(network.base_channels * m for m in network.channel_mults),
        layers_per_block=network.layers_per_block, downsample_type="resnet", upsample_type="resnet",
        add_attention=network.mid_attention, attention_head_dim=network.head_channels,
        norm_num_groups=network.norm_groups, resnet_time_scale_shift="scale_shift", dropout=network.dropout,
        flip_sin_to_cos=True, freq_shift=0)


@pytest.mark.parametrize("network, size", [
    ({"preset": "compact"}, 64),  # the shipped model's shape
    ({"preset": "tiny", "layers_per_block": 2, "attention_resolutions": [8, 4], "mid_attention": False}, 16),
    ({"preset": "tiny", "channel_mults": [1, 2, 3], "attention_resolutions": [16]}, 16),
])
def test_unet_matches_diffusers_unet2dmodel(network, size):
    config = config_from_dict({"network": network, "data": {"image_size": size}})
    torch.manual_seed(0)
    reference = _diffusers_unet(config.network, size).double().eval()  # float64: differences are ours, not rounding's
    for parameter in reference.parameters():  # nonzero everywhere, so every layer shows in the output
        torch.nn.init.normal_(parameter, std=0.2)
    ours = UNet(config.network, size).double().eval()
    expected = [(name, tuple(p.shape)) for name, p in reference.named_parameters()]
    assert [(name, tuple(p.shape)) for name, p in ours.named_parameters()] == expected  # optimizer states follow order
    ours.load_state_dict(reference.state_dict())
    sample = torch.randn(2, 6, size + 8, size, dtype=torch.float64)  # not square, larger than trained: tiles are
    timestep = torch.tensor([3.5, 917.25], dtype=torch.float64)
    with torch.no_grad():
        want = reference(sample, timestep, return_dict=False)[0]
        got = ours(sample, timestep)
    assert want.abs().mean() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_gradient_checkpointing_gives_the_same_gradients():
    config = config_from_dict({"network": {"preset": "tiny"}, "data": {"image_size": 16}})
    torch.manual_seed(0)
    unet = UNet(config.network, 16)
    sample, timestep = torch.randn(2, 6, 16, 16), torch.tensor([10.0, 500.0])
    gradients = []
    for enabled in (False, True):
        unet.set_gradient_checkpointing(enabled)
        unet.zero_grad()
        unet(sample, timestep).square().sum().backward()
        gradients.append(unet.conv_in.weight.grad.clone())
    assert gradients[0].abs().max() > 0
    torch.testing.assert_close(gradients[1], gradients[0])


def test_perturbed_attention_makes_each_position_attend_to_itself_and_is_undone_after():
    torch.manual_seed(0)
    attention = SelfAttention(8, head_channels=4, groups=None).double()
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    before = attention(x)
    h = x.flatten(2).transpose(1, 2)
    identity_map = x + attention.to_out[0](attention.to_v(h)).transpose(1, 2).reshape(x.shape)
    with perturbed_attention(attention):
        torch.testing.assert_close(attention(x), identity_map, rtol=1e-12, atol=1e-12)
    assert (before - identity_map).abs().mean() > 1e-3  # the perturbation changes the output
    torch.testing.assert_close(attention(x), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="has none"):
        with perturbed_attention(torch.nn.Linear(2, 2)):
            pass
