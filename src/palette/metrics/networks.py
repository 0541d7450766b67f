"""The pretrained networks behind the feature metrics, loaded only from local files.

    weights = find_weights("inception", "pt_inception-2015-12-05-6726825d.pth")
    inception = fid_inception(load_state_dict_file(weights.path))  # uint8 [N, 3, H, W] -> (pool3, logits)

Offline by design: nothing is ever downloaded. A network loads from the file the caller names, or from
the torch hub cache (`$TORCH_HOME/hub/checkpoints/<standard file name>`) when that file is there; a
missing file raises MissingWeightsError naming the file and the flag, and one that does not load (`load_network`)
a ValueError naming them alike.

LPIPS weights use this file layout (a safetensors or torch state dict, see `lpips_state_dict`):
`features.<i>.weight|bias` are torchvision's VGG16 `features` convolutions and `linear_layers.<k>.weight`
([1, C, 1, 1]) are the LPIPS v0.1 linear layers `lin<k>.model.1.weight`.
"""

from __future__ import annotations

import hashlib
import io
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FID_INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
FID_INCEPTION_SHA256_PREFIX = "6726825d"  # torch hub file names carry the first 8 hex digits of the sha256
PROXY_INCEPTION_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingWeightsError(FileNotFoundError):
    """A metric needs pretrained weights that were not given; the message names the file and the flag."""


@dataclass(frozen=True)
class _WeightsKind:
    flag: str
    description: str
    cache_names: tuple[str, ...]  # torch hub cache file names tried when no path is given


WEIGHTS_KINDS = {
    "inception": _WeightsKind("--inception-weights", "the FID Inception-v3 weights (TF 2015-12-05 graph)",
                              FID_INCEPTION_FILES),
    "resnet50": _WeightsKind("--resnet50-weights", "a torchvision ResNet-50 ImageNet state dict",
                             ("resnet50-0676ba61.pth",)),
    "inception_v1": _WeightsKind("--inception-v1-weights", "a torchvision GoogLeNet ImageNet state dict",
                                 ("googlenet-1378be20.pth",)),
    "lpips": _WeightsKind("--lpips-weights", "LPIPS-VGG16 weights in palette's layout", ()),
}


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_weights(kind: str, given: str | Path | None) -> WeightsFile | None:
    """The weights file of `kind`: the given path (which must exist), else the hub cache file, else None."""
    spec = WEIGHTS_KINDS[kind]
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"{path}: no such file ({spec.flag}: {spec.description})")
        return WeightsFile(path, file_sha256(path))
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in spec.cache_names:
        if (cache / name).is_file():
            return WeightsFile(cache / name, file_sha256(cache / name))
    return None


def weights_hint(kind: str) -> str:
    """What to pass for weights of `kind`: the flag, the file, and where the hub cache would hold it."""
    spec = WEIGHTS_KINDS[kind]
    cached = f", or {spec.cache_names[0]} in {Path(torch.hub.get_dir()) / 'checkpoints'}" if spec.cache_names else ""
    return f"needs {spec.flag} FILE ({spec.description}{cached}; nothing is downloaded)"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, loaded without unpickling code (weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (parameter name -> tensor)")
    return dict(state)


def fid_inception(state_dict: Mapping[str, torch.Tensor], features: Sequence[str] = ("2048", "logits_unbiased")
                  ) -> nn.Module:
    """torch-fidelity's FID Inception-v3 with the given weights; returns the requested features for uint8 input.

    torch-fidelity's extractor (which torchmetrics wraps) takes a weights *path*: None means download, and a
    path is unpickled with weights_only=False. So the file is loaded here (weights_only / safetensors) and an
    in-memory copy is handed over: no download can happen. Its forward resizes to 299 with TF1's bilinear
    resize, no antialias, like the TF graph (torchmetrics' own wrapper antialiases by default).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    buffer.seek(0)
    with torch.random.fork_rng(devices=[]):  # its layers' default init would consume the caller's RNG
        return FeatureExtractorInceptionV3("inception-v3-compat", list(features), feature_extractor_weights_path=buffer)


def random_fid_inception_state(seed: int = PROXY_INCEPTION_SEED) -> dict[str, torch.Tensor]:
    """A fixed-seed random state dict for the FID Inception architecture (the proxy FID network).

    He-normal convolutions and identity batch norms keep activations O(1) through the 94 layers; PyTorch's
    default init shrinks them to ~1e-8 by pool3, which would make every proxy FID ~0.
    """
    from torchvision.models import inception_v3

    with torch.device("meta"):  # only names and shapes: torchvision's Inception3 uses torch-fidelity's names
        template = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in template.items():
        if name.endswith("conv.weight"):
            fan_in = tensor[0].numel()
            value = torch.randn(tensor.shape, generator=generator) * math.sqrt(2.0 / fan_in)
        elif name == "fc.weight":
            value = torch.randn(tensor.shape, generator=generator) / math.sqrt(tensor.shape[1])
        elif name.endswith(("bn.weight", "running_var")):
            value = torch.ones(tensor.shape)
        else:  # batch-norm biases and means, fc bias, num_batches_tracked
            value = torch.zeros(tensor.shape, dtype=tensor.dtype)
        state[name] = value
    return state


def resnet50_classifier(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """torchvision's ResNet-50 architecture with the given ImageNet weights (strict)."""
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.load_state_dict(dict(state_dict))
    return model.eval().requires_grad_(False)


def googlenet_features(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """torchvision's GoogLeNet (Inception-v1) returning its 1024-d pool features; auxiliary heads are dropped."""
    from torchvision.models import googlenet

    # transform_input=True: torchvision's ImageNet GoogLeNet weights expect it (ported from TF)
    model = googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    model.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith(("aux1.", "aux2."))})
    model.fc = nn.Identity()
    return model.eval().requires_grad_(False)


