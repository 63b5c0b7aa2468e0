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

With ``cache`` (``--cache DIR``) every fit is kept, keyed by everything it depends on (the settings, the
draw, the labeled pool indices in order, torch's version, thread count and device, and a digest of the
fitting code), and a later run reuses it:
an interrupted run resumes where it stopped, and a changed pick rule refits only the ranked curve (the
fits are seeded, so a cached fit is the fit that run would make; the report says how many were reused).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
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


def _code_digest() -> str:
    """A digest of the source a fit and its score depend on (the U-Net and its training, the renderer,
    the metric): an edited file makes every cached fit stale."""
    here = Path(__file__).resolve().parent
    files = [here / "segmenter.py", here / "metrics.py", *sorted((here / "domain").glob("*.py"))]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


class FitCache:
    """The simulation's fits and their test mIoU, kept in ``root`` (None: nothing kept) and keyed by what
    a fit depends on; :meth:`fit` returns (model, mIoU) and counts what it reused."""

    def __init__(self, root: str | Path | None, s: OrderSettings) -> None:
        import torch

        self.root = Path(root) if root else None
        self.base_key = {k: v for k, v in asdict(s).items() if k not in ("draws", "weight")}
        self.base_key.update(torch=torch.__version__, threads=torch.get_num_threads(),
                             device=os.environ.get("DGAN_DEVICE", "cpu"), code=_code_digest())
        self.reused = self.trained = 0
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def _key(self, draw: int, labeled: list[int]) -> str:
        raw = json.dumps({**self.base_key, "draw": draw, "labeled": labeled}, sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:24]

    def fit(self, draw: int, labeled: list[int], pool_img: np.ndarray, pool_lab: np.ndarray,
            test_img: np.ndarray, test_lab: np.ndarray, s: OrderSettings):
        key = self._key(draw, labeled)
        if self.root is not None:
            ckpt, rec = self.root / f"fit-{key}.pt", self.root / f"fit-{key}.json"
            if ckpt.exists() and rec.exists():
                try:
                    model = Segmenter.load(ckpt).model
                    miou = float(json.loads(rec.read_text())["miou"])
                    self.reused += 1
                    return model, miou
                except (OSError, ValueError, KeyError) as e:   # a torn or foreign file: fit again
                    print(f"cache entry {ckpt.name} unreadable ({e}); fitting again", file=sys.stderr)
        model = _fit(pool_img[labeled], pool_lab[labeled], s, seed=draw)
        miou = _miou(model, test_img, test_lab)
        self.trained += 1
        if self.root is not None:
            Segmenter(model, list(CLASSES)).save(ckpt)
            tmp = rec.with_suffix(".tmp")
            tmp.write_text(json.dumps({"miou": miou, "draw": draw, "labeled": labeled}))
            tmp.replace(rec)   # the record last and atomically: a fit counts as cached only once both are whole
        return model, miou


def _ranked_picks(model, pool_img: np.ndarray, labeled: list[int], remaining: np.ndarray,
                  s: OrderSettings) -> list[int]:
    """The next ``s.step`` pool indices by the labeling order on ``model`` (as /predict scores them)."""
    seg = Segmenter(model, list(CLASSES))
    pred = seg.label(pool_img[remaining])
    cert = np.array([certainty(float(x), len(CLASSES)) for x in pred.score])
    picks = select_next(cert, image_embeddings(model, pool_img[remaining]), image_embeddings(model, pool_img[labeled]),
                        s.step, s.weight)
    return [int(remaining[p.index]) for p in picks]


def baseline_rows(report: dict, s: OrderSettings) -> list[dict]:
    """The random-order rows of an earlier report, checked to be reusable for settings ``s``: the same
    settings (the pick rule's weight aside) and at least ``s.draws`` draws; raises ValueError otherwise."""
    theirs = {k: v for k, v in (report.get("settings") or {}).items() if k != "weight"}
    ours = {k: v for k, v in asdict(s).items() if k not in ("weight", "draws")}
    diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
    if diff:
        raise ValueError(f"the baseline report was run with other settings ({diff}: theirs, ours); "
                         "run without --baseline to refit the random order")
    rows = report.get("draws") or []
    if len(rows) < s.draws:
        raise ValueError(f"the baseline report has {len(rows)} draws, this run needs {s.draws}")
    counts = [str(n) for n in s.counts()]
    for i, row in enumerate(rows[:s.draws]):
        curve = row.get("random") if isinstance(row, dict) else None
        if not isinstance(curve, dict) or any(c not in curve for c in counts) or "random_labeled" not in row:
            raise ValueError(f"the baseline report's draw {i} lacks a random curve at {', '.join(counts)} labels "
                             "or its labeled images; it is not a dgan bench labeling-order report")
    return rows[:s.draws]


