"""The ``dgan`` command line: the service commands (Label Studio, Redis) here, the model commands from
``model/cli.py``. Each subcommand imports what it needs when it runs (fast ``--help``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.cli import add_commands as add_model_commands
from model.cli import add_device_option

if TYPE_CHECKING:
    from .client import LabelStudioClient
    from .config import Settings


def _use_device_option(a: argparse.Namespace) -> None:
    """``--device`` of a service command, checked, becomes this process's DGAN_DEVICE: the settings, the
    backend the jobs create and gunicorn's workers all read it from there."""
    if getattr(a, "device", None):
        from model.device import resolve_device

        resolve_device(a.device)               # a wrong one is refused as --device, not as the variable
        os.environ["DGAN_DEVICE"] = a.device


def _cmd_serve(a: argparse.Namespace) -> int:
    from .config import Settings
    from .serve import check_redis, run_gunicorn

    _use_device_option(a)
    settings = Settings.from_env()
    check_redis(settings)
    run_gunicorn(settings, a.host, a.port, a.workers, a.threads)
    return 0


def _cmd_worker(a: argparse.Namespace) -> int:
    from .config import Settings
    from .serve import check_redis, run_worker

    _use_device_option(a)
    settings = Settings.from_env()
    check_redis(settings)
    run_worker(settings, burst=a.burst)
    return 0


def _label_studio(settings: Settings) -> LabelStudioClient:
    from .client import LabelStudioClient

    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)


def _cmd_webhook_secret(a: argparse.Namespace) -> int:
    from .config import WEBHOOK_SECRET_HEADER, Settings

    settings = Settings.from_env()
    if not settings.webhook_secret:
        raise ValueError("DGAN_WEBHOOK_SECRET is not set: set it (and BASIC_AUTH_USER/PASS) as for `dgan serve`")
    url = a.backend_url.rstrip("/") + "/webhook"
    hook = _label_studio(settings).set_webhook_headers(a.project, url, {WEBHOOK_SECRET_HEADER: settings.webhook_secret})
    print(f"project {a.project}: webhook {hook} ({url}) now sends the {WEBHOOK_SECRET_HEADER} header")
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from . import export

    if (a.project is not None) == bool(a.from_synthesis):
        raise ValueError("give exactly one source: --project ID (Label Studio) or --from-synthesis DIR")
    if a.from_synthesis:
        classes, records = export.synthesis_records(a.from_synthesis)
    else:
        from .config import Settings

        settings = Settings.from_env()
        classes, records = export.project_records(_label_studio(settings), a.project, settings,
                                                  include_predictions=a.include_predictions)
    print(json.dumps(export.write(records, classes, a.out, a.format)))
    return 0


