"""`dgan demo`: the whole product on the embedded domain, on one machine, in about ten minutes.

Starts (or reuses) Redis, starts Label Studio, the backend and a worker; creates a project of
default-domain images; annotates 16 with the domain's exact masks (standing in for people); trains;
pre-annotates the rest; pushes synthesized tasks for review; exports COCO and VOC; prints a summary
and leaves Label Studio running for a person to review.

``--shifted``: the project a team has when its images come from another domain than the generator's.
The 16 annotated tasks are default-domain images, every other task a shifted-domain image (skin, hair and
mouth recoloured, the eyes' contrast inverted: model.domain's ``shifted`` variant). The segmenter job
measures the drift, trains a SimGAN refiner on the project's task images, and its student serves the
pre-annotations, scored on the shifted tasks; the push is refined (``dgan push --refine``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

from model.domain import CLASSES, render_batch
from model.images import png_data_uri

from .labelstudio import wait_for

LABELS = [c for c in CLASSES if c != "background"]
CONFIG = ('<View><Image name="image" value="$image" zoom="true"/><BrushLabels name="parts" toName="image">'
          + "".join(f'<Label value="{c}"/>' for c in LABELS) + "</BrushLabels></View>")


def _step(i: int, n: int, msg: str, t0: float) -> None:
    print(f"[{i}/{n}] {msg}  (t+{time.time() - t0:.0f}s)", flush=True)


def ensure_redis(url: str, out: Path) -> str:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return url
    except redis.RedisError:
        pass
    from .labelstudio import free_port

    port = free_port()
    subprocess.run(["redis-server", "--daemonize", "yes", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", str(out), "--logfile", str(out / "redis.log"),
                    "--pidfile", str(out / "redis.pid")], check=True)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: _ping(url), 20, "redis-server")
    return url


def demo_namespace(ls_data_dir: Path) -> str:
    """A name for this demo's Label Studio instance (kept in its data folder): its Redis keys and queue
    live under it, so the demo shares a Redis with anything else and never clears what it did not write.
    A fresh Label Studio (data folder removed) gets a fresh name, so old project ids cannot collide."""
    import secrets

    ls_data_dir.mkdir(parents=True, exist_ok=True)
    marker = ls_data_dir / "dgan-demo-namespace"
    if not marker.exists():
        marker.write_text(f"dgan-demo-{secrets.token_hex(4)}\n")
    return marker.read_text().strip()


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


def stop(out: Path) -> None:
    pids = json.loads((out / "pids.json").read_text()) if (out / "pids.json").exists() else {}
    for name, pid in pids.items():
        try:
            os.killpg(pid, signal.SIGTERM)
            print(f"stopped {name} (pid {pid})")
        except ProcessLookupError:
            pass
    (out / "pids.json").unlink(missing_ok=True)
    redis_pid = out / "redis.pid"          # written only when the demo had to start its own Redis
    if redis_pid.exists():
        try:
            os.kill(int(redis_pid.read_text().strip()), signal.SIGTERM)
            print(f"stopped the demo's redis-server (pid {redis_pid.read_text().strip()})")
        except (ProcessLookupError, ValueError):
            pass
        redis_pid.unlink(missing_ok=True)


def run_demo(out: str | Path, n_tasks: int = 200, n_annotated: int = 16, n_push: int = 1000,
             seed: int = 0, shifted: bool = False) -> dict:
    from pycocotools.coco import COCO  # noqa: F401 - fail early if the serve extra is missing

    from model.metrics import iou_per_class, per_class_percent

    from .labelstudio import free_port, start_label_studio

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stop(out)
    t0 = time.time()
    steps = 9
    timings: dict[str, float] = {}
    _step(1, steps, "Redis and Label Studio (first start migrates its database: ~1-2 min)", t0)
    redis_url = ensure_redis(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), out)
    namespace = demo_namespace(out / "label-studio")
    ls = start_label_studio(out / "label-studio")
    timings["label_studio_start_s"] = round(time.time() - t0, 1)
    pids = {"label-studio": ls.process.pid}

    _step(2, steps, "backend (dgan serve) and a worker", t0)
    port = free_port()
    import redis as _redis

    import secrets

    from .config import WEBHOOK_SECRET_HEADER
    from .redis_keys import RedisKeys

    # Nothing in Redis is cleared: the demo's keys and queue carry its own namespace.
    keys = RedisKeys(namespace)
    # The backend runs as it should in production: basic auth on every endpoint, and the project
    # webhook authenticated by a secret header (Label Studio sends webhooks without basic auth).
    auth_user, auth_pass, webhook_secret = "dgan", secrets.token_urlsafe(18), secrets.token_hex(20)
    env = {**os.environ, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "REDIS_URL": redis_url,
           "MODEL_DIR": str(out / "models"), "DGAN_LS_DOCUMENT_ROOT": str(ls.document_root),
           "DGAN_ALLOWED_ROOTS": str(ls.document_root), "DGAN_QUEUE": namespace, "DGAN_REDIS_PREFIX": namespace,
           "BASIC_AUTH_USER": auth_user, "BASIC_AUTH_PASS": auth_pass, "DGAN_WEBHOOK_SECRET": webhook_secret}
    if shifted:     # what it shows is the product's drift handling: not turned off by the caller's environment
        env["DGAN_REFINE"] = "auto"
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    for name, args in (("backend", ["serve", "--host", "127.0.0.1", "--port", str(port)]), ("worker", ["worker"])):
        p = subprocess.Popen([sys.executable, "-m", "ls_backend.cli", *args], env=env, start_new_session=True,
                             stdout=open(logs / f"{name}.log", "ab"), stderr=subprocess.STDOUT)
        pids[name] = p.pid
    (out / "pids.json").write_text(json.dumps(pids))
    backend_url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _ok(backend_url + "/health"), 120, "the backend")

    domain = (f"{n_annotated} default-domain images (to annotate) and {n_tasks - n_annotated} shifted-domain images"
              if shifted else f"{n_tasks} default-domain images")
    _step(3, steps, f"project with {domain}", t0)
    s = requests.Session()
    s.headers["Authorization"] = f"Token {ls.token}"
    api = ls.url + "/api"
    project = s.post(f"{api}/projects", json={"title": f"dgan demo {time.strftime('%H:%M')}",
                                              "label_config": CONFIG}).json()["id"]
    images, masks = render_batch(n_tasks, seed=1000 + seed)
    if shifted:     # task i is image i of its domain: the first n_annotated default, the rest shifted
        sh_images, sh_masks = render_batch(n_tasks, seed=1000 + seed, variant="shifted")
        images = np.concatenate([images[:n_annotated], sh_images[n_annotated:]])
        masks = np.concatenate([masks[:n_annotated], sh_masks[n_annotated:]])
    r = s.post(f"{api}/projects/{project}/import", json=[{"image": png_data_uri(im)} for im in images])
    r.raise_for_status()
    task_ids = sorted(t["id"] for t in s.get(f"{api}/tasks", params={"project": project, "page_size": 5000}
                                             ).json()["tasks"])
    ml = s.post(f"{api}/ml", json={"url": backend_url, "project": project, "title": "dgan", "is_interactive": False,
                                   "auth_method": "BASIC_AUTH", "basic_auth_user": auth_user,
                                   "basic_auth_pass": auth_pass})
    ml.raise_for_status()
    from .client import LabelStudioClient

    LabelStudioClient(ls.url, ls.token).set_webhook_headers(project, backend_url + "/webhook",
                                                            {WEBHOOK_SECRET_HEADER: webhook_secret})

    _step(4, steps, f"annotating {n_annotated} tasks with exact masks (standing in for people); training", t0)
    t_fit = time.time()
    for i in range(n_annotated):
        result = []
        for c, name in enumerate(LABELS, start=1):
            m = masks[i] == c
            if m.any():
                from label_studio_sdk.converter.brush import mask2rle

                result.append({"from_name": "parts", "to_name": "image", "type": "brushlabels",
                               "original_width": 64, "original_height": 64, "image_rotation": 0,
                               "value": {"format": "rle", "rle": mask2rle((m * 255).astype(np.uint8)),
                                         "brushlabels": [name]}})
        s.post(f"{api}/tasks/{task_ids[i]}/annotations", json={"result": result}).raise_for_status()
    conn = _redis.Redis.from_url(redis_url)

    def caught_up() -> bool:
        seq = int(conn.get(keys.event_seq(project)) or 0)
        return seq >= n_annotated and int(conn.get(keys.fitted_seq(project)) or 0) >= seq

    wait_for(caught_up, 1200, "the fit of all annotations", every=3)
    last = json.loads(conn.get(keys.last_fit(project)))
    if "error" in last:
        raise RuntimeError(f"the fit failed: {last['error']} (see {logs / 'worker.log'})")
    timings["fit_s"] = round(time.time() - t_fit, 1)
    print(f"      model {last['model_version']}: trained on {last['n_images']} images; the interpreter, which serves "
          f"until the segmenter is ready, cross-validates at {last['cv_miou']}% mIoU "
          f"(per class: {last.get('cv_per_class')})")
    # After the fit, a worker job trains the segmenter that serves /predict (the interpreter serves until then).
    from .store import ProjectStore

    t_seg = time.time()
    store = ProjectStore(out / "models")

    def segmenter_meta() -> dict | None:   # written into the version's report once the segmenter is saved
        if store.latest_segmenter(project) < last["version"]:
            return None
        return store.version_meta(project, store.latest_segmenter(project)).get("segmenter")

    # A drifted project's segmenter job also trains the refiner: about 5-20 min more on 2 cores.
    seg_meta = wait_for(segmenter_meta, 3600 if shifted else 1200, "the segmenter after the fit", every=3)
    timings["segmenter_s"] = round(time.time() - t_seg, 1)
    drift, refiner = seg_meta.get("drift"), seg_meta.get("refiner")
    print(f"      segmenter of {last['model_version']} ready after {timings['segmenter_s']:.0f}s more"
          + (f"; task images {drift['ratio']}x the floor from the generator's samples "
             f"({'drifted' if drift['drifted'] else 'not drifted'})" if drift else "")
          + (f"; SimGAN refiner trained in {refiner['seconds']:.0f} s" if refiner else ""))

    _step(5, steps, f"pre-annotating the other {n_tasks - n_annotated} tasks (one 'Retrieve predictions' call)", t0)
    rest = task_ids[n_annotated:]
    t_pred = time.time()
    s.post(f"{api}/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
           json={"selectedItems": {"all": False, "included": rest}}, timeout=300)

    def predicted():
        got = {}
        for t in s.get(f"{api}/tasks", params={"project": project, "page_size": 5000, "fields": "all"}).json()["tasks"]:
            ps = [p for p in t.get("predictions", []) if p.get("result")]
            if ps:
                got[t["id"]] = max(ps, key=lambda p: p["id"])
        return got if all(i in got for i in rest) else None

    got = wait_for(predicted, 1200, "predictions for every task", every=5)
    timings["pre_annotate_s"] = round(time.time() - t_pred, 1)
    from .brush import parse_label_config, results_to_mask

    lm = parse_label_config(CONFIG)
    pred = np.stack([results_to_mask(got[i]["result"], lm, 64, 64) for i in rest])
    iou = iou_per_class(pred, masks[n_annotated:], len(CLASSES))
    miou = 100 * float(np.nanmean(iou))
    per_class = per_class_percent(iou, list(CLASSES))
    served_by = sorted({got[i].get("model_version") for i in rest})
    print(f"      pre-annotation mIoU against the exact masks: {miou:.1f}% by {', '.join(served_by)}; per class: "
          + ", ".join(f"{c} {v:.0f}" for c, v in per_class.items()))

    _step(6, steps, f"pushing {n_push} synthesized tasks for review", t0)
    t_push = time.time()
    refine = ["--refine"] if refiner else []    # a drifted project's pushed images take its tasks' look
    push = subprocess.run([sys.executable, "-m", "ls_backend.cli", "push", "--project", str(project), "--n",
                           str(n_push), *refine], env=env, text=True)
    if push.returncode:
        raise RuntimeError("dgan push failed (see above)")
    timings["push_s"] = round(time.time() - t_push, 1)

    _step(7, steps, "exporting COCO (RLE) and Pascal VOC", t0)
    exports = {}
    for fmt in ("coco", "voc"):
        dest = out / "exports" / f"project-{project}-{fmt}"
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        r = subprocess.run([sys.executable, "-m", "ls_backend.cli", "export", "--project", str(project), "--format",
                            fmt, "--include-predictions", "--out", str(dest)], env=env, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"export {fmt} failed: {r.stderr}")
        exports[fmt] = str(dest)

    _step(8, steps, "summary", t0)
    summary = {"label_studio": ls.url, "login": {"email": ls.username, "password": ls.password},
               "project": project, "project_url": f"{ls.url}/projects/{project}/data",
               "pre_annotation_miou": round(miou, 2), "pre_annotation_per_class": per_class,
               "pre_annotation_model_versions": served_by, "cv_miou": last["cv_miou"],
               "tasks": {"annotated_default_domain": n_annotated,
                         ("pre_annotated_shifted_domain" if shifted else "pre_annotated_default_domain"):
                             n_tasks - n_annotated},
               "drift": drift, "refiner": refiner, "pushed_refined": bool(refine),
               "cv_per_class": last.get("cv_per_class"), "timings": timings,
               "total_s": round(time.time() - t0, 1), "exports": exports, "backend": backend_url,
               "logs": str(logs), "stop": f"dgan demo --stop --out {out}",
               # what `dgan push|export|bench push` need to work on this demo's project from a shell
               "cli_env": {k: env[k] for k in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "REDIS_URL", "MODEL_DIR",
                                               "DGAN_LS_DOCUMENT_ROOT", "DGAN_REDIS_PREFIX", "DGAN_QUEUE")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    _step(9, steps, f"Label Studio stays up at {ls.url} — log in as {ls.username} / {ls.password}", t0)
    return summary


def _ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False
