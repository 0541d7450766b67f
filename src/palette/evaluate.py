"""Metrics over folders of outputs and targets: the numbers of Palette's tables (Saharia et al. 2022, §5).

    results = evaluate_folders("out/samples", "eval/targets", inception_weights="pt_inception-2015-12-05-6726825d.pth")
    print(format_table(results))
    # CLI: palette evaluate --pred out/samples --target eval/targets --inception-weights FILE --out results.json

Predictions are matched to targets by their path relative to the folder, without suffix: `<stem>.png` is
the single sample for target `<stem>.*`, and `<stem>_0.png, <stem>_1.png, ...` are K samples of it.
Every single-sample metric uses the lowest-numbered sample; only sample diversity looks at the others.

Offline by design: nothing is ever downloaded. Pretrained networks load from the file the caller names,
or from the torch hub cache (`$TORCH_HOME/hub/checkpoints/<standard file name>`) when that file is there.
A metric asked for by name whose weights are missing raises MissingWeightsError naming the flag; one
only implied by the default set lands in `skipped` with the same hint.

LPIPS weights use this file layout (a safetensors or torch state dict, see `lpips_state_dict`):
`features.<i>.weight|bias` are torchvision's VGG16 `features` convolutions and `linear_layers.<k>.weight`
([1, C, 1, 1]) are the LPIPS v0.1 linear layers `lin<k>.model.1.weight`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .imageio import ImageError, list_images, load_image
from .masks import load_mask

# Every metric, in the order tables list them.
METRIC_NAMES = (
    "l1", "psnr", "ssim", "known_region_l1", "swd", "fid_proxy_random_inception",
    "fid", "fid_reference", "is", "kid", "pd", "ca", "diversity_ssim", "diversity_lpips",
)
METRIC_ALIASES = {"diversity": ("diversity_ssim", "diversity_lpips"), "lpips": ("diversity_lpips",)}
PER_IMAGE_METRICS = ("l1", "psnr", "ssim", "known_region_l1", "pd", "ca", "diversity_ssim", "diversity_lpips")

FID_INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
FID_INCEPTION_SHA256_PREFIX = "6726825d"  # torch hub file names carry the first 8 hex digits of the sha256
PROXY_INCEPTION_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PSNR_CAP_DB = 100.0  # identical images would give +inf, which no mean or CI survives
SWD_PATCH_SIZE = 7  # Karras et al. 2018, App. D: 7x7 neighbourhoods, 128 per image and level
SWD_PATCHES_PER_IMAGE = 128
SWD_DIRECTIONS = 128
SWD_REPEATS = 4
SWD_MIN_RESOLUTION = 16  # PGGAN's coarsest pyramid level
SWD_SEED = 0
KID_SUBSETS = 100  # Binkowski et al. 2018: 100 subsets of (at most) 1000
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10  # Salimans et al. 2016


class MissingWeightsError(FileNotFoundError):
    """A metric needs pretrained weights that were not given; the message names the file and the flag."""


class FolderMismatchError(ValueError):
    """Predictions and targets do not pair up; the message names the unmatched files."""


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


@dataclass(frozen=True)
class ImagePair:
    key: str  # path relative to the target folder, without suffix
    target: Path
    samples: tuple[Path, ...]  # predictions, by sample index


# ----------------------------------------------------------------------------------------------- files


def _keyed_images(folder: str | Path) -> dict[str, Path]:
    """Images under `folder` by relative path without suffix; two files with one key are an error."""
    folder = Path(folder)
    keyed: dict[str, Path] = {}
    for path in list_images(folder):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in keyed:
            raise ImageError(f"{keyed[key]} and {path} have the same name; keep one")
        keyed[key] = path
    return keyed


def _name_list(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def match_predictions(pred_dir: str | Path, target_dir: str | Path) -> list[ImagePair]:
    """Pair every target with its predictions (`<stem>.*` or `<stem>_<k>.*`); unmatched files are an error."""
    targets = _keyed_images(target_dir)
    if not targets:
        raise ImageError(f"{target_dir}: no images")
    samples: dict[str, dict[int, Path]] = defaultdict(dict)
    orphans = []
    for key, path in _keyed_images(pred_dir).items():
        numbered = re.fullmatch(r"(.+)_(\d+)", key)
        if key in targets:
            owner, index = key, 0
        elif numbered and numbered[1] in targets:
            owner, index = numbered[1], int(numbered[2])
        else:
            orphans.append(path.name if "/" not in key else key)
            continue
        if index in samples[owner]:
            raise FolderMismatchError(f"{samples[owner][index]} and {path} are both sample {index} of {owner}")
        samples[owner][index] = path
    missing = sorted(key for key in targets if key not in samples)
    problems = []
    if orphans:
        problems.append(f"{len(orphans)} prediction(s) in {pred_dir} match no target: {_name_list(orphans)}")
    if missing:
        problems.append(f"{len(missing)} target(s) in {target_dir} have no prediction: {_name_list(missing)}")
    if problems:
        raise FolderMismatchError("; ".join(problems))
    return [ImagePair(key, targets[key], tuple(path for _, path in sorted(samples[key].items())))
            for key in sorted(targets)]


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except OSError as error:
        raise ImageError(f"{path}: not a readable image ({error})") from error


def load_labels(path: str | Path) -> dict[str, int]:
    """ImageNet class ids by image stem, from JSON ({stem: id}) or text lines `stem id` (space, tab or comma)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file (--labels)")
    text = path.read_text()
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        entries = list(json.loads(text).items())
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.replace(",", " ").split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected 'stem class_id', got {line!r}")
            entries.append((fields[0], fields[1]))
    labels = {}
    for stem, value in entries:
        try:
            labels[str(stem)] = int(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: class id of {stem!r} is not an integer: {value!r}") from error
    return labels


# --------------------------------------------------------------------------------------------- weights


def _sha256(path: Path) -> str:
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
        return WeightsFile(path, _sha256(path))
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    for name in spec.cache_names:
        if (cache / name).is_file():
            return WeightsFile(cache / name, _sha256(cache / name))
    return None


def _weights_hint(kind: str) -> str:
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


# --------------------------------------------------------------------------------------- pixel metrics


def l1_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image [N] of images in [0, 1]."""
    return (pred - target).abs().flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image [N] on [0, 1] with MAX = 1 (the same number as MAX = 255 on [0, 255])."""
    mse = (pred - target).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image [N] of images in [0, 1], averaged over channels and window positions.

    Wang et al. 2004, Eq. 13 with their settings: 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03,
    L = 1, and 'valid' filtering (no padding) as in the authors' ssim.m.
    """
    channels = pred.shape[1]
    offsets = torch.arange(11, dtype=pred.dtype, device=pred.device) - 5
    window = torch.exp(-offsets.square() / (2 * 1.5**2))
    window = window / window.sum()

    def local_mean(x: torch.Tensor) -> torch.Tensor:  # separable Gaussian, one filter per channel
        x = F.conv2d(x, window.view(1, 1, 1, 11).expand(channels, 1, 1, 11), groups=channels)
        return F.conv2d(x, window.view(1, 1, 11, 1).expand(channels, 1, 11, 1), groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mean_p, mean_t = local_mean(pred), local_mean(target)
    var_p = local_mean(pred * pred) - mean_p.square()
    var_t = local_mean(target * target) - mean_t.square()
    covariance = local_mean(pred * target) - mean_p * mean_t
    index_map = ((2 * mean_p * mean_t + c1) * (2 * covariance + c2)) / (
        (mean_p.square() + mean_t.square() + c1) * (var_p + var_t + c2))
    return index_map.flatten(1).mean(1)


def _similarity_to_first(samples: torch.Tensor, similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                         ) -> float:
    """Palette §5.4: mean similarity between the first sample and each other sample of one input."""
    others = samples[1:]
    return float(similarity(samples[:1].expand_as(others), others).mean())


# ------------------------------------------------------------------------------------------------ SWD


def _pyramid_filter(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """PGGAN's pyramid blur: separable binomial [1, 4, 6, 4, 1] / 16, mirrored borders."""
    channels = x.shape[1]
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16 * math.sqrt(gain)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, 5).expand(channels, 1, 1, 5), groups=channels)
    return F.conv2d(x, taps.view(1, 1, 5, 1).expand(channels, 1, 5, 1), groups=channels)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Finest band first; the last entry is the coarsest Gaussian level (Burt & Adelson, as in PGGAN)."""
    pyramid = []
    current = images
    for _ in range(levels - 1):
        smaller = _pyramid_filter(current)[:, :, ::2, ::2]
        upsampled = torch.zeros_like(current)
        upsampled[:, :, ::2, ::2] = smaller
        pyramid.append(current - _pyramid_filter(upsampled, gain=4.0))  # zeros hold 3 of 4 pixels
        current = smaller
    pyramid.append(current)
    return pyramid


def swd_levels(height: int, width: int) -> int:
    """Halve while the next level keeps both sides >= 16 px (PGGAN: 1024 -> 16 is 7 levels; 64 -> 16 is 3)."""
    levels, size = 1, min(height, width)
    while (size + 1) // 2 >= SWD_MIN_RESOLUTION:
        size = (size + 1) // 2
        levels += 1
    return levels


class SlicedWassersteinCollector:
    """Streams patch descriptors of two image sets; `compute` gives SWD x 1e3 per level and their mean.

    Karras et al. 2018 (PGGAN), App. D: 128 random 7x7 patches per image and Laplacian level, each set
    normalised per level and channel by its own mean and std, then the sliced Wasserstein distance over
    128 random unit directions (sorted 1-D projections), averaged over 4 repeats. The two sets draw patches
    at the same positions (one seed), so identical sets give exactly 0.
    """

    def __init__(self, height: int, width: int, seed: int = SWD_SEED) -> None:
        self.levels = swd_levels(height, width)
        self.resolutions = [height]
        while len(self.resolutions) < self.levels:
            self.resolutions.append((self.resolutions[-1] + 1) // 2)
        self.seed = seed
        self.generators = {name: torch.Generator().manual_seed(seed) for name in ("pred", "target")}
        self.descriptors = {name: [[] for _ in range(self.levels)] for name in ("pred", "target")}

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions and targets [N, C, H, W] (any common scale; each set is normalised)."""
        for name, images in (("pred", pred), ("target", target)):
            for store, level in zip(self.descriptors[name], laplacian_pyramid(images.float(), self.levels)):
                store.append(self._patches(level, self.generators[name]))

    @staticmethod
    def _patches(level: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, channels, height, width = level.shape
        size = SWD_PATCH_SIZE
        if height < size or width < size:
            raise ValueError(f"SWD needs images of at least {size}x{size} px, got {height}x{width}")
        rows = torch.randint(0, height - size + 1, (count, SWD_PATCHES_PER_IMAGE), generator=generator)
        cols = torch.randint(0, width - size + 1, (count, SWD_PATCHES_PER_IMAGE), generator=generator)
        windows = level.cpu().unfold(2, size, 1).unfold(3, size, 1)  # [N, C, H-6, W-6, 7, 7]
        picked = windows[torch.arange(count)[:, None], :, rows, cols]  # [N, 128, C, 7, 7]
        return picked.reshape(count * SWD_PATCHES_PER_IMAGE, channels, size * size)

    @staticmethod
    def _normalised(descriptors: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.cat(descriptors)
        mean = stacked.mean((0, 2), keepdim=True)
        std = stacked.std((0, 2), keepdim=True, correction=0).clamp_min(1e-8)
        return ((stacked - mean) / std).flatten(1)

    def compute(self) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(self.seed)
        per_level = {}
        for resolution, pred, target in zip(self.resolutions, self.descriptors["pred"], self.descriptors["target"]):
            pred_set, target_set = self._normalised(pred), self._normalised(target)
            distances = []
            for _ in range(SWD_REPEATS):
                directions = torch.randn(pred_set.shape[1], SWD_DIRECTIONS, generator=generator)
                directions = directions / directions.norm(dim=0, keepdim=True)
                projected_pred = (pred_set @ directions).sort(dim=0).values
                projected_target = (target_set @ directions).sort(dim=0).values
                distances.append((projected_pred - projected_target).abs().mean())
            per_level[str(resolution)] = float(torch.stack(distances).mean()) * 1e3
        return {"value": float(np.mean(list(per_level.values()))), "levels": per_level}


def sliced_wasserstein_distance(pred: torch.Tensor, target: torch.Tensor, seed: int = SWD_SEED) -> dict[str, Any]:
    """SWD x 1e3 (PGGAN App. D) between two equal-size sets [N, C, H, W]; see SlicedWassersteinCollector."""
    collector = SlicedWassersteinCollector(pred.shape[-2], pred.shape[-1], seed)
    collector.add(pred, target)
    return collector.compute()


# ----------------------------------------------------------------------------- set-level feature metrics


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance, float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     features2: torch.Tensor | np.ndarray | None = None) -> float:
    """Fréchet distance between Gaussians, float64 (Heusel et al. 2017): |mu1-mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2).

    Tr (S1 S2)^1/2 comes from scipy.linalg.sqrtm. When `features2`, the N samples behind (mu2, sigma2), are
    fewer than the dimension, the same trace is computed exactly in N dimensions: with S2 = C^T C / (N-1) for
    centred C, S1 S2 and C S1 C^T / (N-1) share their non-zero eigenvalues (AB and BA), and the latter is
    symmetric PSD. A 2048-d sqrtm took 87 s on two busy CPU cores; the small problem takes milliseconds.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if features2 is not None and len(features2) <= len(mu2):
        centred = np.asarray(features2, np.float64) - mu2
        small = centred @ sigma1 @ centred.T / (len(centred) - 1)
        trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    else:
        product_sqrt = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(product_sqrt).all():  # singular product: the usual small ridge (pytorch-fid)
            ridge = np.eye(len(mu1)) * 1e-6
            product_sqrt = scipy.linalg.sqrtm((sigma1 + ridge) @ (sigma2 + ridge))
        trace_sqrt = np.trace(product_sqrt).real
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets [N, D] (Heusel et al. 2017); exact for any N, see frechet_distance."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake), features2=fake)


class _GivenFeatures(nn.Module):
    """Identity 'extractor': torchmetrics' IS and KID take features we extracted once, from local weights."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS, seed: int = 0) -> tuple[float, float | None]:
    """IS (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), mean and std over splits, via torchmetrics.

    torchmetrics' InceptionScore with an int feature would build a network that downloads its weights;
    given a module it never does. Its split shuffle uses the global RNG, which we fork and seed.
    """
    from torchmetrics.image.inception import InceptionScore

    splits = max(1, min(splits, len(logits)))
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")  # std of a single split
        metric = InceptionScore(feature=_GivenFeatures(logits.shape[1]), splits=splits)
        metric.update(logits.double())
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else None


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS,
                              subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float, int]:
    """KID (Binkowski et al. 2018): unbiased MMD^2, cubic polynomial kernel, mean and std over random subsets.

    Via torchmetrics' KernelInceptionDistance on given features; the subset size shrinks to the smaller set.
    Returns (mean, std, subset size used).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} and {len(fake)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_GivenFeatures(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def load_reference_stats(path: str | Path) -> dict[str, np.ndarray]:
    """An .npz with `mu` [D] and `sigma` [D, D] (optionally `weights_sha256`, written by save_stats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such reference statistics file (--reference-stats)")
    with np.load(path) as data:
        stats = {key: data[key] for key in data.files}
    if "mu" not in stats or "sigma" not in stats:
        raise ValueError(f"{path}: reference statistics need arrays 'mu' and 'sigma', found {sorted(stats)}")
    dim = stats["mu"].shape[0]
    if stats["mu"].shape != (dim,) or stats["sigma"].shape != (dim, dim):
        raise ValueError(f"{path}: mu {stats['mu'].shape} and sigma {stats['sigma'].shape} do not agree")
    return stats


# ------------------------------------------------------------------------------------------ evaluation


def _to_unit(image: torch.Tensor) -> torch.Tensor:
    return (image + 1) / 2


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    return ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _imagenet_input(images: torch.Tensor, centre_crop: bool) -> torch.Tensor:
    """[0, 1] images -> ImageNet-normalised 224 px: resize 256 + centre crop 224, or the whole image to 224."""
    if centre_crop:
        from torchvision.transforms.v2.functional import center_crop, resize

        images = center_crop(resize(images, [256], antialias=True), [224, 224])
    else:
        images = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


def _run_by_size(network: Callable[[torch.Tensor], Any], images: list[torch.Tensor]) -> list[torch.Tensor]:
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


def _mean_ci(values: torch.Tensor) -> dict[str, Any]:
    """Mean and 95% confidence half-width 1.96 std / sqrt(n) (normal approximation)."""
    values = values.double()
    count = values.numel()
    half_width = 1.96 * float(values.std()) / math.sqrt(count) if count > 1 else None
    return {"mean": float(values.mean()), "ci95": half_width, "n": count}


@dataclass(frozen=True)
class _Setup:
    """What the data and the caller provide, which decides the metrics that can run."""

    num_images: int
    samples_per_input: int
    sizes: frozenset[tuple[int, int]]
    weights: dict[str, WeightsFile | None]
    labels: str | Path | None
    reference_stats: str | Path | None
    known_region: tuple[Path, Path] | None  # (input dir, masks dir)


def _missing_requirements(metric: str, setup: _Setup) -> tuple[bool, list[str]]:
    """(whether weights are among them, what `metric` lacks)."""
    lacks: list[tuple[bool, str]] = []

    def need_weights(kind: str) -> None:
        if setup.weights[kind] is None:
            lacks.append((True, _weights_hint(kind)))

    def need(condition: bool, message: str) -> None:
        if not condition:
            lacks.append((False, message))

    if metric in ("fid", "fid_reference", "is", "kid"):
        need_weights("inception")
    if metric in ("fid", "fid_reference", "kid", "fid_proxy_random_inception"):
        need(setup.num_images >= 2, f"needs >= 2 images for a covariance; found {setup.num_images}")
    if metric == "fid_reference":
        need(setup.reference_stats is not None, "needs reference statistics: pass --reference-stats FILE.npz")
    if metric == "pd" and setup.weights["inception_v1"] is None:
        need_weights("inception")
    if metric == "ca":
        need_weights("resnet50")
        need(setup.labels is not None, "needs ImageNet labels: pass --labels FILE (stem -> class id)")
    if metric.startswith("diversity_"):
        need(setup.samples_per_input >= 2, "needs >= 2 samples per input (<stem>_0.png, <stem>_1.png, ...); "
                                           f"found {setup.samples_per_input}")
    if metric == "diversity_lpips":
        need_weights("lpips")
    if metric == "swd":
        need(len(setup.sizes) == 1, f"needs every image at one size; found {sorted(setup.sizes)} (HxW)")
    if metric == "known_region_l1":
        need(setup.known_region is not None, "needs --input DIR and masks (DIR/../masks or masks_dir)")
    return any(is_weights for is_weights, _ in lacks), [message for _, message in lacks]


def _select_metrics(requested: Sequence[str] | None, setup: _Setup) -> tuple[list[str], dict[str, str]]:
    """The metrics to compute and the implied ones skipped; a requested metric that cannot run raises."""
    if requested is None:
        implied = ["l1", "psnr", "ssim", "swd", "fid_proxy_random_inception", "fid", "is", "kid", "pd", "ca",
                   "diversity_ssim", "diversity_lpips"]
        implied += ["fid_reference"] if setup.reference_stats is not None else []
        implied += ["known_region_l1"] if setup.known_region is not None else []
        explicit: list[str] = []
    else:
        explicit, implied = [], []
        for name in (n.strip().lower() for n in requested if n.strip()):
            if name in METRIC_ALIASES:  # "diversity": SSIM surely, LPIPS when its weights are there
                first, *rest = METRIC_ALIASES[name]
                explicit.append(first)
                implied += rest
            elif name in METRIC_NAMES:
                explicit.append(name)
            else:
                choices = ", ".join(METRIC_NAMES + tuple(METRIC_ALIASES))
                raise ValueError(f"unknown metric {name!r}; choose from {choices}")
    selected, skipped = [], {}
    for name in METRIC_NAMES:
        if name not in explicit and name not in implied:
            continue
        is_weights, lacks = _missing_requirements(name, setup)
        if not lacks:
            selected.append(name)
        elif name in explicit:
            error = MissingWeightsError if is_weights else ValueError
            raise error(f"metric {name} " + "; ".join(lacks))
        else:
            skipped[name] = "; ".join(lacks)
    return selected, skipped


def _known_region_dirs(input_dir: str | Path | None, masks_dir: str | Path | None) -> tuple[Path, Path] | None:
    """Inputs and masks for known_region_l1; masks default to `palette degrade`'s sibling masks/ folder."""
    for folder, flag in ((input_dir, "--input"), (masks_dir, "masks_dir")):
        if folder is not None and not Path(folder).is_dir():
            raise ImageError(f"{folder}: not a directory ({flag})")
    if input_dir is None:
        return None
    masks = Path(masks_dir) if masks_dir is not None else Path(input_dir).parent / "masks"
    return (Path(input_dir), masks) if masks.is_dir() else None


def _image_sizes(pairs: Sequence[ImagePair], samples_per_input: int) -> frozenset[tuple[int, int]]:
    """The (height, width) sizes present; a prediction whose size differs from its target is an error."""
    sizes = set()
    for pair in pairs:
        size = _image_size(pair.target)
        for sample in pair.samples[:samples_per_input]:
            if _image_size(sample) != size:
                raise ImageError(f"{sample} is {_image_size(sample)} but its target {pair.target} is {size} (HxW)")
        sizes.add(size)
    return frozenset(sizes)


def _class_ids(pairs: Sequence[ImagePair], labels: str | Path) -> torch.Tensor:
    """ImageNet class id per pair, looked up by relative key, then by file stem."""
    known = load_labels(labels)
    ids = {pair.key: known.get(pair.key, known.get(Path(pair.key).name)) for pair in pairs}
    unlabelled = [key for key, value in ids.items() if value is None]
    if unlabelled:
        raise ValueError(f"{labels} has no class id for {len(unlabelled)} image(s): {_name_list(unlabelled)}")
    return torch.tensor([ids[pair.key] for pair in pairs])


def _load_networks(selected: Sequence[str], weights: Mapping[str, WeightsFile | None], need_inception: bool,
                   device: torch.device) -> tuple[dict[str, nn.Module], dict[str, WeightsFile]]:
    """The networks the selected metrics need, and the weights files they were loaded from."""
    builders = {"inception": fid_inception, "resnet50": resnet50_classifier, "inception_v1": googlenet_features,
                "lpips": load_lpips}
    wanted = {
        "inception": need_inception,
        "resnet50": "ca" in selected,
        "inception_v1": "pd" in selected and weights["inception_v1"] is not None,
        "lpips": "diversity_lpips" in selected,
    }
    networks, used = {}, {}
    for kind, needed in wanted.items():
        if needed:
            networks[kind] = builders[kind](load_state_dict_file(weights[kind].path)).to(device)
            used[kind] = weights[kind]
    if "fid_proxy_random_inception" in selected:
        networks["proxy"] = fid_inception(random_fid_inception_state(), ["2048"]).to(device)
    return networks, used


def _collect(pairs: Sequence[ImagePair], selected: Sequence[str], networks: Mapping[str, nn.Module],
             samples_per_input: int, known_region: tuple[Path, Path] | None,
             swd: SlicedWassersteinCollector | None, batch_size: int, device: torch.device
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One pass over the images: per-image values [N] by metric, and network outputs [N, D] by name."""
    per_image: dict[str, list[float]] = defaultdict(list)
    outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
    pixel_metrics = [(name, fn) for name, fn in (("l1", l1_error), ("psnr", psnr), ("ssim", ssim)) if name in selected]
    inputs, masks = (_keyed_images(known_region[0]), _keyed_images(known_region[1])) if known_region else ({}, {})

    def imagenet(kind: str, centre_crop: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda images: networks[kind](_imagenet_input(_to_unit(images), centre_crop))

    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        targets = [load_image(pair.target).to(device) for pair in batch]
        preds = [load_image(pair.samples[0]).to(device) for pair in batch]
        for pair, pred, target in zip(batch, preds, targets):
            for name, metric in pixel_metrics:
                per_image[name].append(float(metric(_to_unit(pred)[None], _to_unit(target)[None])))
            if "known_region_l1" in selected:
                if pair.key not in inputs or pair.key not in masks:
                    raise FolderMismatchError(f"known_region_l1: no input or mask named {pair.key} in "
                                              f"{known_region[0]} / {known_region[1]}")
                known = 1 - load_mask(masks[pair.key], *pred.shape[-2:]).to(device)
                error = (_to_unit(pred) - _to_unit(load_image(inputs[pair.key]).to(device))).abs()
                known_values = (known.sum() * len(pred)).clamp_min(1)  # mask [1, H, W] covers every channel
                per_image["known_region_l1"].append(float((error * known).sum() / known_values))
            if "diversity_ssim" in selected or "diversity_lpips" in selected:
                samples = torch.stack([load_image(path) for path in pair.samples[:samples_per_input]]).to(device)
                with torch.inference_mode():
                    if "diversity_ssim" in selected:
                        per_image["diversity_ssim"].append(_similarity_to_first(_to_unit(samples), ssim))
                    if "diversity_lpips" in selected:
                        per_image["diversity_lpips"].append(_similarity_to_first(samples, networks["lpips"]))
        if swd is not None:
            swd.add(torch.stack(preds), torch.stack(targets))
        uint8_preds, uint8_targets = [_to_uint8(x) for x in preds], [_to_uint8(x) for x in targets]
        if "inception" in networks:
            pool, logits = _run_by_size(networks["inception"], uint8_preds)
            outputs["pred_pool"].append(pool)
            outputs["pred_logits"].append(logits)
            outputs["target_pool"].append(_run_by_size(networks["inception"], uint8_targets)[0])
        if "proxy" in networks:
            outputs["proxy_pred"].append(_run_by_size(networks["proxy"], uint8_preds)[0])
            outputs["proxy_target"].append(_run_by_size(networks["proxy"], uint8_targets)[0])
        if "resnet50" in networks:
            outputs["class_logits"].append(_run_by_size(imagenet("resnet50", centre_crop=True), preds)[0])
        if "inception_v1" in networks:  # whole image to 224: a centre crop would hide uncropped borders
            outputs["v1_pred"].append(_run_by_size(imagenet("inception_v1", centre_crop=False), preds)[0])
            outputs["v1_target"].append(_run_by_size(imagenet("inception_v1", centre_crop=False), targets)[0])
    return ({name: torch.tensor(values, dtype=torch.float64) for name, values in per_image.items()},
            {name: torch.cat(parts) for name, parts in outputs.items()})


def evaluate_folders(
    pred_dir: str | Path,
    target_dir: str | Path,
    input_dir: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    inception_weights: str | Path | None = None,
    resnet50_weights: str | Path | None = None,
    inception_v1_weights: str | Path | None = None,
    lpips_weights: str | Path | None = None,
    reference_stats: str | Path | None = None,
    labels: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    save_stats: str | Path | None = None,
    model: str | None = None,
    task: str | None = None,
    masks_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Metrics of predictions against targets; a JSON-ready dict (see the module docstring for conventions).

    `metrics=None` runs every metric whose weights and data are there and lists the others in `skipped`.
    `save_stats` writes the targets' FID Inception mean and covariance (.npz) for a later `reference_stats`.
    `masks_dir` (default: `input_dir/../masks` when it exists) enables known_region_l1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    pairs = match_predictions(pred_dir, target_dir)
    samples_per_input = min(len(pair.samples) for pair in pairs)
    sizes = _image_sizes(pairs, samples_per_input)
    weights = {kind: find_weights(kind, given) for kind, given in (
        ("inception", inception_weights), ("resnet50", resnet50_weights),
        ("inception_v1", inception_v1_weights), ("lpips", lpips_weights))}
    setup = _Setup(len(pairs), samples_per_input, sizes, weights, labels, reference_stats,
                   _known_region_dirs(input_dir, masks_dir))
    selected, skipped = _select_metrics(metrics, setup)
    inception = weights["inception"]
    if save_stats is not None and inception is None:
        raise MissingWeightsError(f"--save-stats {_weights_hint('inception')}")

    reference = load_reference_stats(reference_stats) if "fid_reference" in selected else None
    if reference is not None and str(reference.get("weights_sha256", inception.sha256)) != inception.sha256:
        raise ValueError(f"{reference_stats} was computed with other Inception weights (sha256 "
                         f"{str(reference['weights_sha256'])[:12]}...) than {inception.path}")
    class_ids = _class_ids(pairs, labels) if "ca" in selected else None

    pd_uses_googlenet = "pd" in selected and weights["inception_v1"] is not None
    need_inception = save_stats is not None or any(m in selected for m in ("fid", "fid_reference", "is", "kid")) \
        or ("pd" in selected and not pd_uses_googlenet)
    networks, used_weights = _load_networks(selected, weights, need_inception, device)
    notes = []
    if max(len(pair.samples) for pair in pairs) > samples_per_input:
        notes.append(f"inputs have different sample counts; diversity uses the first {samples_per_input}")
    if "inception" in used_weights and not inception.sha256.startswith(FID_INCEPTION_SHA256_PREFIX):
        notes.append(f"{inception.path.name} is not the standard FID Inception (sha256 {inception.sha256[:8]}..., "
                     f"expected {FID_INCEPTION_SHA256_PREFIX}...): its numbers are not comparable with published ones")
    swd = SlicedWassersteinCollector(*next(iter(sizes))) if "swd" in selected else None
    per_image, outputs = _collect(pairs, selected, networks, samples_per_input, setup.known_region, swd,
                                  batch_size, device)
    if "pd" in selected:
        # Palette §5 computes PD on Inception-v1 pool features; by default we use the FID Inception-v3 pool3
        # (2048-d) instead: the same local weights as FID, the standard feature space. GoogLeNet on request.
        pred_features, target_features = (outputs["v1_pred"], outputs["v1_target"]) if pd_uses_googlenet \
            else (outputs["pred_pool"], outputs["target_pool"])
        per_image["pd"] = (pred_features - target_features).norm(dim=1)
    if "ca" in selected:
        per_image["ca"] = (outputs["class_logits"].argmax(1) == class_ids).double()

    results: dict[str, Any] = {name: _mean_ci(per_image[name]) for name in selected if name in PER_IMAGE_METRICS}
    if swd is not None:
        results["swd"] = swd.compute()
    if "fid_proxy_random_inception" in selected:
        results["fid_proxy_random_inception"] = {"value": fid_from_features(outputs["proxy_target"],
                                                                            outputs["proxy_pred"])}
    if "fid" in selected:
        results["fid"] = {"value": fid_from_features(outputs["target_pool"], outputs["pred_pool"])}
    if reference is not None:
        mu, sigma = feature_statistics(outputs["pred_pool"])
        results["fid_reference"] = {"value": frechet_distance(reference["mu"], reference["sigma"], mu, sigma,
                                                              features2=outputs["pred_pool"])}
    if "is" in selected:
        mean, std = inception_score(outputs["pred_logits"])
        results["is"] = {"mean": mean, "std": std, "splits": min(IS_SPLITS, len(pairs))}
    if "kid" in selected:
        mean, std, size = kernel_inception_distance(outputs["target_pool"], outputs["pred_pool"])
        results["kid"] = {"mean": mean, "std": std, "subset_size": size, "subsets": KID_SUBSETS}
    if save_stats is not None:
        Path(save_stats).parent.mkdir(parents=True, exist_ok=True)
        mu, sigma = feature_statistics(outputs["target_pool"])
        np.savez(save_stats, mu=mu, sigma=sigma, num_images=len(pairs), weights_sha256=inception.sha256)

    return {
        "model": model,
        "task": task,
        "pred_dir": str(pred_dir),
        "target_dir": str(target_dir),
        "input_dir": None if input_dir is None else str(input_dir),
        "num_images": len(pairs),
        "samples_per_input": samples_per_input,
        "metrics": {name: results[name] for name in METRIC_NAMES if name in results},
        "skipped": skipped,
        "weights": {kind: {"path": str(found.path), "sha256": found.sha256} for kind, found in used_weights.items()},
        "settings": {
            "pixel_range": "[0, 1]; PSNR with MAX = 1, capped at 100 dB",
            "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, valid filtering, mean over RGB",
            "single_sample_metrics_use": "sample 0 of each input",
            "pd_features": "googlenet_pool_1024" if pd_uses_googlenet else "fid_inception_v3_pool3_2048",
            "ca_preprocessing": "resize 256, centre crop 224, ImageNet mean/std",
            "swd": {"patch": SWD_PATCH_SIZE, "patches_per_image": SWD_PATCHES_PER_IMAGE,
                    "directions": SWD_DIRECTIONS, "repeats": SWD_REPEATS, "seed": SWD_SEED, "scale": 1e3},
            "fid_proxy_random_inception": {"seed": PROXY_INCEPTION_SEED,
                                           "init": "He-normal convs, identity batch norm"},
            "saved_stats": None if save_stats is None else str(save_stats),
        },
        "notes": notes,
    }


# --------------------------------------------------------------------------------------------- output


def headline_value(entry: Mapping[str, Any]) -> float | None:
    """The one number a table shows for a metric entry: its mean or its value."""
    value = entry.get("mean", entry.get("value"))
    return None if value is None or not math.isfinite(value) else float(value)


def format_table(results: Mapping[str, Any]) -> str:
    """A readable plain-text table of evaluate_folders' results."""
    title = f"{results['num_images']} images, {results['samples_per_input']} sample(s) per input"
    if results.get("model") or results.get("task"):
        title += f"  [model: {results.get('model') or '-'}, task: {results.get('task') or '-'}]"
    lines = [title, f"{'metric':<28} value"]
    for name, entry in results["metrics"].items():
        value = headline_value(entry)
        text = "n/a" if value is None else f"{value:.4f}"
        if entry.get("ci95") is not None:
            text += f" ± {entry['ci95']:.4f}"
        elif entry.get("std") is not None:
            text += f" (std {entry['std']:.4f})"
        if "levels" in entry:
            text += "  levels " + ", ".join(f"{res}px: {v:.2f}" for res, v in entry["levels"].items())
        lines.append(f"{name:<28} {text}")
    for name, reason in results["skipped"].items():
        lines.append(f"{name:<28} skipped: {reason}")
    for kind, found in results["weights"].items():
        lines.append(f"weights {kind}: {found['path']} (sha256 {found['sha256'][:12]}…)")
    lines += [f"note: {note}" for note in results.get("notes", [])]
    return "\n".join(lines)
