"""Domain drift on the embedded domain: does SimGAN's refiner let a segmenter trained with zero shifted
labels pre-annotate shifted images? One draw, JSON lines to stdout and --out.

    .venv/bin/python scripts/refiner_experiment.py --steps 1500 --out /tmp/refiner.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from model.domain.render import CLASSES, render_batch
from model.metrics import confusion
from model.pipeline import Pipeline, SegmenterRecipe, per_class_iou
from model.refiner import RefinerConfig, train_refiner
from model.segmenter import Segmenter, pseudo_labels, train_segmenter


def score(seg: Segmenter, images: np.ndarray, labels: np.ndarray) -> dict:
    pc = per_class_iou(confusion(seg.label(images).labels, labels, len(CLASSES)), list(CLASSES))
    return {"miou": round(float(np.mean(list(pc.values()))), 2), "per_class": pc}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--self-reg", type=float, default=1.0)
    ap.add_argument("--n-real", type=int, default=2000)
    ap.add_argument("--draw", type=int, default=0)
    ap.add_argument("--out", default="/tmp/refiner.jsonl")
    ap.add_argument("--save", default="/tmp/refiner.pt")
    a = ap.parse_args()
    out = open(a.out, "a")

    def emit(rec: dict) -> None:
        print(json.dumps(rec), flush=True)
        out.write(json.dumps(rec) + "\n")
        out.flush()

    pipe = Pipeline.load()
    classes = list(CLASSES)
    r = SegmenterRecipe()
    real_shift, _ = render_batch(a.n_real, seed=7000, variant="shifted")
    test_img, test_lab = render_batch(100, seed=1000)
    sh_img, sh_lab = render_batch(100, seed=1000, variant="shifted")
    lab_img, lab_lab = render_batch(16, seed=2000, start=a.draw * 16)
    pool = pipe.sample_images(list(range(r.seed_offset, r.seed_offset + r.pool)))
    t = time.time()
    ref = train_refiner(pool, real_shift, RefinerConfig(steps=a.steps, self_reg=a.self_reg), seed=a.draw,
                        generator_id=pipe.generator_id, log=lambda m: print(m, flush=True))
    ref.save(a.save)
    t_ref = time.time() - t
    t = time.time()
    refined = ref.refine(pool)
    t_apply = time.time() - t
    np.savez_compressed("/tmp/refined_pool.npz", pool=pool[:64], refined=refined[:64], real=real_shift[:64])
    emit({"what": "refiner", "seconds": round(t_ref, 1), "refine_2000_s": round(t_apply, 2), **ref.meta})
    teacher = Segmenter(train_segmenter(lab_img, lab_lab, len(classes), steps=r.teacher_steps, seed=a.draw).model, classes)
    labels = pseudo_labels(teacher.label(pool).probs, r.min_confidence)
    emit({"what": "teacher", "default": score(teacher, test_img, test_lab)["miou"],
          "shifted": score(teacher, sh_img, sh_lab)["miou"]})
    for name, extra_i, extra_l in (("student_unrefined", pool, labels), ("student_refined", refined, labels),
                                   ("student_both", np.concatenate([pool, refined]), np.concatenate([labels, labels]))):
        st = Segmenter(train_segmenter(lab_img, lab_lab, len(classes), steps=r.student_steps, seed=a.draw,
                                       extra_images=extra_i, extra_labels=extra_l, extra_cutmix=True).model, classes)
        emit({"what": name, "default": score(st, test_img, test_lab), "shifted": score(st, sh_img, sh_lab),
              "steps": a.steps, "self_reg": a.self_reg})


if __name__ == "__main__":
    main()
