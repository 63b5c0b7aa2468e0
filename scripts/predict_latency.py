"""/predict latency per task with the shipped models: inversion path (new image) vs fast path
(latent cached by image hash), through the real Flask app and a real Redis. No Label Studio needed:
tasks carry data-URI images as Label Studio sends them.  .venv/bin/python scripts/predict_latency.py"""

import json
import tempfile
import time

import numpy as np

from ls_backend.app import create_app
from ls_backend.backend import Backend
from ls_backend.brush import parse_label_config
from ls_backend.config import Settings
from model.domain import CLASSES, render_batch
from model.images import png_data_uri
from model.metrics import mean_iou

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="parts" toName="image">'
          + "".join(f'<Label value="{c}"/>' for c in CLASSES[1:]) + "</BrushLabels></View>")


def main(n: int = 32) -> None:
    tmp = tempfile.mkdtemp()
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k",
                                  "MODEL_DIR": tmp, "REDIS_URL": "redis://127.0.0.1:6379/11"})
    backend = Backend(settings)
    pipe = backend.pipeline
    lab_img, lab_mask = render_batch(16, seed=2000)
    t = time.perf_counter()
    ws = pipe.invert(lab_img, steps=30)[0]
    interp = pipe.fit(ws, lab_mask, parse_label_config(CONFIG).class_names)
    fit_s = time.perf_counter() - t
    v, path = backend.store.next_version_paths(1)
    interp.save(path)
    backend.store.commit_version(1, v, {})
    client = create_app(settings, backend).test_client()
    images, masks = render_batch(n, seed=4242)
    body = {"project": "1.1", "label_config": CONFIG,
            "tasks": [{"id": i, "data": {"image": png_data_uri(im)}} for i, im in enumerate(images)]}
    out = {}
    for name in ("inversion_path", "cached_path"):
        t = time.perf_counter()
        r = client.post("/predict", json=body).get_json()["results"]
        out[f"{name}_ms_per_task"] = round(1000 * (time.perf_counter() - t) / n, 1)
    lm = parse_label_config(CONFIG)
    from ls_backend.brush import results_to_mask

    pred = np.stack([results_to_mask(e["result"], lm, 64, 64) for e in r])
    out.update(n_tasks=n, fit_16_images_s=round(fit_s, 1),
               miou=round(100 * mean_iou(pred, masks, len(CLASSES)), 2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
