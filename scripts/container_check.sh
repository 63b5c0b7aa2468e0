#!/usr/bin/env bash
# The container, for real: build docker/Dockerfile and run the backend (`dgan serve`) and workers
# (`dgan worker`) as containers against a Label Studio 1.23.2 and a Redis on this machine, then the
# end-to-end tests' check: annotate 16 tasks with exact masks → the webhooks fit → "Retrieve predictions"
# for the rest (mIoU > 20, as tests/e2e) → the segmenter serves /predict (mIoU > 40, as tests/e2e).
# Prints PASS or FAIL with the figures and exits non-zero on FAIL; containers, their volume and the
# run's Redis keys are removed at the end (--keep leaves them and Label Studio running).
#
#   scripts/container_check.sh [--keep] [--no-build] [--head]
#     --keep      leave the containers, their volume and Label Studio running (to look around)
#     --no-build  run the image as it is
#     --head      build and drive from the last commit (a `git archive` copy), not the working tree
#
# Works where no image registry is reachable: the base image is made locally (debootstrap + docker import)
# when it is missing, torch comes from a local wheel copied into docker/wheels/ (git-ignored), and pip
# reaches PyPI during the build through this machine's CA bundle, passed as a build secret (in no layer).
# Needs: a running Docker engine, debootstrap (only to make the base image), .venv (the project, for the
# driver) and Label Studio (.venv-ls/bin/label-studio or LABEL_STUDIO_BIN).
#
# Environment (all optional):
#   DGAN_BASE        base image (default localbase:bookworm, made here if missing; python:3.11-slim with a registry)
#   DGAN_IMAGE       image to build and run (default dgan:check)
#   DGAN_ROOTFS      where debootstrap builds the base's root file system (default /tmp/dgan-rootfs)
#   DEBIAN_MIRROR    default http://deb.debian.org/debian
#   DGAN_CA_BUNDLE   CA bundle for pip during the build (default /etc/ssl/certs/ca-certificates.crt when present)
#   DGAN_TORCH_WHEEL a torch-2.13.0 wheel to build with (default: the one in pip's find-links, if any)
#   DGAN_CHECK_REDIS Redis the containers use (default redis://127.0.0.1:6379/0; the run's keys carry their own
#                    DGAN_REDIS_PREFIX and queue, nothing else is touched)
#   DGAN_CHECK_LS_URL, DGAN_CHECK_LS_TOKEN  reuse a running Label Studio instead of starting one
#   DGAN_SEGMENTER   as for the backend (default: its default recipe, as the end-to-end tests run it)
#   DGAN_CHECK_WORKERS  worker containers (default 2, as `--scale worker=2`: with one, the job that finishes
#                    "Retrieve predictions" waits until that worker has trained the segmenter)
#   DGAN_CHECK_TIMEOUT_S  longest wait for each of the fit, the predictions and the segmenter (default 3600: on a
#                    2-core machine shared with 3 other busy processes the fit took 15 min, the segmenter over 40)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BASE=${DGAN_BASE:-localbase:bookworm}
IMAGE=${DGAN_IMAGE:-dgan:check}
ROOTFS=${DGAN_ROOTFS:-/tmp/dgan-rootfs}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA=${DGAN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PY=${DGAN_PYTHON:-$ROOT/.venv/bin/python}
KEEP=0 BUILD=1 HEAD_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    --no-build) BUILD=0 ;;
    --head) HEAD_ONLY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '[container-check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
T0=$(date +%s)

docker info >/dev/null 2>&1 || { echo "FAIL: no Docker engine answers (start dockerd)" >&2; exit 1; }
CTX=$ROOT                              # build context, and the code the driver below imports
if [ "$HEAD_ONLY" = 1 ]; then
  CTX=$(mktemp -d /tmp/dgan-check-src.XXXXXX)
  trap 'rm -rf "$CTX"' EXIT
  git archive HEAD | tar -x -C "$CTX"
  [ -n "${LABEL_STUDIO_BIN:-}" ] || [ ! -x "$ROOT/.venv-ls/bin/label-studio" ] \
    || export LABEL_STUDIO_BIN=$ROOT/.venv-ls/bin/label-studio
  say "building and driving from HEAD $(git rev-parse --short HEAD) (copied to $CTX), not the working tree"
fi

