"""Label sources on the generator's features, through inversion, on the default domain: DatasetGAN's
interpreter (per-pixel MLP ensemble) vs SemanticGAN's label branch (per-block conv heads), with and
without the branch's adversarial (image, label) term. Per draw: fit on 16 labeled real images paired
with their inverted latents, label held-out real test images through their inverted latents; mIoU and
per-class IoU, fit seconds.

    .venv/bin/python scripts/label_sources.py [--draws 3] [--n-test 200] [--out docs/measured/label-sources.json]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from model.bench import print_json
from model.domain import CLASSES, render_batch
from model.label_branch import LabelBranchConfig
from model.metrics import iou_per_class
from model.pipeline import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    pipe = Pipeline.load()
    classes = list(CLASSES)
    test_img, test_lab = render_batch(a.n_test, seed=1000)
    test_ws = pipe.invert(test_img)[0]
    rows: dict[str, list[dict]] = {}

    def add(name: str, source, seconds: float) -> None:
        iou = 100 * iou_per_class(pipe.label(source, test_ws)[1].labels, test_lab, len(classes))
        rows.setdefault(name, []).append({"miou": float(np.nanmean(iou)), "per_class": iou.tolist(),
                                          "fit_s": round(seconds, 1)})
        print(f"  {name}: {np.nanmean(iou):.2f} ({seconds:.0f} s)", flush=True)

    for draw in range(a.draws):
        print(f"draw {draw + 1}/{a.draws}", flush=True)
        lab_img, lab_lab = render_batch(16, seed=2000, start=draw * 16)
        ws = pipe.invert(lab_img)[0]
        t = time.time()
        add("interpreter", pipe.fit(ws, lab_lab, classes, seed=draw), time.time() - t)
        for name, cfg in (("label_branch", LabelBranchConfig(n_classes=len(classes))),
                          ("label_branch_ce_only", LabelBranchConfig(n_classes=len(classes), adv_weight=0.0))):
            t = time.time()
            add(name, pipe.fit_label_branch(ws, lab_lab, classes, lab_img, cfg, seed=draw), time.time() - t)
    out = {"n_test": a.n_test, "draws": a.draws, "classes": classes, "methods": {}}
    for name, runs in rows.items():
        m = [r["miou"] for r in runs]
        pc = np.nanmean(np.array([r["per_class"] for r in runs]), axis=0)
        out["methods"][name] = {"miou_mean": round(float(np.mean(m)), 2), "miou_std": round(float(np.std(m)), 2),
                                "runs": [round(v, 2) for v in m],
                                "per_class": {c: round(float(v), 1) for c, v in zip(classes, pc)},
                                "fit_s_mean": round(float(np.mean([r["fit_s"] for r in runs])), 1)}
    print_json(out, a.out)


if __name__ == "__main__":
    main()
