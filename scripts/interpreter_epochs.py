"""How long the interpreter must train: mIoU of real test images labeled through their inverted latents
for several training lengths (16 labeled real images, shipped generator and encoder), with fit times.

    .venv/bin/python scripts/interpreter_epochs.py [--n-test 100] > docs/measured/interpreter-epochs.json
"""

import argparse
import json
import time

from model.domain import CLASSES, render_batch
from model.interpreter import InterpreterConfig
from model.labeling import fit_from_latents
from model.metrics import mean_iou
from model.pipeline import Pipeline

SETTINGS = [  # (epochs, batch, lr)
    (4, 2048, 1e-3), (8, 2048, 1e-3), (8, 2048, 3e-3), (12, 2048, 1e-3), (12, 1024, 1e-3), (20, 2048, 1e-3),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-test", type=int, default=100)
    a = ap.parse_args()
    pipe, n_cls = Pipeline.load(inversion_steps=30), len(CLASSES)
    lab_img, lab_mask = render_batch(16, seed=2000)
    test_img, test_mask = render_batch(a.n_test, seed=1000)
    ws = pipe.invert(lab_img, batch=len(lab_img))[0]
    test_ws = pipe.invert(test_img, batch=len(test_img))[0]
    rows = []
    for epochs, batch, lr in SETTINGS:
        cfg = InterpreterConfig(in_dim=0, n_classes=n_cls, epochs=epochs, batch=batch, lr=lr)
        t = time.time()
        interp = fit_from_latents(pipe.G, ws, lab_mask, list(CLASSES), cfg)   # Pipeline.fit: no batch, lr
        fit_s = time.time() - t
        rows.append({"epochs": epochs, "batch": batch, "lr": lr, "steps": interp.report.steps,
                     "pixel_sample": interp.report.pixels, "fit_s": round(fit_s, 1),
                     "final_loss": round(interp.report.final_loss, 3),
                     "train_miou": round(100 * mean_iou(pipe.label(interp, ws)[1].labels, lab_mask, n_cls), 1),
                     "test_miou": round(100 * mean_iou(pipe.label(interp, test_ws)[1].labels, test_mask, n_cls), 1)})
        print(json.dumps(rows[-1]), flush=True, file=__import__("sys").stderr)
    print(json.dumps({"n_labeled": 16, "n_test": a.n_test, "inversion_steps": 30, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
