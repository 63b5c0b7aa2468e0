"""How much can *any* pick rule gain at 8 labels? (issue 13): the spread of the 8-label mIoU over many
batches of 4 added to the same 4-label start, per class.

Same simulation as ``dgan bench labeling-order`` (same pool, test set, teacher, seed per draw). For one
draw, ``--batches K`` random batches of 4 pool images, and the bench run's random and served picks, are
each added to the draw's 4 start images and the teacher refitted. The best of these sets estimates what a
rule that picks well can reach at 8 labels; it is a sample, not a bound (billions of batches exist).
Per-class IoU is written beside each mIoU, with the start's and the draw's random-16 fit (the target).

    PYTHONPATH=. .venv/bin/python scripts/labeling_order_headroom.py --draw 0 --batches 8
    PYTHONPATH=. .venv/bin/python scripts/labeling_order_headroom.py --summary   # the table, per draw

The summary's ``needed_at_12``: for the interpolated labels-to-target to be ≤ 10, a rule whose 8-label fit
scores ``m8`` below the target needs a 12-label fit of at least ``2·target − m8`` (the crossing at
8 + 4·(target − m8) / (m12 − m8) ≤ 10); it is computed with the best 8-label set found, and None when that
set already reaches the target. ``oracle_per_class_8``: the mean over classes of each class's best IoU
among the 8-label sets, a set that no single choice of 4 images gives. Records of the same draw and
labeled images count once (a rerun appends them again).
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
from model.metrics import iou_per_class, per_class_percent
from model.segmenter import predict


def test_scores(model, test_img: np.ndarray, test_lab: np.ndarray) -> tuple[float, dict[str, float]]:
    """(test mIoU %, {class: IoU %}) of ``model`` on uint8 images [N, H, W, 3] with label maps [N, H, W]."""
    iou = iou_per_class(predict(model, test_img), test_lab, len(CLASSES))
    return round(100 * float(np.nanmean(iou)), 2), per_class_percent(iou, list(CLASSES))


def summary(path: str) -> list[dict]:
    """Per draw, from the records of ``path``: the 8-label sets' mIoU (mean, std, best), the target and
    what a rule would need at 12 labels (module docstring). A draw without its random-16 fit is skipped."""
    records, seen = [], set()
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            key = (rec["draw"], tuple(sorted(rec["labeled"])))
            if key not in seen:
                seen.add(key)
                records.append(rec)
    rows = []
    for draw in sorted({r["draw"] for r in records}):
        draw_recs = [r for r in records if r["draw"] == draw]
        sets8 = [r for r in draw_recs if r["labels"] == 8]
        target = next((r["miou"] for r in draw_recs if r["set"] == "random16"), None)
        if target is None or not sets8:
            print(f"draw {draw}: no random-16 fit or no 8-label set in {path}; skipped", file=sys.stderr)
            continue
        miou8 = np.array([r["miou"] for r in sets8])
        best = float(miou8.max())
        oracle = np.mean([max(r["per_class"][c] for r in sets8) for c in CLASSES])
        rows.append({"draw": draw, "sets_at_8": len(miou8), "mean_8": round(float(miou8.mean()), 2),
                     "std_8": round(float(miou8.std(ddof=1)), 2) if len(miou8) > 1 else None, "best_8": best,
                     "target_16_random": target, "gap_best_8": round(target - best, 2),
                     "needed_at_12": round(2 * target - best, 2) if best < target else None,
                     "oracle_per_class_8": round(float(oracle), 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--full", default="docs/measured/labeling_order_novelty.json",
                    help="the bench report whose draws give the start, random and served sets")
    ap.add_argument("--out", default="docs/measured/labeling-order-headroom.jsonl",
                    help="records are appended here; --summary reads them from here")
    ap.add_argument("--extra", nargs="*", default=[], metavar="NAME=I,J,…",
                    help="fit only these named pool index sets (e.g. a rule's picks from another run)")
    ap.add_argument("--summary", action="store_true", help="print the per-draw table of --out and stop")
    args = ap.parse_args()
    if args.summary:
        for row in summary(args.out):
            print(json.dumps(row))
        return
    torch.set_num_threads(2)
    s = OrderSettings()
    row = json.loads(Path(args.full).read_text())["draws"][args.draw]
    test_img, test_lab = render_batch(s.n_test, seed=TEST_SEED + s.seed, size=s.size)
    pool_img, pool_lab = render_batch(s.pool, seed=POOL_SEED + s.seed, size=s.size)
    start = list(row["start"])
    if args.extra:
        sets = {name: [int(i) for i in idx.split(",")] for name, idx in (e.split("=", 1) for e in args.extra)}
    else:
        sets = {"start": start, "random16": list(row["random_labeled"]), "served8": list(row["ranked_labeled"][:8]),
                "random8": list(row["random_labeled"][:8])}
        remaining = np.setdiff1d(np.arange(s.pool), start)
        for k in range(args.batches):
            rng = np.random.default_rng([s.seed, args.draw, 99, k])
            sets[f"batch{k}"] = start + [int(i) for i in rng.choice(remaining, s.step, replace=False)]
    for name, labeled in sets.items():
        t0 = time.time()
        model = _fit(pool_img[labeled], pool_lab[labeled], s, seed=args.draw)
        miou, classes = test_scores(model, test_img, test_lab)
        rec = {"draw": args.draw, "set": name, "labels": len(labeled), "labeled": labeled, "miou": miou,
               "per_class": classes, "seconds": round(time.time() - t0, 1)}
        print(json.dumps(rec), file=sys.stderr, flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
