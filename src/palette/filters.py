"""Edge-aware smoothing of generated colour: the guided filter (He et al. 2010) with the luma as its guide.

    smoothed = smooth_chroma(images, radius=1)  # [N, 3, H, W]: the same luma, the colour speckle averaged away

A small model's colorization carries colour speckle at the scale of a pixel, which the eye and the SWD's finest
level see at once, and blotches: patches of another colour a few pixels wide where it was unsure (orange spots on
a magenta cat). Colour in photos changes where the luma changes, so the chroma is refit in each window of
(2r + 1)² pixels as a linear function of the luma there: averaged where the luma is flat, following it across an
edge, so colour neither speckles nor bleeds over edges (He et al. 2010, "Guided Image Filtering", Alg. 1).
Radius 1 takes out speckle; radius 8 (17² windows at 64 px) also averages a blotch into the colour of the object
the luma outlines.
Written here because OpenCV's guided filter lives in its contrib build only; it is a few box means in torch.

    smoothed = smooth_deep_hole_colour(images, mask, min_depth=12)  # deep holes: the same filter, radius 8

A hole's starting fill (OpenCV's Navier-Stokes) carries colour along isophotes, so across a wide hole it can leave
a streak of a colour met at one point of its border (a blue badge drawn over a suit). In holes at least a given
depth the same filter at radius 8 refits that colour to the luma around it: the streak goes where the luma does
not follow it, and a colour that does follow the luma (a cyan cup against a dark background) stays. Thin strokes
keep their fill's colour, which follows the structure across them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .tasks import luma
from .windows import distance_to_known

# He et al.'s regulariser on images in [-1, 1]: a window whose luma varies by less than about sqrt(eps) = 0.03
# (1.6% of the range) counts as flat and gets the window's mean colour.
GUIDED_FILTER_EPS = 1e-3
# In deep holes the chroma filter has colorization's radius (17 px windows: wider than a streak at 64 px), and its
# change blends in over the first few px from the hole's border, so the colour meets the known colour with no seam.
DEEP_HOLE_RADIUS = 8
HOLE_BORDER_BLEND = 4


def box_mean(images: torch.Tensor, radius: int) -> torch.Tensor:
    """The mean of each (2 radius + 1)² window of [N, C, H, W], the border pixels repeated outwards."""
    padded = F.pad(images, (radius,) * 4, mode="replicate")
    return F.avg_pool2d(padded, 2 * radius + 1, stride=1)


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int,
                  eps: float = GUIDED_FILTER_EPS) -> torch.Tensor:
    """`source` [N, C, H, W] smoothed as a local linear function a * guide + b of `guide` [N, 1, H, W]."""
    guide_mean, source_mean = box_mean(guide, radius), box_mean(source, radius)
    covariance = box_mean(guide * source, radius) - guide_mean * source_mean
    variance = box_mean(guide * guide, radius) - guide_mean * guide_mean
    slope = covariance / (variance + eps)
    intercept = source_mean - slope * guide_mean
    return box_mean(slope, radius) * guide + box_mean(intercept, radius)


def smooth_chroma(images: torch.Tensor, radius: int) -> torch.Tensor:
    """RGB images [N, 3, H, W] whose chroma (image - luma) is guided-filtered by their luma, which stays exact."""
    if radius < 1:
        raise ValueError(f"the chroma filter's radius must be at least 1, got {radius}")
    given = luma(images)
    chroma = guided_filter(given, images - given, radius)
    return given + chroma - luma(chroma)


def smooth_deep_hole_colour(images: torch.Tensor, mask: torch.Tensor, min_depth: float) -> torch.Tensor:
    """RGB images [N, 3, H, W] whose colour in each hole of `mask` [N, 1, H, W] (1 = hole) whose farthest pixel lies
    `min_depth` px or more from a known one is smoothed along the luma (smooth_chroma at DEEP_HOLE_RADIUS), blended
    in over HOLE_BORDER_BLEND px from the hole's border; the luma stays, and every other pixel exactly."""
    weight = torch.stack([_deep_hole_weight(hole, min_depth) for hole in mask[:, 0].cpu() > 0.5])[:, None].to(images)
    if not weight.any():
        return images
    smoothed = smooth_chroma(images, DEEP_HOLE_RADIUS)
    return torch.where(weight > 0, images + weight * (smoothed - images), images)


def _deep_hole_weight(hole: torch.Tensor, min_depth: float) -> torch.Tensor:
    """[H, W]: for the pixels of each 8-connected hole of `hole` [H, W] bool whose deepest pixel lies `min_depth` px
    or more from a known one, their depth / HOLE_BORDER_BLEND up to 1; 0 elsewhere."""
    import cv2

    count, labels = cv2.connectedComponents(hole.numpy().astype(np.uint8), connectivity=8)
    depth = distance_to_known(hole).numpy()
    deepest = np.zeros(count)
    np.maximum.at(deepest, labels.ravel(), depth.ravel())
    deep = deepest >= min_depth
    deep[0] = False  # label 0: the known pixels
    return torch.from_numpy(np.where(deep[labels], np.minimum(depth / HOLE_BORDER_BLEND, 1), 0).astype(np.float32))
