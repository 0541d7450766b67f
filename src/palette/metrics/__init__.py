"""Image metrics, one module per family (like torchmetrics); `palette.evaluate` runs them over folders.

    pixel         L1, PSNR, SSIM, colourfulness: one value per image
    swd           PGGAN's sliced Wasserstein distance on Laplacian-pyramid patches
    distribution  FID (Fréchet distance), Inception Score, KID, reference statistics files
    networks      the pretrained networks behind them, from local weights files only
    folders       which prediction files belong to which target (and labels, masks, sizes)
"""

from .distribution import (
    IS_SPLITS,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_reference_stats,
    save_reference_stats,
)
from .folders import FolderMismatchError, ImagePair, load_labels, match_predictions
from .networks import (
    FID_INCEPTION_FILES,
    FID_INCEPTION_SHA256_PREFIX,
    LPIPS,
    PROXY_INCEPTION_SEED,
    WEIGHTS_KINDS,
    MissingWeightsError,
    WeightsFile,
    fid_inception,
    file_sha256,
    find_weights,
    googlenet_features,
    imagenet_input,
    load_lpips,
    load_network,
    load_state_dict_file,
    lpips_state_dict,
    random_fid_inception_state,
    resnet50_classifier,
    run_by_size,
    weights_hint,
)
from .pixel import PSNR_CAP_DB, colourfulness, l1_error, psnr, ssim
from .swd import SlicedWassersteinCollector, laplacian_pyramid, sliced_wasserstein_distance, swd_levels

__all__ = [
    "FID_INCEPTION_FILES", "FID_INCEPTION_SHA256_PREFIX", "IS_SPLITS", "KID_SUBSETS", "KID_SUBSET_SIZE", "LPIPS",
    "PROXY_INCEPTION_SEED", "PSNR_CAP_DB", "WEIGHTS_KINDS", "FolderMismatchError", "ImagePair",
    "MissingWeightsError", "SlicedWassersteinCollector", "WeightsFile", "colourfulness", "feature_statistics",
    "fid_from_features", "fid_inception", "file_sha256", "find_weights", "frechet_distance", "googlenet_features",
    "imagenet_input", "inception_score", "kernel_inception_distance", "l1_error", "laplacian_pyramid",
    "load_labels", "load_lpips", "load_network", "load_reference_stats", "load_state_dict_file", "lpips_state_dict",
    "match_predictions", "psnr", "random_fid_inception_state", "resnet50_classifier", "run_by_size",
    "save_reference_stats", "sliced_wasserstein_distance", "ssim", "swd_levels", "weights_hint",
]
