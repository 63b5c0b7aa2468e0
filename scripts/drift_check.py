"""Does the drift figure separate a project of the generator's domain from a drifted one?

Drift (model/drift.py) of 100 and 500 rendered images, default and shifted variant, against 2,000
generator samples, in the features of the segmenter recipe's teacher U-Net trained on draw 0's 16
labeled images. Writes docs/measured/drift.json.

    .venv/bin/python scripts/drift_check.py
"""

from __future__ import annotations

import json

from model.domain.render import CLASSES, render_batch
from model.drift import DRIFT_THRESHOLD, measure_drift
from model.pipeline import Pipeline, SegmenterRecipe
from model.segmenter import train_segmenter


def main() -> None:
    pipe = Pipeline.load()
    r = SegmenterRecipe()
    pool = pipe.sample_images(list(range(r.seed_offset, r.seed_offset + r.pool)))
    lab_img, lab_lab = render_batch(16, seed=2000)
    teacher = train_segmenter(lab_img, lab_lab, len(CLASSES), steps=r.teacher_steps, seed=0).model
    rows = {}
    for n in (100, 500):
        for variant in ("default", "shifted"):
            imgs, _ = render_batch(n, seed=7000, variant=variant)
            rows[f"draw0_{variant}_{n}"] = measure_drift(teacher, imgs, pool).to_dict()
            print(variant, n, rows[f"draw0_{variant}_{n}"], flush=True)
    out = {"what": "drift of 100 / 500 rendered images against 2,000 generator samples, teacher U-Net features "
                   "(800 steps, draw 0's 16 labeled images); scripts/drift_check.py",
           "threshold": DRIFT_THRESHOLD, "results": rows}
    with open("docs/measured/drift.json", "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