def _cmd_push(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .backend import Backend
    from .config import Settings
    from .jobs import queue, redis_from_settings
    from .push import Pusher, ensure_local_storage, push_chunk_job
    from .serve import check_redis

    _use_device_option(a)
    settings = Settings.from_env()
    check_redis(settings)
    backend = Backend(settings)
    doc_root = a.document_root or os.environ.get("DGAN_LS_DOCUMENT_ROOT") or None
    if doc_root:
        ensure_local_storage(backend, a.project, doc_root)
    conn = redis_from_settings(settings)
    pusher = Pusher(backend, conn, doc_root)
    refiner = a.refiner or (backend.refiner_file(a.project) if a.refine else None)
    if refiner:
        backend.load_refiner(refiner)      # a wrong file fails here, before anything is pushed
    run, resumed = pusher.start_or_resume(a.project, a.n, chunk=a.chunk, filter_frac=a.filter, psi=a.psi,
                                          refiner=refiner)
    print(f"{'resuming' if resumed else 'starting'} push run {run.run_id}: {run.n} tasks, seeds from {run.base_seed}, "
          f"{run.n_chunks} chunks of {run.chunk}, model {run.model_version}, images as "
          f"{'Local Storage files' if doc_root else 'data URIs'}"
          + (f", refined by {run.refiner}" if run.refiner else ""))
    if a.queue:
        import json as _json
        from dataclasses import asdict

        q = queue(settings, conn)
        for k in range(run.n_chunks):
            q.enqueue(push_chunk_job, a.project, _json.dumps(asdict(run)), k, job_timeout=3600,
                      description=f"push run {run.run_id} chunk {k}")
        print(f"queued {run.n_chunks} chunk jobs on '{settings.queue}'; start `dgan worker` on any machine")
        return 0
    done_before = sum(run.quota(k) for k in range(run.n_chunks) if pusher.chunk_state(run, k) == "done")
    t0 = time.time()
    with tqdm(total=run.n, initial=done_before, unit="task", desc="push") as bar:
        made = pusher.push(run, on_progress=bar.update)
    print(json.dumps({"run": run.run_id, "imported_now": made, "seconds": round(time.time() - t0, 1),
                      "tasks_per_s": round(made / max(time.time() - t0, 1e-9), 2)}))
    return 0


def _cmd_next(a: argparse.Namespace) -> int:
    from .backend import Backend
    from .config import Settings
    from .next_tasks import format_table, next_tasks

    report = next_tasks(Backend(Settings.from_env()), a.project, a.k,
                        progress=lambda n: print(f"\rscored {n} tasks", end="", file=sys.stderr, flush=True))
    print(file=sys.stderr)
    print(json.dumps(report) if a.json else format_table(report))
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo, stop

    if a.stop:
        stop(Path(a.out))
        return 0
    run_demo(a.out, n_tasks=a.tasks, n_annotated=a.annotate, n_push=a.push, shifted=a.shifted)
    return 0


def _bench_push(a: argparse.Namespace) -> dict[str, Any]:
    """`dgan bench push`: the push stage against a live Label Studio project."""
    from .bench_push import bench_push

    if a.project is None:
        raise ValueError("dgan bench push needs --project ID (a trained project) and the serve env vars")
    _use_device_option(a)
    return bench_push(a.project, a.n or 500, a.rounds)


def _bench_polygons(a: argparse.Namespace) -> dict[str, Any]:
    """`dgan bench polygons`: IoU of polygon predictions against the masks they are traced from."""
    from .bench_polygons import bench_polygons

    return bench_polygons(a.n or 200)


def _bench_push_options(b: argparse.ArgumentParser) -> None:
    b.add_argument("--project", type=project_id, default=None, help="push: a trained Label Studio project")
    b.add_argument("--n", type=int, default=None, help="push: tasks per import (default 500); polygons: masks "
                                                       "(default 200)")
    b.add_argument("--rounds", type=int, default=3, help="push: raw and push imports, back to back (median ratio)")


def _project_images(project: int, limit: int, resolution: int):
    """``dgan refine train --project``: the project's own task images (LABEL_STUDIO_URL/API key from the
    environment) at the generator's resolution, uint8 [N, R, R, 3], or None."""
    from .backend import Backend
    from .config import Settings

    backend = Backend(Settings.from_env())
    if backend.pipeline.resolution != resolution:
        raise SystemExit(f"DGAN_GENERATOR makes {backend.pipeline.resolution} px images but the refiner is trained "
                         f"for a {resolution} px generator: pass the same --generator as DGAN_GENERATOR")
    return backend.project_images(project, limit)


def project_id(text: str) -> int:
    """argparse type of --project: a Label Studio project id (an integer from 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a project id (an integer like 3)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a project id: Label Studio's ids start at 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dgan", description="DatasetGAN labeling backend for Label Studio")
    sub = p.add_subparsers(dest="command", required=True)

    add_model_commands(sub, extra_benches={"push": _bench_push, "polygons": _bench_polygons},
                       bench_options=_bench_push_options, project_images=_project_images)

    d = sub.add_parser("demo", help="the whole loop in a local Label Studio: annotate, train, pre-annotate, push, "
                                    "export; leaves Label Studio running for review")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--tasks", type=int, default=200, help="real (domain) images in the project")
    d.add_argument("--annotate", type=int, default=16, help="tasks annotated with exact masks")
    d.add_argument("--push", type=int, default=1000, help="synthesized tasks pushed for review")
    d.add_argument("--shifted", action="store_true",
                   help="a project whose images drifted from the generator's: the annotated tasks are default-domain "
                        "images, the others shifted-domain ones (the backend measures the drift and trains a SimGAN "
                        "refiner); pre-annotations are scored on the shifted tasks and the push is refined")
    d.add_argument("--stop", action="store_true", help="stop the processes a previous demo left running")
    d.set_defaults(func=_cmd_demo)

    from .config import env_help

    sv = sub.add_parser("serve", help="the Label Studio ML backend (gunicorn)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="environment variables:\n" + env_help())
    sv.add_argument("--host", default="0.0.0.0")
    sv.add_argument("--port", type=int, default=9090)
    sv.add_argument("--workers", type=int, default=1, help="gunicorn processes (each holds the models once)")
    sv.add_argument("--threads", type=int, default=4)
    add_device_option(sv)
    sv.set_defaults(func=_cmd_serve)

    wk = sub.add_parser("worker", help="an RQ worker for fits and bulk predictions (same env as serve)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="environment variables:\n" + env_help())
    wk.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    add_device_option(wk)
    wk.set_defaults(func=_cmd_worker)

    ex = sub.add_parser("export", help="lossless COCO (RLE) or Pascal VOC export",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="--project reads LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY like `dgan serve`")
    ex.add_argument("--project", type=project_id, default=None, help="Label Studio project id")
    ex.add_argument("--from-synthesis", default=None, help="a `dgan synthesize` folder instead of a project")
    ex.add_argument("--format", required=True, choices=["coco", "voc"])
    ex.add_argument("--include-predictions", action="store_true",
                    help="also export tasks that only have predictions (default: reviewed annotations only)")
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=_cmd_export)

    pu = sub.add_parser("push", help="synthesize labeled images and push them as tasks with predictions",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="reads LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY / REDIS_URL / MODEL_DIR like `dgan serve`;\n"
                               "killed mid-run, the same command resumes with no duplicates and no gaps")
    pu.add_argument("--project", type=project_id, required=True)
    pu.add_argument("--n", type=int, required=True, help="tasks to add (after filtering)")
    pu.add_argument("--chunk", type=int, default=500, help="seeds per chunk (one import request each)")
    pu.add_argument("--filter", type=float, default=0.1, help="drop this fraction of each chunk, most uncertain first")
    pu.add_argument("--psi", type=float, default=1.0)
    pu.add_argument("--document-root", default=None,
                    help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (or DGAN_LS_DOCUMENT_ROOT): store "
                         "images there and serve them through a Local Storage connection; default: data URIs")
    pu.add_argument("--queue", action="store_true", help="queue the chunks for `dgan worker`s instead of running here")
    pu.add_argument("--refine", action="store_true",
                    help="push refined images (the project's SimGAN refiner, trained when its task images drifted "
                         "from the generator's): the project's look, the same labels")
    pu.add_argument("--refiner", default=None, help="push images refined by this refiner file (dgan refine train)")
    add_device_option(pu)
    pu.set_defaults(func=_cmd_push)

    nx = sub.add_parser("next", help="the next tasks to label, ranked by the project's latest model",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="reads LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY / MODEL_DIR like `dgan serve`;\n"
                               "unlabeled real tasks only (annotated, skipped and pushed synthetic tasks left out)")
    nx.add_argument("--project", type=project_id, required=True)
    nx.add_argument("--k", type=int, default=16, help="how many tasks (default 16)")
    nx.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    nx.set_defaults(func=_cmd_next)

    wh = sub.add_parser("webhook-secret", help="make a project's Label Studio webhook send DGAN_WEBHOOK_SECRET",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="reads LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY / DGAN_WEBHOOK_SECRET like "
                               "`dgan serve`;\nrun it once per project after connecting the model (creates the "
                               "webhook if missing)")
    wh.add_argument("--project", type=project_id, required=True)
    wh.add_argument("--backend-url", required=True,
                    help="the model URL as entered in Label Studio, e.g. http://ml:9090")
    wh.set_defaults(func=_cmd_webhook_secret)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"dgan {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for people; unexpected ones keep their traceback
        message = _human_error(e)
        if message is None:
            raise
        print(f"dgan {args.command}: error: {message}", file=sys.stderr)
        return 2


def _human_error(e: Exception) -> str | None:
    """The one-line message for an error a user can act on, or None for a bug (re-raised with its traceback)."""
    if isinstance(e, OSError) and not isinstance(e, ConnectionError) and e.filename is not None:
        return f"{e.strerror or type(e).__name__}: {e.filename}" + (f" → {e.filename2}" if e.filename2 else "")
    if isinstance(e, (ValueError, OSError, TimeoutError, RuntimeError)):
        return str(e)
    try:
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover - redis is a dependency
        return None
    if isinstance(e, RedisError):
        return f"Redis: {e} (check REDIS_URL and that Redis is running)"
    return None


if __name__ == "__main__":
    sys.exit(main())