def run_labeling_order(s: OrderSettings, log: Callable[[str], None] = print, cache: str | Path | None = None,
                       baseline: dict | None = None) -> dict:
    """The simulation (module docstring) → the report dict; ``cache``: a folder keeping every fit;
    ``baseline``: an earlier report whose random curves are reused instead of refitted (they do not
    depend on the pick rule; each draw's shared first fit is refitted and must reproduce the report's
    4-label mIoU within 0.01, else ValueError)."""
    t0 = time.time()
    fits = FitCache(cache, s)
    reused = baseline_rows(baseline, s) if baseline is not None else None
    counts = s.counts()
    test_img, test_lab = render_batch(s.n_test, seed=TEST_SEED + s.seed, size=s.size)
    pool_img, pool_lab = render_batch(s.pool, seed=POOL_SEED + s.seed, size=s.size)
    draws = []
    for draw in range(s.draws):
        rng = np.random.default_rng([s.seed, draw])
        start = [int(i) for i in rng.choice(s.pool, s.start, replace=False)]
        first, m0 = fits.fit(draw, start, pool_img, pool_lab, test_img, test_lab, s)
        log(f"draw {draw + 1}/{s.draws}: {s.start} random labels: mIoU {m0:.2f}")
        row: dict = {"draw": draw, "start": start}
        if reused is not None:
            old = reused[draw]
            if old["start"] != start or abs(float(old["random"][str(s.start)]) - m0) > 0.01:
                raise ValueError(f"draw {draw}: the baseline's first fit ({old['start']}: {old['random'][str(s.start)]}) "
                                 f"is not reproduced here ({start}: {m0:.2f}); seeded fits repeat only on the same kind of CPU "
                                 "and torch build, so run without --baseline to refit the random order here")
            row["random"], row["random_labeled"] = dict(old["random"]), list(old["random_labeled"])
            log(f"  random: reused from the baseline report ({row['random']})")
        for order in ("random", "ranked") if reused is None else ("ranked",):
            pick_rng = np.random.default_rng([s.seed, draw, 1])
            labeled, model, curve = list(start), first, [m0]
            while len(labeled) < s.max_labels:
                remaining = np.setdiff1d(np.arange(s.pool), labeled)
                if order == "random":
                    add = [int(i) for i in pick_rng.choice(remaining, s.step, replace=False)]
                else:
                    add = _ranked_picks(model, pool_img, labeled, remaining, s)
                labeled += add
                model, miou = fits.fit(draw, labeled, pool_img, pool_lab, test_img, test_lab, s)
                curve.append(miou)
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
    return {**summarize(draws, s), "seconds": round(time.time() - t0, 1),
            "fits": {"trained": fits.trained, "reused_from_cache": fits.reused,
                     "cache": str(cache) if cache else None},
            "random_order": ("refitted in this run" if baseline is None else
                             "reused from a baseline report with the same settings (its first fit reproduced per "
                             "draw): " + str(baseline.get("_source", "given")))}


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
                         device: str | None = None, cache: str | None = None, baseline: str | None = None) -> dict:
    """``dgan bench labeling-order [--quick] [--draws N]``. ``generator`` is not used (the teacher U-Net
    learns from the labeled images alone); ``device``, when given, becomes ``DGAN_DEVICE`` for the fits."""
    from .bench import machine

    if device:
        os.environ["DGAN_DEVICE"] = str(device)
    s = OrderSettings.quick() if quick else OrderSettings()
    if draws:
        s.draws = draws
    old = None
    if baseline:
        try:
            old = {**json.loads(Path(baseline).read_text()), "_source": str(baseline)}
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the baseline report {baseline}: {e}") from e
    report = run_labeling_order(s, log=lambda m: print(m, file=sys.stderr, flush=True), cache=cache, baseline=old)
    return {**report, "quick": quick, "machine": machine()}
