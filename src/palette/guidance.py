"""The weak model that guidance moves away from: the network with perturbed attention, or a weaker twin.

Guidance (SamplingConfig.guidance, w != 1) takes the x0 estimate weak + w (full - weak). By default the weak
output comes from the same weights with every self-attention map set to the identity (perturbed-attention
guidance, Ahn et al. 2024). A model whose `sampling.guide` names a weights file guides away from that file's
network instead: a less-trained twin of the same network, which errs where the model errs, only more
(autoguidance, Karras et al. 2024). The twin's weights take the network's place for its call, so a network
wrapped for tiling guides the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import torch

from .checkpoint import CheckpointError, architecture, load_state, load_weights
from .config import Config
from .network import PaletteNet, with_mask_input
from .unet import perturbed_attention


def load_guide(config: Config, near: Path | None = None,
               device: torch.device | None = None) -> list[torch.Tensor] | None:
    """The weights of the twin that `config.sampling.guide` names, in the order of the network's parameters;
    None where it names none. The file is looked up in `near` (the model's folder), then among the bundled
    weights. A twin without the mask input is widened as `train.init_from` widens it."""
    name = config.sampling.guide
    if not name:
        return None
    folders = ([near] if near is not None else []) + [Path(str(resources.files("palette") / "assets"))]
    path = next((folder / name for folder in folders if (folder / name).is_file()), None)
    if path is None:
        raise CheckpointError(f"{name}: the guide that sampling.guide names is neither in "
                              f"{' nor in '.join(map(str, folders))}; `palette export --set sampling.guide=` "
                              "turns it off")
    state, twin_config = load_weights(path)
    if architecture(twin_config) != architecture(config):
        raise CheckpointError(f"{path}: a guide (sampling.guide) must be a twin of the model's network and "
                              "diffusion settings, and this one is not")
    twin = PaletteNet.from_config(config)
    load_state(twin, with_mask_input(state, config.network), path)
    return [parameter.detach().to(device) for parameter in twin.parameters()]


@contextmanager
def weak_network(net: torch.nn.Module, guide: list[torch.Tensor] | None) -> Iterator[None]:
    """Within the block `net` is guidance's weak model: its twin's weights `guide`, or perturbed attention."""
    if guide is None:
        with perturbed_attention(net):
            yield
        return
    parameters = list(net.parameters())
    if [p.shape for p in parameters] != [w.shape for w in guide]:
        raise ValueError("the guide's weights do not fit this network")
    own = [parameter.data for parameter in parameters]
    for parameter, weight in zip(parameters, guide):
        parameter.data = weight
    try:
        yield
    finally:
        for parameter, weight in zip(parameters, own):
            parameter.data = weight
