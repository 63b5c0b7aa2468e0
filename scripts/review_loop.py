"""One review round, measured: interpreter mIoU on real test images before and after 50 synthetic
tasks are "corrected" and added to the fit (exact latents, no inversion).

GAN samples have no ground truth, so the reviewer is simulated by the U-Net trained on 5,000 labeled
real images (runs/eval/unet5000.pt), the best labeler we have. Usage:
    .venv/bin/python scripts/review_loop.py [--n-test 200] [--n-review 50]
"""

import argparse
import json

import numpy as np
import torch

from model.domain import CLASSES, render_batch
from model.metrics import mean_iou
from model.pipeline import Pipeline
from model.segmenter import load_segmenter, predict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--n-review", type=int, default=50)
    ap.add_argument("--oracle", default="runs/eval/unet5000.pt")
    a = ap.parse_args()
    pipe = Pipeline.load()
    n_cls = len(CLASSES)
    lab_img, lab_mask = render_batch(16, seed=2000)
    test_img, test_mask = render_batch(a.n_test, seed=1000)
    ws16 = pipe.invert(lab_img)[0]
    ws_test = pipe.invert(test_img, batch=50)[0]
    before = pipe.fit(ws16, lab_mask, list(CLASSES))
    miou_before = 100 * mean_iou(pipe.label(before, ws_test)[1].labels, test_mask, n_cls)
    # Reviewers see the least certain first: take the 50 least certain of 500 pushed samples.
    samples = pipe.synthesize(list(range(500)), before)
    worst = sorted(samples, key=lambda s: -s.uncertainty)[: a.n_review]
    oracle = load_segmenter(a.oracle)
    corrected = predict(oracle, np.stack([s.image for s in worst]))
    agreement = 100 * mean_iou(np.stack([s.labels for s in worst]), corrected, n_cls)
    ws_rev = torch.stack([torch.from_numpy(s.ws) for s in worst])
    after = pipe.fit(torch.cat([ws16, ws_rev]), np.concatenate([lab_mask, corrected]), list(CLASSES))
    miou_after = 100 * mean_iou(pipe.label(after, ws_test)[1].labels, test_mask, n_cls)
    print(json.dumps({"n_test": a.n_test, "n_review": a.n_review, "miou_before": round(miou_before, 2),
                      "miou_after": round(miou_after, 2), "prediction_vs_correction_miou": round(agreement, 2)}))


if __name__ == "__main__":
    main()
