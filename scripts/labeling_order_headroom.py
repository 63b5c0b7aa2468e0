"""How much can *any* pick rule gain at 8 labels? (issue 13): the spread of the 8-label mIoU over many
random batches of 4 added to the same 4-label start, per class.

Same simulation as ``dgan bench labeling-order`` (same pool, test set, teacher, seed per draw). For one
draw, ``--batches K`` random batches of 4 pool images are each added to the draw's 4 start images and the
teacher refitted; the best of K is an empirical upper bound on what choosing 4 images can do at 8 labels
(a rule that picks as well as the best of K random batches). Per-class IoU is written beside each mIoU,
with the start's and the draw's random-16 fit (the target) for reference.

    PYTHONPATH=. .venv/bin/python scripts/labeling_order_headroom.py --draw 0 --batches 8
    PYTHONPATH=. .venv/bin/python scripts/labeling_order_headroom.py --summary   # the table, per draw

The summary's ``needed_at_12``: for the interpolated labels-to-target to be ≤ 10, a rule whose 8-label fit
scores ``m8`` needs a 12-label fit of at least ``2·target − m8`` (the crossing at 8 + 4·(target − m8) /
(m12 − m8) ≤ 10); it is computed with the best 8-label set found. ``oracle_per_class``: the mean over
classes of each class's best IoU among the 8-label sets, a set that no single choice of 4 images gives.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model.bench_labeling_order import POOL_SEED, TEST_SEED, OrderSettings, _fit
from model.domain import CLASSES, render_batch
from model.metrics import iou_per_class
from model.segmenter import predict


def per_class(model, test_img: np.ndarray, test_lab: np.ndarray) -> tuple[float, dict[str, float]]:
    iou = iou_per_class(predict(model, test_img), test_lab, len(CLASSES))
    return round(100 * float(np.nanmean(iou)), 2), {c: round(100 * float(v), 1) for c, v in zip(CLASSES, iou)}


def summary(path: str) -> list[dict]:
    """Per draw, from the records of ``path``: the 8-label sets' mIoU (mean, std, best), the target and
    what a rule would need at 12 labels (module docstring)."""
    recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for draw in sorted({r["draw"] for r in recs}):
        mine = [r for r in recs if r["draw"] == draw]
        eight = [r for r in mine if r["labels"] == 8]
        target = next(r["miou"] for r in mine if r["set"] == "random16")
        m = np.array([r["miou"] for r in eight])
        oracle = np.mean([max(r["per_class"][c] for r in eight) for c in CLASSES])
        rows.append({"draw": draw, "sets_at_8": len(m), "mean_8": round(float(m.mean()), 2),
                     "std_8": round(float(m.std(ddof=1)), 2), "best_8": float(m.max()), "target_16_random": target,
                     "gap_best_8": round(target - float(m.max()), 2),
                     "needed_at_12": round(2 * target - float(m.max()), 2),
                     "oracle_per_class_8": round(float(oracle), 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--full", default="docs/measured/labeling_order_novelty.json")
    ap.add_argument("--out", default="docs/measured/labeling-order-headroom.jsonl")
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=I,J,…",
                    help="fit only these named pool index sets (e.g. a rule's picks from another run)")
    ap.add_argument("--summary", action="store_true", help="print the per-draw table of --out and stop")
    a = ap.parse_args()
    if a.summary:
        for row in summary(a.out):
            print(json.dumps(row))
        return
    torch.set_num_threads(2)
    s = OrderSettings()
    full = json.loads(Path(a.full).read_text())
    row = full["draws"][a.draw]
    test_img, test_lab = render_batch(s.n_test, seed=TEST_SEED + s.seed, size=s.size)
    pool_img, pool_lab = render_batch(s.pool, seed=POOL_SEED + s.seed, size=s.size)
    start = list(row["start"])
    sets = {"start": start, "random16": list(row["random_labeled"]), "served8": list(row["ranked_labeled"][:8]),
            "random8": list(row["random_labeled"][:8])}
    if a.extra:
        sets = {name: [int(i) for i in idx.split(",")] for name, idx in (e.split("=", 1) for e in a.extra)}
    remaining = np.setdiff1d(np.arange(s.pool), start)
    for k in range(a.batches if not a.extra else 0):
        rng = np.random.default_rng([s.seed, a.draw, 99, k])
        sets[f"batch{k}"] = start + [int(i) for i in rng.choice(remaining, s.step, replace=False)]
    for name, labeled in sets.items():
        t0 = time.time()
        model = _fit(pool_img[labeled], pool_lab[labeled], s, seed=a.draw)
        miou, classes = per_class(model, test_img, test_lab)
        rec = {"draw": a.draw, "set": name, "labels": len(labeled), "labeled": labeled, "miou": miou,
               "per_class": classes, "seconds": round(time.time() - t0, 1)}
        print(json.dumps(rec), file=sys.stderr, flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
