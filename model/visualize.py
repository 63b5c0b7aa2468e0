"""Pictures for people: label overlays and side-by-side previews (uint8 numpy in, uint8 numpy out)."""

from __future__ import annotations

import numpy as np

from .domain.render import LABEL_COLORS


def colorize(labels: np.ndarray, colors=LABEL_COLORS) -> np.ndarray:
    """Class map uint8 [..., H, W] → RGB uint8 [..., H, W, 3]."""
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(colors)] = np.asarray(colors, np.uint8)
    return pal[labels]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55, colors=LABEL_COLORS) -> np.ndarray:
    """Blend label colours over an image (background class 0 left untouched).

    image: uint8 [H, W, 3]; labels: uint8 [H, W] → uint8 [H, W, 3]."""
    col = colorize(labels, colors).astype(np.float32)
    img = image.astype(np.float32)
    a = np.where(labels[..., None] > 0, alpha, 0.0)
    return np.round(img * (1 - a) + col * a).astype(np.uint8)


def preview_rows(images: np.ndarray, labels: np.ndarray, colors=LABEL_COLORS) -> np.ndarray:
    """Interleave image / overlay / label colours per sample: uint8 [3N, H, W, 3] for a grid of 3 columns."""
    rows = []
    for img, lab in zip(images, labels):
        rows += [img, overlay(img, lab, colors=colors), colorize(lab, colors)]
    return np.stack(rows)
