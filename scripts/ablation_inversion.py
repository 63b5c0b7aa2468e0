"""What limits labels of real images through inversion: inversion steps, the perceptual loss, and the
interpreter's class weighting — each varied alone on the same images (shipped generator and encoder).

    .venv/bin/python scripts/ablation_inversion.py [--n-test 48] > docs/measured/inversion-ablation-rerun.json
"""

import argparse
import json
import time

import numpy as np
import torch

from model.domain import CLASSES, render_batch
from model.generator.default import load_discriminator_for
from model.interpreter import InterpreterConfig
from model.inversion import DiscriminatorFeatureLoss, images_to_tensor, invert
from model.labeling import fit_from_latents
from model.metrics import iou_per_class, mean_iou
from model.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-test", type=int, default=48)
    a = ap.parse_args()
    pipe, n_cls = Pipeline.load(), len(CLASSES)
    D = load_discriminator_for(pipe.G)
    lab_img, lab_mask = render_batch(16, seed=2000)
    test_img, test_mask = render_batch(a.n_test, seed=1000)

    def fit(ws16: torch.Tensor, weighting: str):   # Pipeline.fit has no class weighting to choose
        cfg = InterpreterConfig(in_dim=0, n_classes=n_cls, class_weighting=weighting)
        return fit_from_latents(pipe.G, ws16, lab_mask, list(CLASSES), cfg)

    def score(interp, ws: torch.Tensor) -> dict:
        pred = pipe.label(interp, ws)[1].labels
        return {"label_miou": round(100 * mean_iou(pred, test_mask, n_cls), 2),
                "iou_per_class": np.round(100 * iou_per_class(pred, test_mask, n_cls), 1).tolist()}

    ws16 = pipe.invert(lab_img, batch=len(lab_img))[0]
    interp = fit(ws16, "balanced")
    out: dict = {"n_test": a.n_test, "classes": list(CLASSES), "steps": {}, "loss_30_steps": {}, "class_weighting": {}}
    for steps in (0, 30, 100):
        t = time.time()
        ws, psnr = pipe.invert(test_img, steps, batch=len(test_img))
        out["steps"][str(steps)] = {"psnr_db": round(float(psnr.mean()), 2),
                                    "s_per_img": round((time.time() - t) / a.n_test, 3), **score(interp, ws)}
        if steps == 30:
            ws_test = ws
    if D is not None:   # Pipeline.invert has no perceptual loss: the feature-loss runs invert directly
        xt = images_to_tensor(test_img)
        for w in (0.02, 0.1):
            t = time.time()
            res = invert(pipe.G, xt, encoder=pipe.encoder, steps=30, feature_loss=DiscriminatorFeatureLoss(D, weight=w))
            out["loss_30_steps"][f"pixel + D features w={w}"] = {
                "psnr_db": round(float(res.psnr_db.mean()), 2), "s_per_img": round((time.time() - t) / a.n_test, 3),
                **score(interp, res.ws)}
    for weighting in ("natural", "balanced"):
        out["class_weighting"][weighting] = score(fit(ws16, weighting), ws_test)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