def imagenet_input(images: torch.Tensor, centre_crop: bool) -> torch.Tensor:
    """[0, 1] images -> ImageNet-normalised 224 px: resize 256 + centre crop 224, or the whole image to 224."""
    if centre_crop:
        from torchvision.transforms.v2.functional import center_crop, resize

        images = center_crop(resize(images, [256], antialias=True), [224, 224])
    else:
        images = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def run_by_size(network: Callable[[torch.Tensor], Any], images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Apply `network` to runs of equal-size images; returns its outputs concatenated (one tensor or a tuple)."""
    outputs: list[tuple[torch.Tensor, ...]] = []
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and images[end].shape == images[start].shape:
            end += 1
        with torch.inference_mode():
            result = network(torch.stack(images[start:end]))
        outputs.append(tuple(t.float().cpu() for t in (result if isinstance(result, tuple) else (result,))))
        start = end
    return [torch.cat(parts) for parts in zip(*outputs)]


# ------------------------------------------------------------------------------------------------ LPIPS

_VGG16_CONFIG = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512)


class LPIPS(nn.Module):
    """LPIPS v0.1 with a VGG16 backbone (Zhang et al. 2018): weighted, unit-normalised feature differences."""

    taps = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision's vgg16().features
    channels = (64, 128, 256, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for entry in _VGG16_CONFIG:  # same indices as torchvision's vgg16().features, so its keys load as they are
            if entry == "pool":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, entry, 3, padding=1), nn.ReLU()]
                in_channels = entry
        self.features = nn.Sequential(*layers)
        self.linear_layers = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.channels)
        # LPIPS' ScalingLayer: input in [-1, 1] -> ImageNet statistics
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def _tapped(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        x = (x - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return outputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image [N] between images in [-1, 1]."""
        distance = torch.zeros(x.shape[0], device=x.device)
        for fx, fy, linear in zip(self._tapped(x), self._tapped(y), self.linear_layers):
            distance = distance + linear((fx - fy).square()).mean((1, 2, 3))
        return distance


def lpips_state_dict(vgg16_state: Mapping[str, torch.Tensor], lpips_linear_state: Mapping[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """Our LPIPS layout from torchvision's vgg16 state dict and LPIPS v0.1's `vgg.pth` (lin<k>.model.1.weight)."""
    state = {k: v for k, v in vgg16_state.items() if k.startswith("features.") and int(k.split(".")[1]) <= 29}
    for k in range(len(LPIPS.channels)):
        state[f"linear_layers.{k}.weight"] = lpips_linear_state[f"lin{k}.model.1.weight"]
    return state


def load_lpips(state_dict: Mapping[str, torch.Tensor]) -> LPIPS:
    model = LPIPS()
    model.load_state_dict(dict(state_dict))
    return model.eval().requires_grad_(False)


# The network each weights kind builds, by WEIGHTS_KINDS key.
NETWORK_BUILDERS = {"inception": fid_inception, "resnet50": resnet50_classifier, "inception_v1": googlenet_features,
                    "lpips": load_lpips}


def load_network(kind: str, path: Path) -> nn.Module:
    """The network of a WEIGHTS_KINDS key from its weights file, or a ValueError naming the file and the flag."""
    spec = WEIGHTS_KINDS[kind]
    try:
        state_dict = load_state_dict_file(path)
    except Exception as error:  # torch.load fails on a broken file as KeyError, UnpicklingError, EOFError ...
        raise ValueError(f"{path}: not a weights file safetensors or torch can read ({spec.flag}: "
                         f"{spec.description})") from error
    try:
        return NETWORK_BUILDERS[kind](state_dict)
    except RuntimeError as error:  # load_state_dict: "Error(s) in loading ...:" then one line per kind of misfit
        misfit = [line for line in str(error).splitlines()[1:] if line.strip()] or [str(error)]
        raise ValueError(f"{path}: does not fit the network ({spec.flag}: {spec.description}): "
                         f"{textwrap.shorten(misfit[0], 120)}") from error
