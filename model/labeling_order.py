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

**Coverage, when the project's unlabeled tasks are known.** Novelty alone favours outliers: the task
farthest from everything labeled is often one unlike the rest of the project too. When the embeddings of
the project's unlabeled tasks (the *pool*: every candidate for ``dgan next``, a sample of task images kept
with the segmenter for ``/predict``) are at hand, the second term is the task's **coverage gain** ``g``
instead (facility location, as in the low-budget active learning of TypiClust and ProbCover: dense,
not yet covered regions first). With a Gaussian kernel ``K(x, y) = exp(−|x − y|² / 2σ²)``, ``σ`` the
pool's median distance to its :data:`COVER_NEIGHBOURS`-th nearest pool task, and ``cov_j`` = the largest
``K`` from any labeled image to pool task ``j``:
``g(x) = mean_j max(0, K(x, p_j) − cov_j) / g_max`` in [0, 1], ``g_max`` the largest gain any pool task
offered when the coverage was built (so a task's gain is absolute for one model version). The value is
then ``v = w·g + (1 − w)·(1 − c)`` with ``w`` = :data:`DEFAULT_COVERAGE_WEIGHT`.

Pure functions on arrays (float64 unless said); no Label Studio, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_NOVELTY_WEIGHT = 0.5   # w: novelty and uncertainty weigh the same
DEFAULT_COVERAGE_WEIGHT = 1.0  # w with a pool: coverage alone (docs/results.md, labeling order)
MIN_LABELED = 2                # labeled images needed to measure the labeled set's spacing
COVER_NEIGHBOURS = 10          # the kernel's bandwidth: median distance to this nearest pool task
POOL_MAX = 2000                # pool tasks kept as the coverage reference (a seeded sample beyond)


def nearest_distance(embeddings: np.ndarray, labeled: np.ndarray) -> np.ndarray:
    """Euclidean distance from each row of ``embeddings`` [N, D] to its nearest row of ``labeled``
    [M, D] (M ≥ 1) → float64 [N], ≥ 0; exactly 0 for a row equal to a labeled one."""
    emb, lab = _as_2d(embeddings, "embeddings"), _as_2d(labeled, "labeled")
    if len(lab) == 0:
        raise ValueError("nearest_distance needs at least one labeled embedding")
    if emb.shape[1] != lab.shape[1]:
        raise ValueError(f"embeddings have {emb.shape[1]} dimensions, the labeled ones {lab.shape[1]}")
    return np.sqrt(_sq_distances(emb, lab).min(1)) if len(emb) else np.zeros(0)


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

    certainty [N] in [0, 1] (1 = sure); novelty [N] in [0, 1] — the novelty, or the coverage gain when
    a pool is known — or None (not measured: the value is ``1 − certainty``); weight ``w`` in [0, 1]
    (0: uncertainty alone, 1: the second term alone)."""
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


def why(certainty: float, novelty: float | None, weight: float = DEFAULT_NOVELTY_WEIGHT,
        coverage: float | None = None) -> str:
    """The larger of the value's two terms, in words: ``"uncertain"``, ``"novel"`` or (a coverage gain
    given, weighed with ``weight`` = :data:`DEFAULT_COVERAGE_WEIGHT` by the caller) ``"covers unlabeled
    tasks"`` (``"already covered"`` when that term, weighed alone, is 0); ``"uncertain"`` when neither
    second term is measured."""
    term, label = (coverage, "covers unlabeled tasks") if coverage is not None else (novelty, "novel")
    if term is None:
        return "uncertain"
    if weight >= 1.0 and term <= 0.0:
        return "already covered"      # nothing left to gain, and uncertainty does not count
    if (1.0 - weight) * (1.0 - certainty) >= weight * term:
        return "uncertain"
    return label


DIFF_BYTES = 64 << 20    # memory for the [chunk, M, D] differences of one step of _sq_distances


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances float64 [N, M] between rows of ``a`` [N, D] and ``b`` [M, D]: exact
    differences (no |a|² + |b|² − 2ab cancellation; 0 for equal rows), chunked over ``a`` so the
    differences of one chunk stay within :data:`DIFF_BYTES` whatever M and D."""
    out = np.empty((len(a), len(b)))
    chunk = max(1, DIFF_BYTES // max(1, 8 * len(b) * a.shape[1]))
    for i in range(0, len(a), chunk):
        diff = a[i:i + chunk, None, :] - b[None, :, :]
        out[i:i + chunk] = (diff * diff).sum(-1)
    return out


class Coverage:
    """How much of a project's unlabeled pool a new label would cover (see the module docstring).

    ``pool`` [P, D] (P ≥ 2): embeddings of the project's unlabeled tasks (a seeded sample of
    :data:`POOL_MAX` beyond that); ``labeled`` [M, D] (M ≥ 0) in the same space. :meth:`gain` is
    absolute for this object (normalised by the largest gain a pool task offered at construction);
    :meth:`add` counts more images as labeled (greedy batches)."""

    def __init__(self, pool: np.ndarray, labeled: np.ndarray | None, neighbours: int = COVER_NEIGHBOURS,
                 seed: int = 0) -> None:
        ref = _as_2d(pool, "pool")
        if len(ref) < 2:
            raise ValueError(f"coverage needs a pool of at least 2 unlabeled tasks, got {len(ref)}")
        if len(ref) > POOL_MAX:
            ref = ref[np.sort(np.random.default_rng(seed).choice(len(ref), POOL_MAX, replace=False))]
        self.pool = ref
        d2 = _sq_distances(ref, ref)
        kth = min(int(neighbours), len(ref) - 1)
        self.sigma = max(float(np.sqrt(np.median(np.sort(d2, 1)[:, kth]))), 1e-12)
        self.covered = np.zeros(len(ref))
        if labeled is not None and len(labeled):
            self.add(labeled)
        self.scale = 1.0
        self.scale = max(float(self._raw_gain_from_sq(d2).max()), 1e-12)

    def _kernel(self, d2: np.ndarray) -> np.ndarray:
        return np.exp(-d2 / (2.0 * self.sigma ** 2))

    def _raw_gain_from_sq(self, d2: np.ndarray) -> np.ndarray:
        return np.maximum(self._kernel(d2) - self.covered[None, :], 0.0).mean(1)

    def kernel(self, embeddings: np.ndarray) -> np.ndarray:
        """The kernel float64 [N, P] in (0, 1] between ``embeddings`` [N, D] and the pool."""
        emb = _as_2d(embeddings, "embeddings")
        if emb.shape[1] != self.pool.shape[1]:
            raise ValueError(f"embeddings have {emb.shape[1]} dimensions, the pool {self.pool.shape[1]}")
        return self._kernel(_sq_distances(emb, self.pool))

    def gain_from_kernel(self, kern: np.ndarray) -> np.ndarray:
        """:meth:`gain` from a :meth:`kernel` already computed (greedy picks reuse it)."""
        return np.clip(np.maximum(kern - self.covered[None, :], 0.0).mean(1) / self.scale, 0.0, 1.0)

    def gain(self, embeddings: np.ndarray) -> np.ndarray:
        """Coverage gain float64 [N] in [0, 1] of labeling each task of ``embeddings`` [N, D]: 0 for a task
        whose neighbourhood in the pool is already covered (or empty), 1 for the best pool task at
        construction."""
        return self.gain_from_kernel(self.kernel(embeddings))

    def add(self, embeddings: np.ndarray) -> None:
        """Count the images ``embeddings`` [K, D] as labeled: their neighbourhoods become covered."""
        self.covered = np.maximum(self.covered, self.kernel(embeddings).max(0))


@dataclass
class Pick:
    index: int          # row of the candidate arrays
    score: float        # labeling score at the moment it was picked (earlier picks counted as labeled)
    certainty: float
    novelty: float | None    # the novelty term, when it was the one used (no pool)
    coverage: float | None = None   # the coverage gain, when a pool was given


def select_next(certainty: np.ndarray, embeddings: np.ndarray | None, labeled: np.ndarray | None, k: int,
                weight: float | None = None, pool: np.ndarray | None = None) -> list[Pick]:
    """The ``k`` candidates to label next, best first, greedily: each pick is the lowest
    :func:`labeling_score`, then counts as labeled for the next picks (so a batch handed out at once
    holds no two near-copies).

    certainty float [N] in [0, 1]; embeddings [N, D] and labeled [M, D] in the same space. With ``pool``
    [P, D] (the project's unlabeled tasks; the candidates themselves when all are scored) the second term
    is the :class:`Coverage` gain (``weight`` default :data:`DEFAULT_COVERAGE_WEIGHT`); without it the
    novelty (default :data:`DEFAULT_NOVELTY_WEIGHT`; the spacing ``r`` stays the labeled set's); with
    neither embeddings nor (for novelty) :data:`MIN_LABELED` labeled rows, certainty alone, least certain
    first. Ties keep the candidates' order."""
    c = np.asarray(certainty, np.float64)
    k = max(0, min(int(k), len(c)))
    if embeddings is not None and pool is not None and len(pool) >= 2:
        return _select_by_coverage(c, _as_2d(embeddings, "embeddings"), labeled, k,
                                   DEFAULT_COVERAGE_WEIGHT if weight is None else weight, pool)
    weight = DEFAULT_NOVELTY_WEIGHT if weight is None else weight
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


def _select_by_coverage(c: np.ndarray, emb: np.ndarray, labeled: np.ndarray | None, k: int, weight: float,
                        pool: np.ndarray) -> list[Pick]:
    if len(emb) != len(c):
        raise ValueError(f"{len(c)} certainties for {len(emb)} embeddings")
    cover = Coverage(pool, labeled)
    kern = cover.kernel(emb)                      # [N, P], computed once; each pick only moves the coverage
    taken = np.zeros(len(c), bool)
    picks: list[Pick] = []
    for _ in range(k):
        g = cover.gain_from_kernel(kern)
        score = np.where(taken, np.inf, labeling_score(c, g, weight))
        i = int(np.argmin(score))
        picks.append(Pick(i, float(score[i]), float(c[i]), None, float(g[i])))
        taken[i] = True
        cover.covered = np.maximum(cover.covered, kern[i])
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