# BuildKit builds (secret and bind mounts): the buildx plugin when there is one, else a client with BuildKit
# built in (Debian's docker.io CLI), asked with DOCKER_BUILDKIT=1.
build() {
  local cli=docker
  if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then cli=/usr/bin/docker; fi
  DOCKER_BUILDKIT=1 "$cli" build "$@"
}

# -- 1. base image --------------------------------------------------------------------------------------
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  case "$BASE" in
    localbase:*)
      command -v debootstrap >/dev/null || { echo "FAIL: $BASE is missing and debootstrap is not installed" >&2; exit 1; }
      say "making $BASE with debootstrap in $ROOTFS (about a minute)"
      rm -rf "$ROOTFS"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" \
        > /tmp/dgan-debootstrap.log 2>&1 || { echo "FAIL: debootstrap failed, see /tmp/dgan-debootstrap.log" >&2; exit 1; }
      # apt's caches and lists, documentation and locales: nothing the image runs needs them
      rm -rf "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/{doc,man,info,locale}/*
      tar -C "$ROOTFS" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
      rm -rf "$ROOTFS"
      ;;
    *) say "$BASE is not here: the build pulls it" ;;
  esac
fi

# -- 2. the dgan image ----------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  if ! ls "$CTX"/docker/wheels/torch-2.13.0*.whl >/dev/null 2>&1; then
    wheel=${DGAN_TORCH_WHEEL:-}
    for w in docker/wheels/torch-2.13.0*.whl; do [ -z "$wheel" ] && [ -f "$w" ] && wheel=$w; done
    if [ -z "$wheel" ]; then
      for dir in ${PIP_FIND_LINKS:-} $("$PY" -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p"); do
        for w in "$dir"/torch-2.13.0*cp311*.whl; do [ -f "$w" ] && wheel=$w && break 2; done
      done
    fi
    if [ -n "$wheel" ]; then say "torch from $wheel"; cp "$wheel" "$CTX/docker/wheels/"
    else say "no local torch wheel: the build takes torch from its TORCH_INDEX"; fi
  fi
  secret=()
  [ -s "$CA" ] && secret=(--secret "id=ca,src=$CA")
  say "building $IMAGE on $BASE (log: /tmp/dgan-image-build.log)"
  tb=$(date +%s)
  build --network host --progress plain -f "$CTX/docker/Dockerfile" --build-arg "BASE=$BASE" "${secret[@]}" \
    -t "$IMAGE" "$CTX" \
    > /tmp/dgan-image-build.log 2>&1 || { tail -30 /tmp/dgan-image-build.log; echo "FAIL: docker build failed" >&2; exit 1; }
  export DGAN_CHECK_BUILD_S=$(( $(date +%s) - tb ))
  say "built in ${DGAN_CHECK_BUILD_S}s"
fi
DGAN_CHECK_IMAGE_MB=$(( $(docker image inspect -f '{{.Size}}' "$IMAGE") / 1000000 ))
say "$IMAGE: $DGAN_CHECK_IMAGE_MB MB, user $(docker image inspect -f '{{.Config.User}}' "$IMAGE")"
export DGAN_CHECK_IMAGE_MB DGAN_CHECK_IMAGE=$IMAGE DGAN_CHECK_KEEP=$KEEP DGAN_CHECK_T0=$T0

# -- 3. Label Studio, the two containers, annotate → fit → predict, cleanup ----------------------------------
cd "$CTX"
rc=0
PYTHONPATH="$CTX${PYTHONPATH:+:$PYTHONPATH}" "$PY" - <<'PY' || rc=$?
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import requests

from ls_backend.brush import mask_to_results, parse_label_config, results_to_mask
from ls_backend.client import LabelStudioClient
from ls_backend.config import WEBHOOK_SECRET_HEADER
from ls_backend.demo import CONFIG
from ls_backend.labelstudio import LabelStudioProcess, free_port, start_label_studio, wait_for
from ls_backend.redis_keys import RedisKeys
from model.domain import CLASSES, render_batch
from model.metrics import mean_iou

N_ANNOTATED, N_PREDICTED = 16, 48
PRED_MIN, SEG_MIN = 20.0, 40.0          # tests/e2e/test_label_studio.py: retrieved predictions, served segmenter
WAIT_S = float(os.environ.get("DGAN_CHECK_TIMEOUT_S", "3600"))
N_WORKERS = int(os.environ.get("DGAN_CHECK_WORKERS", "2"))
image, keep, t0 = os.environ["DGAN_CHECK_IMAGE"], os.environ["DGAN_CHECK_KEEP"] == "1", float(os.environ["DGAN_CHECK_T0"])
run = "dgan-ccheck-" + secrets.token_hex(4)          # Redis prefix, RQ queue, container and volume names
work = Path(tempfile.mkdtemp(prefix=run + "-", dir="/tmp"))
redis_url = os.environ.get("DGAN_CHECK_REDIS", "redis://127.0.0.1:6379/0")
figures: dict = {"image": image, "image_mb": int(os.environ["DGAN_CHECK_IMAGE_MB"]), "run": run, "work": str(work)}
if "DGAN_CHECK_BUILD_S" in os.environ:
    figures["build_s"] = int(os.environ["DGAN_CHECK_BUILD_S"])


def say(msg: str) -> None:
    print(f"[container-check {time.strftime('%H:%M:%S')}] {msg}  (t+{time.time() - t0:.0f}s)", flush=True)


def wait(predicate, what: str, every: float):
    """wait_for with a line every two minutes, so that a slow machine is not mistaken for a hung one."""
    last = [time.time()]

    def checked():
        if time.time() - last[0] >= 120:
            last[0] = time.time()
            say(f"... still waiting for {what}")
        return predicate()

    return wait_for(checked, WAIT_S, what, every=every)


def docker(*args: str, check: bool = True) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"docker {' '.join(args[:2])} failed: {r.stderr.strip()}")
    return r.stdout.strip()


