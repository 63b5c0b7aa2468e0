"""``dgan bench labeling-order``: how many labels the ranked labeling order saves, with exact masks.

A simulation on the embedded domain, whose images come with exact label maps (people stand-in):

- test set: the quality table's (:mod:`model.quality_table`: ``render_batch(n_test, seed=1000)``);
- candidate pool: ``render_batch(pool, seed=4000)``, disjoint from it and from the table's labeled
  (2000), ceiling (3000) and refiner (7000) seeds;
- per draw, 4 random pool images start both orders; then 4 at a time are added up to 16 by
  (a) the ranked order — :func:`model.labeling_order.select_next` on the current model: its certainty
  and its novelty in the model's own embedding, exactly what ``/predict`` serves once the segmenter is
  ready and what ``dgan next`` hands out (greedy: each pick counts as labeled for the next) — and
  (b) random picks; the model is refitted after every step;
- the model refitted is the product's cheapest honest one: the few-shot teacher U-Net of
  :class:`model.pipeline.SegmenterRecipe` (:func:`model.segmenter.train_segmenter` with the recipe's
  ``teacher_steps``, batch, width and learning rate; the served student adds a synthesized pool on top,
  minutes more per fit). Every fit of a draw uses the same training seed, so the orders differ only in
  the images they chose.

Reported per draw and as the mean over draws: test mIoU (%) at each label count for both orders; the
target = the mIoU 16 random labels reach; labels needed to reach it, by linear interpolation between
the measured counts (the first crossing; None when a curve never reaches it). The headline
``labels_to_target_ranked`` / ``labels_to_target_random`` are read off the draw-mean curves against the
draw-mean target (random can cross it before 16 when its curve is not monotone); the per-draw figures
are beside them; ``saving`` = 1 − ``labels_to_target_ranked`` / 16.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .domain import CLASSES, render_batch
from .labeling_order import DEFAULT_NOVELTY_WEIGHT, image_embeddings, select_next
from .metrics import iou_per_class
from .pipeline import SegmenterRecipe, certainty
from .segmenter import Segmenter, predict, train_segmenter

TEST_SEED = 1000     # the quality table's test set (model/quality_table.py)
POOL_SEED = 4000     # candidates: used by no other bench or table


@dataclass
class OrderSettings:
    start: int = 4                 # random labels both orders start from
    step: int = 4                  # labels added between two fits
    max_labels: int = 16           # the target is what this many random labels reach
    draws: int = 3
    pool: int = 1000               # candidate images
    n_test: int = 500
    steps: int = SegmenterRecipe.teacher_steps
    batch: int = SegmenterRecipe.batch
    base: int = SegmenterRecipe.base
    lr: float = SegmenterRecipe.lr
    weight: float = DEFAULT_NOVELTY_WEIGHT
    size: int = 64
    seed: int = 0

    @classmethod
    def quick(cls) -> "OrderSettings":
        """Minutes on 2 busy cores: 2 draws, a narrower teacher trained for fewer steps, smaller sets."""
        return cls(draws=2, pool=200, n_test=100, steps=150, batch=8, base=8)

    def counts(self) -> list[int]:
        return list(range(self.start, self.max_labels + 1, self.step))


def labels_to_target(counts: list[int], curve: list[float], target: float) -> float | None:
    """The first label count at which ``curve`` (mIoU per count) reaches ``target``, interpolated linearly
    between measured counts; None when it never does."""
    for i, (n, m) in enumerate(zip(counts, curve)):
        if m >= target:
            if i == 0:
                return float(n)
            n0, m0 = counts[i - 1], curve[i - 1]
            return round(n0 + (target - m0) / (m - m0) * (n - n0), 2)
    return None


def _fit(images: np.ndarray, labels: np.ndarray, s: OrderSettings, seed: int):
    return train_segmenter(images, labels, len(CLASSES), steps=s.steps, batch=s.batch, base=s.base, lr=s.lr,
                           seed=seed).model


def _miou(model, test_img: np.ndarray, test_lab: np.ndarray) -> float:
    return round(100 * float(np.nanmean(iou_per_class(predict(model, test_img), test_lab, len(CLASSES)))), 2)


def _ranked_picks(model, pool_img: np.ndarray, labeled: list[int], remaining: np.ndarray,
                  s: OrderSettings) -> list[int]:
    """The next ``s.step`` pool indices by the labeling order on ``model`` (as /predict scores them)."""
    seg = Segmenter(model, list(CLASSES))
    pred = seg.label(pool_img[remaining])
    cert = np.array([certainty(float(x), len(CLASSES)) for x in pred.score])
    picks = select_next(cert, image_embeddings(model, pool_img[remaining]), image_embeddings(model, pool_img[labeled]),
                        s.step, s.weight)
    return [int(remaining[p.index]) for p in picks]


def run_labeling_order(s: OrderSettings, log: Callable[[str], None] = print) -> dict:
    """The simulation (module docstring) → the report dict."""
    t0 = time.time()
    counts = s.counts()
    test_img, test_lab = render_batch(s.n_test, seed=TEST_SEED + s.seed, size=s.size)
    pool_img, pool_lab = render_batch(s.pool, seed=POOL_SEED + s.seed, size=s.size)
    draws = []
    for draw in range(s.draws):
        rng = np.random.default_rng([s.seed, draw])
        start = [int(i) for i in rng.choice(s.pool, s.start, replace=False)]
        first = _fit(pool_img[start], pool_lab[start], s, seed=draw)
        m0 = _miou(first, test_img, test_lab)
        log(f"draw {draw + 1}/{s.draws}: {s.start} random labels: mIoU {m0:.2f}")
        row: dict = {"draw": draw, "start": start}
        for order in ("random", "ranked"):
            pick_rng = np.random.default_rng([s.seed, draw, 1])
            labeled, model, curve = list(start), first, [m0]
            while len(labeled) < s.max_labels:
                remaining = np.setdiff1d(np.arange(s.pool), labeled)
                if order == "random":
                    add = [int(i) for i in pick_rng.choice(remaining, s.step, replace=False)]
                else:
                    add = _ranked_picks(model, pool_img, labeled, remaining, s)
                labeled += add
                model = _fit(pool_img[labeled], pool_lab[labeled], s, seed=draw)
                curve.append(_miou(model, test_img, test_lab))
                log(f"  {order}: {len(labeled)} labels: mIoU {curve[-1]:.2f}")
            row[order] = dict(zip(map(str, counts), curve))
            row[f"{order}_labeled"] = labeled
        target = row["random"][str(s.max_labels)]
        row["target_miou"] = target
        for order in ("ranked", "random"):
            row[f"labels_to_target_{order}"] = labels_to_target(counts, list(row[order].values()), target)
        log(f"  target {target:.2f}: ranked {row['labels_to_target_ranked']} labels, "
            f"random {row['labels_to_target_random']}")
        draws.append(row)
    return {**summarize(draws, s), "seconds": round(time.time() - t0, 1)}


def summarize(draws: list[dict], s: OrderSettings) -> dict:
    """The report from the per-draw rows of :func:`run_labeling_order` (curves ``{"4": mIoU, …}`` per
    order): draw-mean curves, target, labels to target, and ``saving`` = 1 − ranked labels / ``max_labels``
    (the target being what ``max_labels`` random labels reach)."""
    counts = s.counts()
    mean = {order: [round(float(np.mean([d[order][str(n)] for d in draws])), 2) for n in counts]
            for order in ("ranked", "random")}
    target = mean["random"][-1]
    ranked, rand = (labels_to_target(counts, mean[o], target) for o in ("ranked", "random"))
    return {
        "labels_to_target_ranked": ranked,
        "labels_to_target_random": rand,
        "saving": None if ranked is None else round(1 - ranked / s.max_labels, 3),
        "target_miou": target,
        "label_counts": counts,
        "ranked_miou_mean": dict(zip(map(str, counts), mean["ranked"])),
        "random_miou_mean": dict(zip(map(str, counts), mean["random"])),
        "per_draw": {"labels_to_target_ranked": [d["labels_to_target_ranked"] for d in draws],
                     "labels_to_target_random": [d["labels_to_target_random"] for d in draws],
                     "target_miou": [d["target_miou"] for d in draws]},
        "draws": draws,
        "settings": asdict(s),
        "model": (f"few-shot teacher U-Net of SegmenterRecipe (model.segmenter.train_segmenter: {s.steps} steps, "
                  f"batch {s.batch}, base {s.base}, lr {s.lr}), refitted after every step; same seed within a draw"),
        "order": (f"ranked: model.labeling_order.select_next on the current model (certainty of its top-10 % pixel "
                  f"entropy; novelty in its UNet.embed features; weight {s.weight}), greedy; random: uniform picks"),
        "labels_to_target_rule": "first crossing, linear interpolation between measured label counts; "
                                 "headline from the draw-mean curves against the draw-mean target; "
                                 f"saving = 1 - labels_to_target_ranked / {s.max_labels}",
        "test_set": f"render_batch({s.n_test}, seed={TEST_SEED + s.seed}) (the quality table's)",
        "pool": f"render_batch({s.pool}, seed={POOL_SEED + s.seed})",
    }


def bench_labeling_order(generator: str | None = None, quick: bool = False, draws: int | None = None,
                         device: str | None = None) -> dict:
    """``dgan bench labeling-order [--quick] [--draws N]``. ``generator`` is not used (the teacher U-Net
    learns from the labeled images alone); ``device``, when given, becomes ``DGAN_DEVICE`` for the fits."""
    from .bench import machine

    if device:
        os.environ["DGAN_DEVICE"] = str(device)
    s = OrderSettings.quick() if quick else OrderSettings()
    if draws:
        s.draws = draws
    report = run_labeling_order(s, log=lambda m: print(m, file=sys.stderr, flush=True))
    return {**report, "quick": quick, "machine": machine()}
