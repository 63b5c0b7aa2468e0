"""Which task to label next: the value of labeling a task, as the prediction ``score`` Label Studio sorts by.

Labeling a task teaches the model most when the model is unsure of it (low certainty) and when it is
unlike everything already labeled (high novelty: a near-copy of a labeled image teaches almost nothing,
however unsure the model is). Per task:

- certainty ``c`` in [0, 1]: 1 − image uncertainty / log C (:func:`model.pipeline.certainty`; 1 = sure);
- novelty ``n`` in [0, 1): with ``d`` the distance from the task to its nearest labeled image in an
  embedding and ``r`` the labeled set's own spacing (the median distance from a labeled image to its
  nearest other labeled image), ``n = d / (d + r)``: 0 for a copy of a labeled image, 0.5 for a task as
  far from the labeled set as labeled images are from one another, towards 1 far beyond. The rule is
  absolute per task — not normalised over the tasks of one request — so tasks scored in different
  ``/predict`` calls (8 at a time) are comparable when Label Studio sorts all of them. It needs at
  least :data:`MIN_LABELED` labeled images (no spacing to measure otherwise);
- value ``v = w·n + (1 − w)·(1 − c)`` in [0, 1] (``w`` = :data:`DEFAULT_NOVELTY_WEIGHT`);
- score ``s = 1 − v`` in [0, 1]: **ascending = label first**. Without novelty (fewer than 2 labeled
  images, or a model version that kept no labeled reference) ``s = c``, the certainty alone.

The embedding is the serving model's own: the segmenter U-Net's per-image features
(:func:`image_embeddings`) once it serves — tasks are never inverted then — and the W+ latents
(:func:`latent_embeddings`) while the interpreter serves through inversion, since those latents are what
the interpreter labels from and every task has one at no extra cost.

Pure functions on arrays (float64 unless said); no Label Studio, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_NOVELTY_WEIGHT = 0.5   # w: novelty and uncertainty weigh the same
MIN_LABELED = 2                # labeled images needed to measure the labeled set's spacing


DIFF_BYTES = 64 << 20    # memory for the [chunk, M, D] differences of one step of nearest_distance


def nearest_distance(embeddings: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``embeddings`` [N, D] to its nearest row of ``labeled``
    [M, D] (M ≥ 1) → float64 [N], ≥ 0; exactly 0 for a row equal to a labeled one. Chunked so one
    chunk's differences stay within :data:`DIFF_BYTES` whatever M and D (W+ latents are thousands wide)."""
    emb, lab = _as_2d(embeddings, "embeddings"), _as_2d(labeled, "labeled")
    if len(lab) == 0:
        raise ValueError("nearest_distance needs at least one labeled embedding")
    if emb.shape[1] != lab.shape[1]:
        raise ValueError(f"embeddings have {emb.shape[1]} dimensions, the labeled ones {lab.shape[1]}")
    out = np.empty(len(emb))
    chunk = max(1, DIFF_BYTES // (8 * len(lab) * emb.shape[1]))
    for i in range(0, len(emb), chunk):   # exact differences (no |a|²+|b|²−2ab cancellation), bounded memory
        diff = emb[i:i + chunk, None, :] - lab[None, :, :]
        out[i:i + chunk] = np.sqrt((diff * diff).sum(-1)).min(1)
    return out


def labeled_spacing(labeled: np.ndarray) -> float:
    """The labeled set's spacing ``r``: the median, over labeled images [M, D] (M ≥ 2), of the distance to
    the nearest *other* labeled image (float, > 0; a set of identical rows gets a tiny positive value)."""
    lab = _as_2d(labeled, "labeled")
    if len(lab) < MIN_LABELED:
        raise ValueError(f"the labeled set's spacing needs at least {MIN_LABELED} labeled images, got {len(lab)}")
    diff = lab[:, None, :] - lab[None, :, :]
    dist = np.sqrt((diff * diff).sum(-1))
    np.fill_diagonal(dist, np.inf)
    return max(float(np.median(dist.min(1))), 1e-12)


def novelty(embeddings: np.ndarray, labeled: np.ndarray, spacing: float | None = None) -> np.ndarray:
    """Novelty float64 [N] in [0, 1) of tasks ``embeddings`` [N, D] against the labeled images ``labeled``
    [M, D]: ``d / (d + r)`` with ``d`` the distance to the nearest labeled image and ``r`` = ``spacing``
    (default :func:`labeled_spacing` of ``labeled``, which needs M ≥ 2). 0 = a copy of a labeled image;
    0.5 = as far from the labeled set as labeled images are from one another; the farther, the closer to 1."""
    r = labeled_spacing(labeled) if spacing is None else float(spacing)
    if not r > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    d = nearest_distance(embeddings, labeled)
    return d / (d + r)


def labeling_value(certainty: np.ndarray, novelty: np.ndarray | None,
                   weight: float = DEFAULT_NOVELTY_WEIGHT) -> np.ndarray:
    """Expected value of labeling each task, float64 [N] in [0, 1]: ``w·novelty + (1 − w)·(1 − certainty)``.

    certainty [N] in [0, 1] (1 = sure); novelty [N] in [0, 1] or None (not measured: the value is
    ``1 − certainty``); weight ``w`` in [0, 1] (0: uncertainty alone, 1: novelty alone)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the novelty weight must be in [0, 1], got {weight}")
    c = np.clip(np.asarray(certainty, np.float64), 0.0, 1.0)
    if novelty is None:
        return 1.0 - c
    n = np.clip(np.asarray(novelty, np.float64), 0.0, 1.0)
    if n.shape != c.shape:
        raise ValueError(f"certainty {c.shape} and novelty {n.shape} must have the same shape")
    return weight * n + (1.0 - weight) * (1.0 - c)


def labeling_score(certainty: np.ndarray, novelty: np.ndarray | None,
                   weight: float = DEFAULT_NOVELTY_WEIGHT) -> np.ndarray:
    """The prediction ``score`` float64 [N] in [0, 1]: ``1 − labeling_value``; sorted ascending, the task
    most worth labeling comes first. Without novelty it is the certainty itself."""
    return 1.0 - labeling_value(certainty, novelty, weight)


def why(certainty: float, novelty: float | None, weight: float = DEFAULT_NOVELTY_WEIGHT) -> str:
    """The larger of the value's two terms, in words: ``"uncertain"`` or ``"novel"`` (``"uncertain"``
    when novelty is not measured)."""
    if novelty is None or (1.0 - weight) * (1.0 - certainty) >= weight * novelty:
        return "uncertain"
    return "novel"


@dataclass
class Pick:
    index: int          # row of the candidate arrays
    score: float        # labeling score at the moment it was picked (earlier picks counted as labeled)
    certainty: float
    novelty: float | None


def select_next(certainty: np.ndarray, embeddings: np.ndarray | None, labeled: np.ndarray | None, k: int,
                weight: float = DEFAULT_NOVELTY_WEIGHT) -> list[Pick]:
    """The ``k`` candidates to label next, best first, greedily: each pick is the lowest
    :func:`labeling_score`, then counts as labeled for the novelty of the next picks (so a batch handed
    out at once holds no two near-copies). The spacing ``r`` stays the labeled set's.

    certainty float [N] in [0, 1]; embeddings [N, D] and labeled [M, D] in the same space, or None (or
    fewer than :data:`MIN_LABELED` labeled rows): ranked by certainty alone, least certain first. Ties
    keep the candidates' order."""
    c = np.asarray(certainty, np.float64)
    k = max(0, min(int(k), len(c)))
    if embeddings is None or labeled is None or len(labeled) < MIN_LABELED:
        order = np.argsort(labeling_score(c, None, weight), kind="stable")[:k]
        return [Pick(int(i), float(c[i]), float(c[i]), None) for i in order]
    emb = _as_2d(embeddings, "embeddings")
    if len(emb) != len(c):
        raise ValueError(f"{len(c)} certainties for {len(emb)} embeddings")
    r = labeled_spacing(labeled)
    d = nearest_distance(emb, labeled)
    taken = np.zeros(len(c), bool)
    picks: list[Pick] = []
    for _ in range(k):
        nov = d / (d + r)
        score = np.where(taken, np.inf, labeling_score(c, nov, weight))
        i = int(np.argmin(score))
        picks.append(Pick(i, float(score[i]), float(c[i]), float(nov[i])))
        taken[i] = True
        d = np.minimum(d, nearest_distance(emb, emb[i:i + 1]))
    return picks


def image_embeddings(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The segmenter U-Net's per-image features (:meth:`model.segmenter.UNet.embed`: spatial means of its
    full-resolution and bottleneck features) of uint8 images [N, R, R, 3] → float64 [N, D]."""
    from .segmenter import embed

    return embed(model, np.asarray(images))


def latent_embeddings(ws: torch.Tensor | np.ndarray) -> np.ndarray:
    """W+ latents [N, num_ws, w_dim] → float64 [N, num_ws·w_dim] (Euclidean distance in W+)."""
    arr = ws.detach().cpu().numpy() if isinstance(ws, torch.Tensor) else np.asarray(ws)
    return arr.reshape(len(arr), -1).astype(np.float64)


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {arr.shape}")
    return arr