def container_running(name: str) -> bool:
    return docker("inspect", "-f", "{{.State.Running}}", name, check=False) == "true"


ls: LabelStudioProcess | None = None
names = [f"{run}-backend"] + [f"{run}-worker-{i}" for i in range(1, N_WORKERS + 1)]
ok, failures = False, []
try:
    conn = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
    conn.ping()
    keys = RedisKeys(run)
    if os.environ.get("DGAN_CHECK_LS_URL") and os.environ.get("DGAN_CHECK_LS_TOKEN"):
        ls = LabelStudioProcess(os.environ["DGAN_CHECK_LS_URL"].rstrip("/"), "", "", os.environ["DGAN_CHECK_LS_TOKEN"],
                                work, work, None, work / "none.log")
        say(f"reusing Label Studio at {ls.url}")
    else:
        say("starting Label Studio (a fresh database migrates: 1-3 min)")
        t = time.time()
        ls = start_label_studio(work / "label-studio")
        figures["label_studio_start_s"] = round(time.time() - t, 1)

    # The backend as in production: basic auth on its endpoints, the webhook authenticated by a secret header.
    port, user, password, hook_secret = free_port(), "dgan", secrets.token_urlsafe(18), secrets.token_hex(20)
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "REDIS_URL": redis_url,
           "DGAN_REDIS_PREFIX": run, "DGAN_QUEUE": run, "MODEL_DIR": "/data/models",
           "BASIC_AUTH_USER": user, "BASIC_AUTH_PASS": password, "DGAN_WEBHOOK_SECRET": hook_secret,
           # as tests/e2e/conftest.py runs the backend
           "DGAN_PREDICT_BUDGET_S": "20", "DGAN_INVERSION_STEPS": "20", "OMP_NUM_THREADS": "2"}
    if os.environ.get("DGAN_SEGMENTER"):
        env["DGAN_SEGMENTER"] = os.environ["DGAN_SEGMENTER"]
    env_file = work / "backend.env"
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    docker("volume", "create", run)
    common = ["run", "-d", "--network", "host", "--env-file", str(env_file), "-v", f"{run}:/data"]
    say(f"starting containers {names[0]} (dgan serve on 127.0.0.1:{port}) and {', '.join(names[1:])} (dgan worker)")
    t = time.time()
    docker(*common, "--name", names[0], "--health-interval", "5s", "--health-cmd",
           f"python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=2)\"",
           image, "dgan", "serve", "--host", "127.0.0.1", "--port", str(port))
    for n in names[1:]:
        docker(*common, "--name", n, "--no-healthcheck", image, "dgan", "worker")
    figures["workers"] = N_WORKERS
    backend = f"http://127.0.0.1:{port}"

    def healthy():
        for n in names:
            if not container_running(n):
                raise RuntimeError(f"container {n} exited: {docker('logs', '--tail', '30', n, check=False)}")
        return docker("inspect", "-f", "{{.State.Health.Status}}", names[0]) == "healthy"

    wait_for(healthy, 180, "the backend container's health check", every=1)
    figures["backend_healthy_s"] = round(time.time() - t, 1)
    auth = (user, password)

    s = requests.Session()
    s.headers["Authorization"] = f"Token {ls.token}"
    api = ls.url + "/api"
    project = s.post(f"{api}/projects", json={"title": f"container check {run}", "label_config": CONFIG}).json()["id"]
    n_tasks = N_ANNOTATED + N_PREDICTED
    images, masks = render_batch(n_tasks, seed=77)
    from model.images import png_data_uri

    client = LabelStudioClient(ls.url, ls.token)
    task_ids = sorted(client.import_tasks(project, [{"image": png_data_uri(im)} for im in images]))
    assert len(task_ids) == n_tasks, task_ids
    ml = s.post(f"{api}/ml", json={"url": backend, "project": project, "title": "dgan (container)",
                                   "is_interactive": False, "auth_method": "BASIC_AUTH", "basic_auth_user": user,
                                   "basic_auth_pass": password})
    if ml.status_code != 201:
        raise RuntimeError(f"Label Studio did not connect the backend container: {ml.status_code} {ml.text[:300]}")
    client.set_webhook_headers(project, backend + "/webhook", {WEBHOOK_SECRET_HEADER: hook_secret})
    say(f"project {project}: {n_tasks} tasks, backend connected; annotating {N_ANNOTATED} with exact masks")

    lm = parse_label_config(CONFIG)
    t = time.time()
    for i in range(N_ANNOTATED):
        r = s.post(f"{api}/tasks/{task_ids[i]}/annotations", json={"result": mask_to_results(masks[i], lm)})
        if r.status_code != 201:
            raise RuntimeError(f"annotation of task {task_ids[i]}: {r.status_code} {r.text[:300]}")

    def caught_up() -> bool:
        for n in names:
            if not container_running(n):
                raise RuntimeError(f"container {n} exited")
        seq = int(conn.get(keys.event_seq(project)) or 0)
        return seq >= N_ANNOTATED and int(conn.get(keys.fitted_seq(project)) or 0) >= seq

    wait(caught_up, "the worker containers' fit of the annotation webhooks", every=3)
    last = json.loads(conn.get(keys.last_fit(project)))
    if "error" in last:
        raise RuntimeError(f"the fit failed: {last['error']}")
    figures.update(fit_s=round(time.time() - t, 1), model_version=last.get("model_version"),
                   fit_images=last.get("n_images"), cv_miou=last.get("cv_miou"))
    say(f"fit done: {last.get('model_version')} on {last.get('n_images')} images, cross-validated mIoU "
        f"{last.get('cv_miou')}%")

    rest = task_ids[N_ANNOTATED:]
    t = time.time()
    r = s.post(f"{api}/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
               json={"selectedItems": {"all": False, "included": rest}}, timeout=300)
    if r.status_code != 200:
        raise RuntimeError(f"Retrieve predictions: {r.status_code} {r.text[:300]}")

    def predicted():
        got = {}
        for task in s.get(f"{api}/tasks", params={"project": project, "page_size": 1000,
                                                   "fields": "all"}).json()["tasks"]:
            preds = [p for p in task.get("predictions", []) if p.get("result")]
            if preds:
                got[task["id"]] = max(preds, key=lambda p: p["id"])
        return got if all(i in got for i in rest) else None

    got = wait(predicted, "predictions for every task (fast path + a worker's job)", every=5)
    figures["retrieve_s"] = round(time.time() - t, 1)
    pred = np.stack([results_to_mask(got[i]["result"], lm, 64, 64) for i in rest])
    figures["predict_miou"] = round(100 * mean_iou(pred, masks[N_ANNOTATED:], len(CLASSES)), 2)
    figures["predict_versions"] = sorted({got[i]["model_version"] for i in rest})
    say(f"retrieved predictions for {len(rest)} tasks: mIoU {figures['predict_miou']}% "
        f"by {', '.join(figures['predict_versions'])}")
    if not figures["predict_miou"] > PRED_MIN:
        failures.append(f"predictions mIoU {figures['predict_miou']} ≤ {PRED_MIN}")
    if not all(re.fullmatch(r"dgan-v\d+(-segmenter)?", v) for v in figures["predict_versions"]):
        failures.append(f"unexpected model versions {figures['predict_versions']}")

    def segmenter():
        names_ = requests.get(backend + "/versions", auth=auth, timeout=10).json()["versions"]
        return next((n for n in names_ if n.endswith("-segmenter")), None)

    t = time.time()
    seg = wait(segmenter, "the segmenter a worker container trains after the fit", every=5)
    figures["segmenter_ready_s"] = round(time.time() - t, 1)
    sample = [{"id": i, "data": {"image": png_data_uri(images[task_ids.index(i)])}} for i in rest]
    t = time.time()
    r = requests.post(backend + "/predict", json={"tasks": sample, "project": f"{project}.1", "label_config": CONFIG},
                      auth=auth, timeout=100)
    if r.status_code != 200:
        raise RuntimeError(f"/predict: {r.status_code} {r.text[:300]}")
    figures["segmenter_predict_ms_per_task"] = round(1000 * (time.time() - t) / len(sample), 1)
    served = r.json()["results"]
    seg_pred = np.stack([results_to_mask(e["result"], lm, 64, 64) for e in served])
    figures["segmenter_miou"] = round(100 * mean_iou(seg_pred, masks[N_ANNOTATED:], len(CLASSES)), 2)
    say(f"/predict by {seg}: mIoU {figures['segmenter_miou']}% on {len(sample)} tasks")
    if {e["model_version"] for e in served} != {seg}:
        failures.append(f"/predict served {sorted({e['model_version'] for e in served})}, not {seg}")
    if not figures["segmenter_miou"] > SEG_MIN:
        failures.append(f"segmenter mIoU {figures['segmenter_miou']} ≤ {SEG_MIN}")
    ok = not failures
