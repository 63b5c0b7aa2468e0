"""Domain drift on the embedded domain, the quality table's drifted-project rows draw by draw, for trying
a change to the refiner or to the drifted project's student before the 3-draw table.

It trains the table's refiner (``model.quality_table.table_refiner``: the table's pool, 5,000 unlabeled
shifted images, the recipe's steps and self-regularization) unless ``--refiner`` gives one, then for each
draw the few-shot teacher and the served student exactly as ``dgan bench quality`` does, and scores both
domains on the table's 500 test images. It also reports the colour of each part in the refined pool
against the same part in the project's shifted images (mean RGB inside the part: the refiner's job made
visible). JSON lines to stdout and ``--out``.

    .venv/bin/python scripts/refiner_experiment.py --out runs/refiner-exp.jsonl
    .venv/bin/python scripts/refiner_experiment.py --refiner runs/refiner.pt --real-fraction 0.25
    .venv/bin/python scripts/refiner_experiment.py --part-colours --draws 0 1 2 --student-steps 2 \
        --save runs/refiner-exp/refiner.pt   # refiner-parts-{draw}.pt there are reused (e.g. a table's refiner-draw{draw}.pt)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from model.domain.render import CLASSES, render_batch
from model.metrics import confusion
from model.pipeline import Pipeline, per_class_iou
from model.quality_table import REFINER_POOL_SEED, QualitySettings, table_refiner
from model.refiner import Refiner
from model.segmenter import Segmenter, train_segmenter


def score(seg: Segmenter, images: np.ndarray, labels: np.ndarray) -> dict:
    pc = per_class_iou(confusion(seg.label(images).labels, labels, len(CLASSES)), list(CLASSES))
    return {"miou": round(float(np.mean(list(pc.values()))), 2), "per_class": pc}


def part_colours(images: np.ndarray, labels: np.ndarray) -> dict[str, list[int]]:
    """uint8 [N, R, R, 3], uint8 [N, R, R] → {class: mean RGB inside it}."""
    return {c: images[labels == k].mean(0).round().astype(int).tolist()
            for k, c in enumerate(CLASSES) if (labels == k).any()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, nargs="+", default=[0], help="the table's draws to run (0, 1, 2)")
    ap.add_argument("--refiner", help="a trained refiner (.pt) instead of training the table's")
    ap.add_argument("--save", default="runs/refiner-exp/refiner.pt", help="where the trained refiner goes")
    ap.add_argument("--real-fraction", type=float, help="the student's share of real images per batch")
    ap.add_argument("--student-steps", type=float,
                    help="the student's steps as a multiple of the recipe's (e.g. 2: as many default-look pool "
                         "images per step as without the refined copy)")
    ap.add_argument("--part-colours", action="store_true",
                    help="a refiner with part colour maps, trained per draw with the draw's teacher reading the parts")
    ap.add_argument("--out", default="runs/refiner-exp/results.jsonl")
    a = ap.parse_args()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    out = open(a.out, "a")

    def emit(rec: dict) -> None:
        print(json.dumps(rec), flush=True)
        out.write(json.dumps(rec) + "\n")
        out.flush()

    pipe = Pipeline.load()
    s = QualitySettings()
    classes, res = list(CLASSES), pipe.resolution
    t = time.time()
    if a.refiner:
        refiner = Refiner.load(a.refiner, pipe.generator_id)
    elif a.part_colours:
        refiner = None           # trained per draw below
    else:
        Path(a.save).parent.mkdir(parents=True, exist_ok=True)
        refiner = table_refiner(pipe, s, Path(a.save).with_suffix(".state"), log=lambda m: print(m, flush=True))
        refiner.save(a.save)
    if refiner is not None:
        emit({"what": "refiner", "seconds": round(time.time() - t, 1), **refiner.meta})

    pool = pipe.sample_images(list(range(REFINER_POOL_SEED, REFINER_POOL_SEED + 256)))
    test_img, test_lab = render_batch(s.n_test, seed=1000 + s.seed, size=res)
    sh_img, sh_lab = render_batch(s.n_test, seed=1000 + s.seed, size=res, variant="shifted")
    # the project's 500 task images the table's served segmenter reads (their masks only for part_colours)
    unlabeled, unlabeled_lab = render_batch(500, seed=7000 + s.seed, size=res, variant="shifted")
    recipe = s.recipe() if a.real_fraction is None else replace(s.recipe(), real_fraction=a.real_fraction)
    if a.student_steps:
        recipe = replace(recipe, student_steps=round(recipe.student_steps * a.student_steps))
    for draw in a.draws:
        lab_img, lab_lab = render_batch(s.n_labeled, seed=2000 + s.seed, size=res, start=draw * s.n_labeled)
        few = train_segmenter(lab_img, lab_lab, len(classes), steps=s.unet_steps, seed=draw).model
        teacher = Segmenter(few, classes, pipe.generator_id)
        if a.part_colours:
            t = time.time()
            save = Path(a.save).with_name(f"refiner-parts-{draw}.pt")
            refiner = table_refiner(pipe, s, save.with_suffix(".state"), log=lambda m: print(m, flush=True), parts=few)
            refiner.save(save)
            emit({"what": "refiner", "draw": draw, "seconds": round(time.time() - t, 1), **refiner.meta})
        if draw == a.draws[0] or a.part_colours:
            pool_lab = teacher.label(pool).labels
            emit({"what": "part_colours", "pool": part_colours(pool, pool_lab),
                  "refined": part_colours(refiner.refine(pool), pool_lab), "project": part_colours(unlabeled[:256], unlabeled_lab[:256])})
        t = time.time()
        served = pipe.train_segmenter(lab_img, lab_lab, classes, recipe, seed=draw, refiner=refiner,
                                      unlabeled=unlabeled, teacher=teacher, log=lambda m: print(m, flush=True))
        emit({"what": "served_pre_annotator_refined", "draw": draw, "real_fraction": recipe.real_fraction,
              "student_steps": recipe.student_steps,
              "refiner": a.refiner or a.save, "seconds": round(time.time() - t, 1),
              "default": score(served, test_img, test_lab), "shifted": score(served, sh_img, sh_lab)})


if __name__ == "__main__":
    main()
