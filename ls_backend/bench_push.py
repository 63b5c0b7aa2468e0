"""`dgan bench push`: throughput of dgan's push stage vs a raw Label Studio import of the same tasks,
measured in one run against a live Label Studio (env as for `dgan serve`).

Both sides start from the same synthesized samples (synthesis is timed on its own):
- raw: the finished JSON payload (data-URI images, brush RLE predictions), built beforehand, POSTed to
  ``/api/projects/{id}/import`` with plain ``requests``;
- push: ``Pusher.import_samples`` as ``dgan push`` runs it — PNG encoding, mask → brush RLE, the task data
  dgan adds, the Redis chunk bookkeeping and the import through label-studio-sdk.
"""

from __future__ import annotations

import time
import uuid

import requests


def bench_push(project: int, n: int = 500) -> dict:
    from model.images import png_data_uri

    from .backend import Backend
    from .brush import mask_to_results, parse_label_config
    from .config import Settings
    from .jobs import redis_from_settings
    from .push import Pusher, PushRun

    backend = Backend(Settings.from_env())
    version, interp = backend.interpreter(project)
    if interp is None:
        raise ValueError(f"project {project} has no fitted model; train it first")
    label_config = backend.client.label_config(project)
    label_map = parse_label_config(label_config)
    t = time.perf_counter()
    samples = backend.pipeline.synthesize(list(range(10**8, 10**8 + n)), interp)
    synth_s = time.perf_counter() - t
    raw_tasks = [{"data": {label_map.image_key: png_data_uri(x.image), "dgan_seed": x.seed},
                  "predictions": [{"result": mask_to_results(x.labels, label_map), "score": 0.5,
                                   "model_version": "bench"}]} for x in samples]
    url, headers = backend.settings.label_studio_url, backend.client.auth_headers()
    scratch = []
    for title in ("dgan bench raw", "dgan bench push"):
        r = requests.post(f"{url}/api/projects", headers=headers, json={"title": title, "label_config": label_config})
        r.raise_for_status()
        scratch.append(r.json()["id"])
    conn = redis_from_settings(backend.settings)
    run = PushRun(f"bench-{uuid.uuid4().hex[:8]}", scratch[1], n, 10**8, n, 0.0, 1.0, f"dgan-v{version}",
                  "datauri", time.time())
    try:
        t = time.perf_counter()
        requests.post(f"{url}/api/projects/{scratch[0]}/import", headers=headers, json=raw_tasks).raise_for_status()
        raw_s = time.perf_counter() - t
        t = time.perf_counter()
        pushed = Pusher(backend, conn).import_samples(run, 0, samples, interp, label_map)
        push_s = time.perf_counter() - t
    finally:
        conn.delete(backend.settings.keys.push_chunk(run.run_id, 0))
        for pid in scratch:
            requests.delete(f"{url}/api/projects/{pid}", headers=headers)
    return {"n": n, "pushed": pushed, "synthesis_s": round(synth_s, 2), "labeled_images_per_s": round(n / synth_s, 2),
            "raw_import_s": round(raw_s, 2), "push_s": round(push_s, 2),
            "raw_import_tasks_per_s": round(n / raw_s, 1), "push_tasks_per_s": round(n / push_s, 1),
            "ratio": round(raw_s / push_s, 3)}
