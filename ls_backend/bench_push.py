"""`dgan bench push`: throughput of dgan's push stage vs a raw Label Studio import of the same tasks,
measured in one run against a live Label Studio (env as for `dgan serve`).

Both sides start from the same synthesized samples (synthesis is timed on its own):
- raw: the finished JSON payload (data-URI images as ``model.images.png_data_uri`` writes them, brush RLE
  predictions), built beforehand, POSTed in one request to ``/api/projects/{id}/import`` with plain
  ``requests``;
- push: ``Pusher.import_samples`` as ``dgan push`` runs it — PNG encoding, mask → brush RLE, the task data
  dgan adds, the Redis chunk bookkeeping and the import requests.

Each of ``rounds`` rounds imports both into fresh scratch projects, back to back (which goes first
alternates); ``ratio`` is the median over rounds of raw seconds / push seconds, so a busy moment of the
machine weighs on both sides of one round. The 1-minute load average at the start says how busy it was.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

import requests


def bench_push(project: int, n: int = 500, rounds: int = 3) -> dict:
    """Run the bench on trained ``project`` (its label config and model) with ``n`` tasks, ``rounds`` times."""
    from model.images import png_data_uri

    from .backend import Backend
    from .brush import masks_to_results, parse_label_config
    from .config import Settings
    from .jobs import redis_from_settings
    from .push import Pusher, PushRun

    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    load = os.getloadavg()[0]
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
                  "predictions": [{"result": result, "score": 0.5, "model_version": "bench"}]}
                 for x, result in zip(samples, masks_to_results([x.labels for x in samples], label_map))]
    url, headers = backend.settings.label_studio_url, backend.client.auth_headers()
    conn = redis_from_settings(backend.settings)
    scratch: list[int] = []
    chunk_keys: list[str] = []
    raw_s: list[float] = []
    push_s: list[float] = []
    requests_made: list[int] = []

    def new_project(title: str) -> int:
        r = requests.post(f"{url}/api/projects", headers=headers, json={"title": title, "label_config": label_config})
        r.raise_for_status()
        scratch.append(r.json()["id"])
        return scratch[-1]

    def raw(pid: int) -> None:
        t = time.perf_counter()
        requests.post(f"{url}/api/projects/{pid}/import", headers=headers, json=raw_tasks).raise_for_status()
        raw_s.append(time.perf_counter() - t)

    def push(pid: int) -> None:
        run = PushRun(f"bench-{uuid.uuid4().hex[:8]}", pid, n, 10**8, n, 0.0, 1.0, f"dgan-v{version}", "datauri",
                      time.time())
        chunk_keys.append(backend.settings.keys.push_chunk(run.run_id, 0))
        pusher = Pusher(backend, conn)
        t = time.perf_counter()
        pushed = pusher.import_samples(run, 0, samples, label_map)
        push_s.append(time.perf_counter() - t)
        requests_made.append(pusher.requests_made)
        if pushed != n:
            raise RuntimeError(f"the push stage imported {pushed} of {n} tasks")

    try:
        for r in range(rounds):
            pids = {"raw": new_project("dgan bench raw"), "push": new_project("dgan bench push")}
            for side in (("raw", "push") if r % 2 == 0 else ("push", "raw")):
                (raw if side == "raw" else push)(pids[side])
    finally:
        for key in chunk_keys:
            conn.delete(key)
        for pid in scratch:
            requests.delete(f"{url}/api/projects/{pid}", headers=headers)
    raw_med, push_med = statistics.median(raw_s), statistics.median(push_s)
    return {"n": n, "pushed": n, "rounds": rounds, "synthesis_s": round(synth_s, 2),
            "labeled_images_per_s": round(n / synth_s, 2),
            "raw_import_s": round(raw_med, 2), "push_s": round(push_med, 2),
            "raw_import_tasks_per_s": round(n / raw_med, 1), "push_tasks_per_s": round(n / push_med, 1),
            "ratio": round(statistics.median(r / p for r, p in zip(raw_s, push_s)), 3),
            "raw_import_s_by_round": [round(x, 3) for x in raw_s], "push_s_by_round": [round(x, 3) for x in push_s],
            "push_requests_by_round": requests_made, "load_average_1m_at_start": round(load, 2)}