except Exception as e:  # noqa: BLE001 - reported as FAIL with the reason
    failures.append(f"{type(e).__name__}: {e}")
finally:
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    for n in names:
        with open(logs / f"{n}.log", "wb") as f:
            subprocess.run(["docker", "logs", n], stdout=f, stderr=subprocess.STDOUT)
    if keep:
        say(f"--keep: containers {', '.join(names)}, volume {run} and Label Studio "
            f"{ls.url if ls else ''} stay (token in {work})")
    else:
        for n in names:
            docker("stop", "-t", "20", n, check=False)
            docker("rm", "-f", n, check=False)
        docker("volume", "rm", run, check=False)
        if ls is not None:
            ls.stop()
        try:   # this run's keys only: its prefix, its RQ queue and the jobs that queue held
            conn = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
            rq_keys = list(conn.scan_iter(f"rq:*:{run}"))
            jobs = set()
            for k in rq_keys:
                kind = conn.type(k)
                jobs |= set(conn.lrange(k, 0, -1) if kind == b"list" else
                            conn.zrange(k, 0, -1) if kind == b"zset" else [])
            doomed = list(conn.scan_iter(f"{run}:*")) + rq_keys
            for j in jobs:
                doomed += list(conn.scan_iter(f"rq:*:{j.decode()}*"))
            if doomed:
                conn.delete(*doomed)
            figures["redis_keys_removed"] = len(doomed)
        except redis.RedisError as e:
            print(f"could not remove this run's Redis keys ({e})", file=sys.stderr)
    figures["total_s"] = round(time.time() - t0, 1)
    figures["logs"] = str(logs)
    (work / "summary.json").write_text(json.dumps({"pass": ok, "failures": failures, **figures}, indent=2))
    print(json.dumps(figures, indent=2))
    if ok:
        print(f"PASS: container backend + {N_WORKERS} workers, annotate {N_ANNOTATED} → fit {figures['fit_s']}s → retrieve "
              f"{N_PREDICTED} predictions mIoU {figures['predict_miou']}% (> {PRED_MIN}) in {figures['retrieve_s']}s → "
              f"segmenter mIoU {figures['segmenter_miou']}% (> {SEG_MIN}); image {figures['image_mb']} MB; "
              f"total {figures['total_s']}s")
    else:
        print("FAIL: " + "; ".join(failures) + f" (logs: {logs})")
    sys.exit(0 if ok else 1)
PY
exit $rc
