"""Which pick rule makes the ranked labeling order save labels (issue 13): ranked variants only.

Same simulation as ``dgan bench labeling-order`` (model/bench_labeling_order.py, same seeds, sets, teacher
and fits), but the 4-random-label first model of each draw is cached and only the ranked curve is
refitted, per variant, up to ``--max`` labels. The random curve of the same draw is read from the full
bench's JSON (the fits are seeded; the first model's mIoU is checked against it).

Variants (all greedy, batch of 4, each pick counting as labeled for the next):
- ``served``: model.labeling_order.select_next (novelty d/(d+r) and uncertainty, weight 0.5);
- ``cover``: facility-location coverage of the candidate pool in the model's embedding (Gaussian
  kernel, bandwidth = median distance to the 10th nearest pool neighbour): the pick that adds most
  coverage of pool tasks not yet covered by labeled ones (dense, uncovered regions first);
- ``cover_unc``: ``w·gain/max gain + (1 − w)·(1 − certainty)`` with w = 0.5;
- ``eiou``: class-aware value, aligned with the metric (a mean over classes): per task and class the
  model's own expected IoU of its hard prediction (soft IoU of probabilities vs argmax), its shortfall
  ``1 − eIoU_c(x)`` (counted where the class is present in the task: ≥ 0.5 px of probability mass or
  any argmax pixel) weighted by how weak the class is over the candidates (``1 − eIoU_c`` of all
  candidates together, normalised to sum 1); greedy with the served novelty, ``½ novelty + ½ value / max value``.

    PYTHONPATH=. .venv/bin/python scripts/labeling_order_experiment.py --variants cover cover_unc --draws 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model.bench_labeling_order import POOL_SEED, TEST_SEED, OrderSettings, _fit, _miou
from model.domain import CLASSES, render_batch
from model.labeling_order import image_embeddings, select_next
from model.pipeline import certainty
from model.segmenter import Segmenter


def sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def cover_picks(emb: np.ndarray, lab: np.ndarray, cert: np.ndarray, k: int, w: float) -> list[int]:
    """Greedy facility-location picks over the pool ``emb`` [N, D] (candidates = pool), labeled ``lab``."""
    d2 = sq_dist(emb, emb)
    kth = np.sqrt(np.sort(d2, 1)[:, 10])
    sigma = float(np.median(kth))
    kern = np.exp(-d2 / (2 * sigma ** 2))                       # [cand, pool]
    cov = np.exp(-sq_dist(lab, emb) / (2 * sigma ** 2)).max(0)  # [pool]
    taken = np.zeros(len(emb), bool)
    picks = []
    for _ in range(k):
        gain = np.maximum(kern - cov[None], 0).mean(1)
        val = gain / max(gain.max(), 1e-12)
        if w < 1:
            val = w * val + (1 - w) * (1 - cert)
        val[taken] = -np.inf
        i = int(np.argmax(val))
        picks.append(i)
        taken[i] = True
        cov = np.maximum(cov, kern[i])
    return picks


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding → cluster index [N]."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = sq_dist(x, np.stack(centres)).min(1)
        centres.append(x[rng.choice(len(x), p=d / d.sum())])
    c = np.stack(centres)
    for _ in range(iters):
        assign = sq_dist(x, c).argmin(1)
        new = np.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return sq_dist(x, c).argmin(1)


def typiclust_picks(emb: np.ndarray, lab: np.ndarray, k: int) -> list[int]:
    """TypiClust: k-means of pool + labeled into |L| + k clusters; from the largest clusters holding no
    labeled image, the most typical member (inverse mean distance to its 20 nearest in the cluster)."""
    allx = np.concatenate([lab, emb])
    assign = kmeans(allx, len(lab) + k)
    lab_clusters = set(assign[:len(lab)].tolist())
    pool_assign = assign[len(lab):]
    sizes = np.bincount(pool_assign, minlength=len(lab) + k)
    order = [c for c in np.argsort(-sizes, kind="stable") if c not in lab_clusters and sizes[c] > 0]
    order += [c for c in np.argsort(-sizes, kind="stable") if c in lab_clusters and sizes[c] > 0]
    picks = []
    for c in order[:k]:
        members = np.flatnonzero(pool_assign == c)
        d = np.sqrt(sq_dist(emb[members], emb[members]))
        nn = min(20, len(members) - 1)
        typ = 1.0 / (np.sort(d, 1)[:, 1:nn + 1].mean(1) + 1e-12) if nn > 0 else np.ones(1)
        picks.append(int(members[int(np.argmax(typ))]))
    return picks


def expected_iou_value(probs: np.ndarray) -> np.ndarray:
    """Class-aware labeling value float64 [N] ≥ 0 from probabilities float32 [N, C, H, W] (see ``eiou``)."""
    p = torch.from_numpy(probs)
    hard = p.argmax(1)                                                                   # [N, H, W]
    per_class = [(torch.where(hard == c, p[:, c], 0.0).sum((1, 2)), p[:, c].sum((1, 2)), (hard == c).sum((1, 2)))
                 for c in range(p.shape[1])]                                             # one class at a time: no [N, C, H, W] copies
    inter, soft, hsum = (torch.stack([x[i] for x in per_class], 1).double() for i in range(3))   # [N, C]
    union = soft + hsum - inter
    eiou = torch.where(union > 1e-6, inter / union.clamp_min(1e-12), torch.ones_like(union))
    pool = inter.sum(0) / (soft.sum(0) + hsum.sum(0) - inter.sum(0)).clamp_min(1e-12)  # [C]
    w = (1 - pool) / (1 - pool).sum().clamp_min(1e-12)
    present = (soft > 0.5) | (hsum > 0)
    return (((1 - eiou) * present) * w[None]).sum(1).numpy()


def ranked(variant: str, model, pool_img, labeled, remaining, s: OrderSettings) -> list[int]:
    seg = Segmenter(model, list(CLASSES))
    pred = seg.label(pool_img[remaining])
    cert = np.array([certainty(float(x), len(CLASSES)) for x in pred.score])
    emb = image_embeddings(model, pool_img[remaining])
    lab = image_embeddings(model, pool_img[labeled])
    if variant == "served":
        idx = [p.index for p in select_next(cert, emb, lab, s.step, s.weight)]
    elif variant == "cover":
        idx = cover_picks(emb, lab, cert, s.step, 1.0)
    elif variant == "typiclust":
        idx = typiclust_picks(emb, lab, s.step)
    elif variant == "eiou":
        value = expected_iou_value(pred.probs)      # the served greedy, with this value in place of 1 − certainty
        idx = [p.index for p in select_next(1 - value / max(float(value.max()), 1e-12), emb, lab, s.step, 0.5)]
    elif variant == "cover_unc":
        idx = cover_picks(emb, lab, cert, s.step, 0.5)
    else:
        raise SystemExit(f"unknown variant {variant}")
    return [int(remaining[i]) for i in idx]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=["cover", "cover_unc"])
    ap.add_argument("--draws", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max", type=int, default=12)
    ap.add_argument("--full", default="docs/measured/labeling_order_novelty.json")
    ap.add_argument("--cache", default="runs/labeling-order-experiment")
    ap.add_argument("--out", default="runs/labeling-order-experiment/experiment.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(2)
    s = OrderSettings()
    full = json.loads(Path(a.full).read_text())
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    test_img, test_lab = render_batch(s.n_test, seed=TEST_SEED + s.seed, size=s.size)
    pool_img, pool_lab = render_batch(s.pool, seed=POOL_SEED + s.seed, size=s.size)
    for draw in a.draws:
        row = full["draws"][draw]
        rng = np.random.default_rng([s.seed, draw])
        start = [int(i) for i in rng.choice(s.pool, s.start, replace=False)]
        assert start == row["start"], (start, row["start"])
        path = cache / f"first-{draw}.pt"
        if path.exists():
            first = Segmenter.load(path).model
        else:
            first = _fit(pool_img[start], pool_lab[start], s, seed=draw)
            Segmenter(first, list(CLASSES)).save(path)
        m0 = _miou(first, test_img, test_lab)
        print(f"draw {draw}: first {m0} (full bench {row['random']['4']})", file=sys.stderr, flush=True)
        for variant in a.variants:
            t0 = time.time()
            labeled, model, curve = list(start), first, {"4": m0}
            while len(labeled) < a.max:
                remaining = np.setdiff1d(np.arange(s.pool), labeled)
                labeled += ranked(variant, model, pool_img, labeled, remaining, s)
                model = _fit(pool_img[labeled], pool_lab[labeled], s, seed=draw)
                curve[str(len(labeled))] = _miou(model, test_img, test_lab)
                print(f"  {variant}: {len(labeled)} labels: {curve[str(len(labeled))]} "
                      f"(random {row['random'][str(len(labeled))]}, served {row['ranked'][str(len(labeled))]})",
                      file=sys.stderr, flush=True)
            rec = {"draw": draw, "variant": variant, "curve": curve, "labeled": labeled,
                   "random": row["random"], "served": row["ranked"], "target": row["target_miou"],
                   "seconds": round(time.time() - t0, 1)}
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
