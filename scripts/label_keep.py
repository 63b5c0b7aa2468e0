"""Does the SimGAN refiner keep the labels of the images it refines? (issue 12)

Two checks, each on 1,000 generator samples (seeds apart from every other set), labels compared pixel by
pixel (agreement %) and as mIoU of one label map against the other:

A. Default domain, the issue's check: a refiner trained towards unlabeled *default-domain* images (5,000),
   and the ceiling U-Net (5,000 exact default labels, the quality table's ceiling recipe) labelling each
   sample before and after refinement. Target: ≥ 95 % agreement.
B. Shifted domain, the refiner the quality table trained (``docs/measured/quality-shifted/refiner.pt``):
   a refined sample is a shifted-domain image, so it is read by a U-Net trained on 5,000 exact *shifted*
   labels, the unrefined sample by the default ceiling. Their own errors bound that agreement: each
   ceiling's pixel accuracy against exact labels on 500 test images of its domain is reported beside it.

Trained models are cached in runs/label-keep/ (a stopped run resumes); writes docs/measured/label-keep.json.

    .venv/bin/python scripts/label_keep.py [--shifted-refiner docs/measured/quality-shifted/refiner.pt]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model.domain import CLASSES, render_batch
from model.metrics import iou_per_class
from model.pipeline import Pipeline, SegmenterRecipe
from model.quality_table import QualitySettings
from model.refiner import Refiner, RefinerConfig, train_refiner
from model.segmenter import load_segmenter, predict, save_segmenter, train_segmenter

CACHE = Path("runs/label-keep")
SAMPLE_SEED = 90_000_000          # the samples compared (apart from pools, pushes and tests)
REFINER_POOL_SEED = 91_000_000    # the default-domain refiner's training pool


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Pixel agreement (%) and mIoU (%) of label map set ``a`` against ``b`` (uint8 [N, H, W])."""
    ious = iou_per_class(a, b, len(CLASSES))
    return {"pixel_agreement": round(100 * float((a == b).mean()), 2),
            "miou": round(100 * float(np.nanmean(ious)), 2),
            "per_class_iou": {c: round(100 * float(v), 1) for c, v in zip(CLASSES, ious)}}


def ceiling(variant: str, res: int, log) -> object:
    """The quality table's ceiling recipe (5,000 exact labels, its step count) on ``variant`` images."""
    path = CACHE / f"ceiling-{variant}.pt"
    if path.exists():
        return load_segmenter(path)
    s = QualitySettings()
    log(f"training the {variant} ceiling U-Net on {s.n_ceiling} exact labels ({s.ceiling_steps} steps) ...")
    img, lab = render_batch(s.n_ceiling, seed=3000 + s.seed, size=res, variant=variant)
    t = time.time()
    model = train_segmenter(img, lab, len(CLASSES), steps=s.ceiling_steps).model
    log(f"  {time.time() - t:.0f} s")
    save_segmenter(model, path, {"classes": list(CLASSES), "variant": variant})
    return model


def default_refiner(pipe: Pipeline, log) -> Refiner:
    """A refiner trained, with the product's settings, towards unlabeled default-domain images."""
    path = CACHE / "refiner-default.pt"
    if path.exists():
        return Refiner.load(path, pipe.generator_id)
    recipe = SegmenterRecipe()
    real, _ = render_batch(5000, seed=7000, size=pipe.resolution)
    pool = pipe.sample_images(list(range(REFINER_POOL_SEED, REFINER_POOL_SEED + recipe.pool)))
    log("training a refiner towards default-domain images ...")
    refiner = train_refiner(pool, real, RefinerConfig(steps=recipe.refiner_steps, self_reg=recipe.refiner_self_reg),
                            generator_id=pipe.generator_id, state_path=CACHE / "refiner-default.state", log=log)
    refiner.save(path)
    return refiner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shifted-refiner", default="docs/measured/quality-shifted/refiner.pt")
    ap.add_argument("--n", type=int, default=1000, help="generator samples compared")
    ap.add_argument("--out", default="docs/measured/label-keep.json")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)    # noqa: E731
    pipe = Pipeline.load()
    samples = pipe.sample_images(list(range(SAMPLE_SEED, SAMPLE_SEED + args.n)))
    out: dict = {"what": __doc__.split("\n\n")[0], "n_samples": args.n, "target_pixel_agreement": 95.0}

    def save() -> None:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")

    ceil_default = ceiling("default", pipe.resolution, log)
    plain = predict(ceil_default, samples)
    ref_default = default_refiner(pipe, log)
    out["A_default_refiner"] = {"refiner": ref_default.meta,
                                **agreement(predict(ceil_default, ref_default.refine(samples)), plain)}
    log(f"A: {out['A_default_refiner']}")
    save()

    if Path(args.shifted_refiner).exists():
        ref_shifted = Refiner.load(args.shifted_refiner, pipe.generator_id)
        ceil_shifted = ceiling("shifted", pipe.resolution, log)
        through = agreement(predict(ceil_shifted, ref_shifted.refine(samples)), plain)
        own = {}
        for variant, model in (("default", ceil_default), ("shifted", ceil_shifted)):
            img, lab = render_batch(500, seed=8000, size=pipe.resolution, variant=variant)
            own[variant] = agreement(predict(model, img), lab)
        out["B_shifted_refiner"] = {"refiner": ref_shifted.meta, "through_refiner": through,
                                    "ceilings_vs_exact_labels_500_test": own}
        log(f"B: through the refiner {through['pixel_agreement']} %; each ceiling against exact labels: "
            f"default {own['default']['pixel_agreement']} %, shifted {own['shifted']['pixel_agreement']} %")
    else:
        out["B_shifted_refiner"] = f"skipped: no shifted refiner at {args.shifted_refiner}"
    save()


if __name__ == "__main__":
    main()
