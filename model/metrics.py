"""Evaluation metrics: mean IoU over classes and the Fréchet distance between feature sets."""

from __future__ import annotations

import numpy as np
import torch


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix int64 [C, C] (rows = target) of two class maps of the same shape."""
    idx = target.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """IoU per class float64 [C] of a confusion matrix [C, C]; NaN for classes absent from both sides."""
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def iou_per_class(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """IoU per class float64 [C]; NaN for classes absent from both prediction and target."""
    return iou_from_confusion(confusion(pred, target, n_classes))


def per_class_percent(iou: np.ndarray, class_names: list[str], digits: int = 1) -> dict[str, float]:
    """IoU per class in [0, 1] (NaN = class absent) → {class name: IoU %} for the classes present."""
    return {c: round(100 * float(v), digits) for c, v in zip(class_names, iou) if not np.isnan(v)}


def mean_iou(pred: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean IoU (in [0, 1]) over the classes present, accumulated over the whole set (as PASCAL VOC)."""
    return float(np.nanmean(iou_per_class(pred, target, n_classes)))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a [N, D] and b [M, D].

    ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), computed with symmetric eigendecompositions."""
    a_t, b_t = torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))
    mu_a, mu_b = a_t.mean(0), b_t.mean(0)
    cov_a, cov_b = torch.cov(a_t.T), torch.cov(b_t.T)
    va, qa = torch.linalg.eigh(cov_a)
    sqrt_a = qa @ torch.diag(va.clamp_min(0).sqrt()) @ qa.T
    m = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt)
