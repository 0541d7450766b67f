"""Set-level metrics on network features: Fréchet distance (FID), Inception Score, KID, reference statistics.

    fid_from_features(real_pool3, fake_pool3)       # [N, 2048] each
    inception_score(fake_logits)                    # (mean, std over splits)
    save_reference_stats("targets.npz", real_pool3, weights_sha256)   # for a later FID against it
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

KID_SUBSETS = 100  # Binkowski et al. 2018: 100 subsets of (at most) 1000
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10  # Salimans et al. 2016


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
        import scipy.linalg

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


def save_reference_stats(path: str | Path, features: torch.Tensor, weights_sha256: str) -> None:
    """Write the mean and covariance of `features` [N, D] as an .npz that load_reference_stats reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mu, sigma = feature_statistics(features)
    np.savez(path, mu=mu, sigma=sigma, num_images=len(features), weights_sha256=weights_sha256)


def load_reference_stats(path: str | Path) -> dict[str, np.ndarray]:
    """An .npz with `mu` [D] and `sigma` [D, D] (optionally `weights_sha256`, written by save_reference_stats)."""
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
