import torch

from palette.config import config_from_dict
from palette.network import PaletteNet, build_unet, count_parameters, network_input, with_mask_input


def _count_on_meta(preset: str, size: int) -> int:
    config = config_from_dict({"network": {"preset": preset}, "data": {"image_size": size}})
    with torch.device("meta"):
        return count_parameters(build_unet(config.network, size))


def test_paper_and_base_parameter_counts():
    # Palette App. A: ADM-256 at 256 channels is about 552M parameters; `base` is the 62.6M net.
    assert _count_on_meta("paper", 256) == 552_812_035
    assert _count_on_meta("base", 256) == 62_640_323


def test_attention_is_placed_by_resolution():
    config = config_from_dict({"network": {"preset": "paper"}, "data": {"image_size": 256}})
    with torch.device("meta"):
        unet = build_unet(config.network, 256)
    attended = [hasattr(block, "attentions") for block in unet.down_blocks]
    assert attended == [False, False, False, True, True, True]  # 256, 128, 64 | 32, 16, 8


def test_wrapper_shapes_zero_init_and_noise_level_sensitivity():
    config = config_from_dict({"network": {"preset": "tiny"}, "data": {"image_size": 16}})
    torch.manual_seed(0)
    net = PaletteNet.from_config(config)
    x, condition = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([0.9, 0.1]), condition)
    assert out.shape == (2, 3, 16, 16)
    assert torch.count_nonzero(out) == 0  # zero-initialised output convolution
    torch.nn.init.normal_(net.unet.conv_out.weight, std=0.1)
    a = net(x, torch.tensor([0.9, 0.9]), condition)
    b = net(x, torch.tensor([0.8, 0.8]), condition)
    assert (a - b).abs().max() > 1e-4  # nearby noise levels give different outputs
    c = net(x, torch.tensor([0.9, 0.9]), condition + 0.5)
    assert (a - c).abs().max() > 1e-4  # the condition reaches the output


def test_the_mask_input_widens_a_trained_network_without_changing_what_it_computes():
    plain = config_from_dict({"network": {"preset": "tiny"}, "data": {"image_size": 16}})
    masked = config_from_dict({"network": {"preset": "tiny", "mask_input": True}, "data": {"image_size": 16}})
    torch.manual_seed(0)
    net = PaletteNet.from_config(plain)
    torch.nn.init.normal_(net.unet.conv_out.weight, std=0.1)  # a network that outputs something
    widened = PaletteNet.from_config(masked)
    narrow = net.state_dict()
    assert with_mask_input(narrow, plain.network) is narrow  # a network without the mask input: as it is
    widened.load_state_dict(with_mask_input(narrow, masked.network))
    assert widened.unet.conv_in.weight.shape[1] == 7 and torch.count_nonzero(widened.unet.conv_in.weight[:, 3]) == 0
    x, condition = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    level = torch.tensor([0.9, 0.1])
    before = net(x, level, network_input(plain, condition, mask))
    assert torch.equal(widened(x, level, network_input(masked, condition, mask)), before)
    wide = widened.state_dict()
    assert with_mask_input(wide, masked.network) is wide  # already wide: as it is
    with torch.no_grad():
        widened.unet.conv_in.weight[:, 3] = 0.1  # once trained, the mask reaches the output
    assert (widened(x, level, network_input(masked, condition, mask))
            - widened(x, level, network_input(masked, condition, 1 - mask))).abs().max() > 1e-4
