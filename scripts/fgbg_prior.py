"""Does the zero-label foreground help once labels exist? The alpha map as a prior of the interpreter.

For 4 and 16 labeled default-domain images (the quality table's draws: ``render_batch(16, seed=2000,
start=16·draw)``), the interpreter is fitted through inversion as the product fits it, then labels the
test images (``render_batch(n, seed=1000)``, inverted) three ways:

- ``plain``: the interpreter alone (what /predict serves before the segmenter is ready);
- ``soft``:  its mean probabilities times the alpha prior — background × (1 − α), every part × α;
- ``hard``:  α > ½ decides foreground / background, the interpreter only which part.

Reports mIoU (%, the 10 classes, as the quality table) and foreground IoU per draw, and the mean
difference to ``plain``. Writes docs/measured/fgbg-prior.json.

    .venv/bin/python scripts/fgbg_prior.py [--fgbg fgbg.pt] [--n-test 500] [--draws 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model.domain import CLASSES, render_batch
from model.generator.default import load_fgbg_for
from model.metrics import iou_per_class
from model.pipeline import Pipeline


def _scores(labels: np.ndarray, truth: np.ndarray) -> dict:
    fg, gt = labels != 0, truth != 0
    return {"miou": round(100 * float(np.nanmean(iou_per_class(labels, truth, len(CLASSES)))), 2),
            "fg_iou": round(float((fg & gt).sum() / (fg | gt).sum()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fgbg", default=None, help="alpha-net (default: the shipped one)")
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", default="docs/measured/fgbg-prior.json")
    a = ap.parse_args()
    pipe = Pipeline.load()
    fgbg = load_fgbg_for(pipe.G, a.fgbg)
    if fgbg is None:
        raise SystemExit("no alpha-net for the shipped generator: run `dgan train-fgbg` first, or pass --fgbg")
    test_img, test_lab = render_batch(a.n_test, seed=1000, size=pipe.resolution)
    test_ws = pipe.invert(test_img)[0]
    alpha = pipe.foreground(fgbg, test_ws)
    rows: dict[str, list[dict]] = {}
    for n in (4, 16):
        for draw in range(a.draws):
            img, lab = render_batch(n, seed=2000, size=pipe.resolution, start=16 * draw)
            interp = pipe.fit(pipe.invert(img)[0], lab, list(CLASSES), seed=draw)
            pred = pipe.label(interp, test_ws)[1]
            soft = pred.probs.copy()
            soft[:, 0] *= 1 - alpha
            soft[:, 1:] *= alpha[:, None]
            hard = np.where(alpha > fgbg.cfg.threshold, pred.probs[:, 1:].argmax(1) + 1, 0).astype(np.uint8)
            row = {"draw": draw, "plain": _scores(pred.labels, test_lab),
                   "soft": _scores(soft.argmax(1).astype(np.uint8), test_lab), "hard": _scores(hard, test_lab)}
            rows.setdefault(str(n), []).append(row)
            print(n, json.dumps(row), flush=True)
    summary = {n: {way: round(float(np.mean([r[way]["miou"] - r["plain"]["miou"] for r in runs])), 2)
                   for way in ("soft", "hard")} for n, runs in rows.items()}
    out = {"what": "the alpha map as a prior of the interpreter, mIoU % / fg IoU on default-domain test images "
                   "through inversion; scripts/fgbg_prior.py", "n_test": a.n_test,
           "alpha_net": {"steps": fgbg.meta.get("steps"), "generator_id": fgbg.generator_id},
           "alpha_alone_fg_iou": _scores(fgbg.mask(alpha).astype(np.uint8), test_lab)["fg_iou"],
           "miou_diff_vs_plain_mean": summary, "runs": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
