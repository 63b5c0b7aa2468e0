"""How much can *any* pick rule gain at 8 labels? (issue 13): the spread of the 8-label mIoU over many
random batches of 4 added to the same 4-label start, per class.

Same simulation as ``dgan bench labeling-order`` (same pool, test set, teacher, seed per draw). For one
draw, ``--batches K`` random batches of 4 pool images are each added to the draw's 4 start images and the
teacher refitted; the best of K is an empirical upper bound on what choosing 4 images can do at 8 labels
(a rule that picks as well as the best of K random batches). Per-class IoU is written beside each mIoU,
with the start's and the draw's random-16 fit (the target) for reference.

    PYTHONPATH=. .venv/bin/python scripts/labeling_order_headroom.py --draw 0 --batches 8
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--full", default="docs/measured/labeling_order_novelty.json")
    ap.add_argument("--out", default="docs/measured/labeling-order-headroom.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(2)
    s = OrderSettings()
    full = json.loads(Path(a.full).read_text())
    row = full["draws"][a.draw]
    test_img, test_lab = render_batch(s.n_test, seed=TEST_SEED + s.seed, size=s.size)
    pool_img, pool_lab = render_batch(s.pool, seed=POOL_SEED + s.seed, size=s.size)
    start = list(row["start"])
    sets = {"start": start, "random16": list(row["random_labeled"]), "served8": list(row["ranked_labeled"][:8]),
            "random8": list(row["random_labeled"][:8])}
    remaining = np.setdiff1d(np.arange(s.pool), start)
    for k in range(a.batches):
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
