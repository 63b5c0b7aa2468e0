"""The segmenter as a project gets it, measured end to end without Label Studio:
1. the segmenter job's work (``Backend.train_segmenter``: teacher, pool, student) on 16 labeled
   default-domain images, timed;
2. ``/predict`` over real HTTP (the Flask app in a local server, as gunicorn serves it) once the
   segmenter is ready: latency per request of one task (what Label Studio sends when a person opens a
   task) and per task in a page of 32, with the served model_version;
3. the served predictions' mIoU and per-class IoU against the exact masks.

    .venv/bin/python scripts/segmenter_service.py [--out docs/measured/segmenter-service.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import numpy as np
import requests
from werkzeug.serving import make_server

from ls_backend.app import create_app
from ls_backend.backend import Backend
from ls_backend.brush import parse_label_config, results_to_mask
from ls_backend.config import Settings
from model.bench import print_json
from model.domain import CLASSES, render_batch
from model.images import png_data_uri
from model.metrics import iou_per_class, per_class_percent

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="parts" toName="image">'
          + "".join(f'<Label value="{c}"/>' for c in CLASSES[1:]) + "</BrushLabels></View>")
PROJECT = 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the JSON here too")
    ap.add_argument("--n-test", type=int, default=200)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "unused",
                                  "MODEL_DIR": tmp, "REDIS_URL": "redis://127.0.0.1:9/0"})
    backend = Backend(settings)
    pipe = backend.pipeline
    label_map = parse_label_config(CONFIG)
    classes = label_map.class_names

    # What a fit leaves behind (its interpreter version and the labeled images), then the segmenter job.
    lab_img, lab_mask = render_batch(16, seed=2000)
    ws = pipe.invert(lab_img)[0]
    version, path = backend.store.next_version_paths(PROJECT)
    pipe.fit(ws, lab_mask, classes).save(path)
    np.savez_compressed(backend.store.training_data_path(PROJECT, version), images=lab_img, masks=lab_mask)
    backend.store.commit_version(PROJECT, version, {"labels": list(label_map.labels)})
    t = time.perf_counter()
    job = backend.train_segmenter(PROJECT, version)
    job_s = time.perf_counter() - t

    server = make_server("127.0.0.1", 0, create_app(settings, backend), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/predict"
    images, masks = render_batch(a.n_test, seed=4242)
    tasks = [{"id": i, "data": {"image": png_data_uri(im)}} for i, im in enumerate(images)]
    session = requests.Session()

    def post(batch: list[dict]) -> list[dict]:
        r = session.post(url, json={"project": f"{PROJECT}.1", "label_config": CONFIG, "tasks": batch}, timeout=100)
        r.raise_for_status()
        return r.json()["results"]

    post(tasks[:2])                                   # warm-up (model load)
    single, entries = [], []
    for task in tasks:
        t = time.perf_counter()
        entries += post([task])
        single.append(1000 * (time.perf_counter() - t))
    t = time.perf_counter()
    for i in range(0, 64, 32):
        post(tasks[i:i + 32])
    page_ms = 1000 * (time.perf_counter() - t) / 64
    server.shutdown()

    pred = np.stack([results_to_mask(e["result"], label_map, 64, 64) for e in entries])
    iou = iou_per_class(pred, masks, len(CLASSES))
    single.sort()
    out = {"segmenter_job_s": round(job_s, 1), "job": job,
           "model_versions": sorted({e["model_version"] for e in entries}),
           "predict_one_task_ms_p50": round(statistics.median(single), 1),
           "predict_one_task_ms_p90": round(single[int(0.9 * len(single))], 1),
           "predict_page_of_32_ms_per_task": round(page_ms, 1), "n_test": a.n_test,
           "served_miou": round(100 * float(np.nanmean(iou)), 2),
           "served_per_class": per_class_percent(iou, list(CLASSES)),
           "over": "HTTP to a local werkzeug server (threaded), 64 px data-URI images"}
    print_json(out, a.out)


if __name__ == "__main__":
    main()
