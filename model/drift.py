"""How far a project's images are from what the generator draws: a Fréchet distance with its own floor.

The features are a segmentation U-Net's per-image embedding (:meth:`model.segmenter.UNet.embed`), the
one the project already trains to pre-annotate (its teacher). The distance between ``n`` project images
and ``n`` generator samples is set against the *floor*: the distance between two disjoint sets of ``n``
generator samples, which is what sampling noise alone gives at that ``n``. ``ratio`` = distance / floor
is then comparable across projects and set sizes: about 1 means the images look like generator samples;
the embedded domain's ``shifted`` variant (recoloured parts, inverted contrasts) measures far above it
(docs/results.md, "Domain drift").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .metrics import frechet_distance
from .segmenter import UNet, embed

# Above this ratio a project counts as drifted: the segmenter job then trains a refiner on its images.
DRIFT_THRESHOLD = 3.0


@dataclass
class Drift:
    fd: float          # Fréchet distance, project images vs generator samples
    floor: float       # the same between two disjoint sets of generator samples
    ratio: float       # fd / floor (≈ 1: no drift)
    n: int             # images per set
    drifted: bool      # ratio > threshold

    def to_dict(self) -> dict:
        return asdict(self)


def measure_drift(model: UNet, images: np.ndarray, samples: np.ndarray, threshold: float = DRIFT_THRESHOLD) -> Drift:
    """Project images uint8 [N, H, W, 3] vs generator samples uint8 [M, H, W, 3] (M ≥ 2·n, n = min(N, M // 2))
    → :class:`Drift` in ``model``'s embedding."""
    n = min(len(images), len(samples) // 2)
    if n < 8:
        raise ValueError(f"drift needs at least 8 project images and 16 generator samples, "
                         f"got {len(images)} and {len(samples)}")
    f_img = embed(model, images[:n])
    f_a, f_b = embed(model, samples[:n]), embed(model, samples[n:2 * n])
    fd, floor = frechet_distance(f_img, f_a), frechet_distance(f_b, f_a)
    ratio = fd / max(floor, 1e-9)
    return Drift(round(fd, 4), round(floor, 4), round(ratio, 2), int(n), bool(ratio > threshold))
