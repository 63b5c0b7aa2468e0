"""`dgan bench push`: import throughput of dgan's push path vs a raw Label Studio import of the same
payloads, measured in one run against a live Label Studio (env as for `dgan serve`)."""

from __future__ import annotations

import time

import requests


def bench_push(project: int, n: int = 500) -> dict:
    from model.synthesis import generate_chunk

    from .backend import Backend
    from .brush import mask_to_results, parse_label_config
    from .config import Settings
    from model.images import png_data_uri

    backend = Backend(Settings.from_env())
    _, interp = backend.interpreter(project)
    if interp is None:
        raise ValueError(f"project {project} has no fitted model; train it first")
    label_map = parse_label_config(backend.client.label_config(project))
    t = time.perf_counter()
    samples = generate_chunk(backend.generator, interp, list(range(10**8, 10**8 + n)))
    synth_s = time.perf_counter() - t
    tasks = [{"data": {label_map.image_key: png_data_uri(x.image), "dgan_seed": x.seed},
              "predictions": [{"result": mask_to_results(x.labels, label_map), "score": 0.5,
                               "model_version": "bench"}]} for x in samples]
    url, headers = backend.settings.label_studio_url, backend.client.auth_headers()
    scratch = []
    for title in ("dgan bench raw", "dgan bench push"):
        r = requests.post(f"{url}/api/projects", headers=headers,
                          json={"title": title, "label_config": backend.client.label_config(project)})
        r.raise_for_status()
        scratch.append(r.json()["id"])
    t = time.perf_counter()
    requests.post(f"{url}/api/projects/{scratch[0]}/import", headers=headers, json=tasks).raise_for_status()
    raw_s = time.perf_counter() - t
    t = time.perf_counter()
    backend.client.import_tasks(scratch[1], tasks)
    push_s = time.perf_counter() - t
    for pid in scratch:
        requests.delete(f"{url}/api/projects/{pid}", headers=headers)
    return {"n": n, "synthesis_s": round(synth_s, 2), "labeled_images_per_s": round(n / synth_s, 2),
            "raw_import_tasks_per_s": round(n / raw_s, 1), "push_import_tasks_per_s": round(n / push_s, 1),
            "ratio": round(raw_s / push_s, 3)}
