"""Redis/RQ jobs: fit a project's interpreter, finish large prediction requests through the REST API.

Fit bookkeeping (no event is lost, N events during a fit cause one more fit, not N):
- every training-relevant webhook increments ``event_seq`` and enqueues ``fit_project``;
- ``fit_project`` takes the project's lock (or returns at once when another fit holds it), reads
  ``event_seq``, fits, then records that value as ``fitted_seq``; it loops while ``fitted_seq`` is
  behind. A worker killed mid-fit leaves ``fitted_seq`` behind, so the retried job fits again, and
  the lock's timeout frees the project.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import timedelta

from redis import Redis

from .config import Settings
from .redis_keys import RedisKeys

log = logging.getLogger(__name__)
JOB_TIMEOUT_S = 60 * 60       # RQ job timeout (a fit on many images can take minutes)
FIT_QUEUED_TTL_S = 600        # a queued fit that never started stops deduplicating after this long
LOCK_TTL_S = 90               # fit lock lifetime, renewed by a heartbeat while the fit runs
RECHECK_S = 60                # a fit that found the lock taken looks again this much later
SEGMENTER_MAX_YIELDS = 3      # times a segmenter training restarts for other projects' fits, then it finishes

_backend = None


def get_backend():
    """The worker process's Backend (created on first use, kept for later jobs)."""
    global _backend
    if _backend is None:
        from .backend import Backend

        _backend = Backend(Settings.from_env())
    return _backend


def redis_from_settings(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=10)


def queue(settings: Settings, conn: Redis | None = None):
    from rq import Queue

    return Queue(settings.queue, connection=conn or redis_from_settings(settings), default_timeout=JOB_TIMEOUT_S)


def enqueue_fit(settings: Settings, conn: Redis, project: int) -> str | None:
    """Queue a fit of the project unless one is already waiting (it will see this event too): a flood
    of events queues one job, not one per event. Returns the job id, or None when one was waiting."""
    from rq import Retry

    if not conn.set(settings.keys.fit_queued(project), 1, nx=True, ex=FIT_QUEUED_TTL_S):
        return None
    try:
        job = queue(settings, conn).enqueue(fit_project, project, retry=Retry(max=3, interval=[5, 30, 120]),
                                            job_timeout=JOB_TIMEOUT_S, description=f"fit project {project}")
    except Exception:
        conn.delete(settings.keys.fit_queued(project))
        raise
    conn.zadd(settings.keys.fits_waiting, {str(int(project)): time.time()})
    return job.id


def other_fit_waiting(conn: Redis, keys: RedisKeys, project: int) -> bool:
    """A fit of another project waits in the queue (queued in the last FIT_QUEUED_TTL_S; one that never
    started is forgotten after that, as its dedup key is)."""
    stale = time.time() - FIT_QUEUED_TTL_S
    conn.zremrangebyscore(keys.fits_waiting, "-inf", stale)
    return any(int(p) != int(project) for p in conn.zrangebyscore(keys.fits_waiting, stale, "+inf"))


def fit_lock(conn: Redis, keys: RedisKeys, project: int):
    """The project's fit lock. thread_local=False: the heartbeat thread must see the token to extend it."""
    return conn.lock(keys.fit_lock(project), timeout=LOCK_TTL_S, blocking=False, thread_local=False)


class _Heartbeat:
    """Keeps a Redis lock alive while this process works; a killed worker's lock expires in LOCK_TTL_S."""

    def __init__(self, lock) -> None:
        self.lock, self.stop = lock, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(LOCK_TTL_S / 3):
            try:
                self.lock.extend(LOCK_TTL_S, replace_ttl=True)
            except Exception:  # noqa: BLE001 - lost the lock; the fit still finishes, bookkeeping stays right
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()


def fit_pending(conn: Redis, keys: RedisKeys, project: int) -> bool:
    """A training event of the project that no fit has covered yet (event_seq ahead of fitted_seq)."""
    return int(conn.get(keys.event_seq(project)) or 0) > int(conn.get(keys.fitted_seq(project)) or 0)


def fit_project(project: int) -> dict:
    """RQ job: fit until the project's fitted_seq has caught up with its event_seq."""
    backend = get_backend()
    conn = redis_from_settings(backend.settings)
    keys = backend.settings.keys
    conn.delete(keys.fit_queued(project))     # from now on, a new event queues a new fit job
    conn.zrem(keys.fits_waiting, str(int(project)))
    lock = fit_lock(conn, keys, project)
    fits: list[dict] = []

    def behind() -> bool:
        return fit_pending(conn, keys, project)

    while True:
        if not lock.acquire(blocking=False):
            # Another fit runs (or a killed worker's lock has not expired yet): look again later.
            if behind():
                queue(backend.settings, conn).enqueue_in(timedelta(seconds=RECHECK_S), fit_project, project,
                                                         job_timeout=JOB_TIMEOUT_S)
            return {"project": project, "skipped": "another fit holds the lock; re-checking later", "fits": fits}
        try:
            with _Heartbeat(lock):
                while behind():
                    seq = int(conn.get(keys.event_seq(project)) or 0)
                    t0 = time.time()
                    try:
                        meta = backend.fit(project)
                    except ValueError as e:   # nothing usable to fit yet: record it, do not retry
                        conn.set(keys.last_fit(project), json.dumps({"error": str(e), "at": time.time()}))
                        conn.set(keys.fitted_seq(project), seq)
                        fits.append({"error": str(e)})
                        break
                    conn.set(keys.fitted_seq(project), seq)
                    conn.set(keys.last_fit(project), json.dumps({**meta, "at": time.time()}))
                    fits.append({"model_version": meta["model_version"], **({"version": meta["version"]} if "version" in meta else {}),
                                 "seconds": round(time.time() - t0, 2)})
        finally:
            try:
                lock.release()
            except Exception:  # noqa: BLE001 - lock expired; nothing to release
                pass
        # An event may have arrived between our last check and the release: look once more.
        if not behind():
            fitted = [f["version"] for f in fits if "version" in f]
            if fitted:   # the segmenter trains outside the lock: the next fit never waits for it
                enqueue_segmenter(backend.settings, conn, project, fitted[-1])
            return {"project": project, "fits": fits}


def train_segmenter(project: int, version: int, yields: int = 0) -> dict:
    """RQ job: train the segmenter of fitted version N (see ``Backend.train_segmenter``). It holds no
    lock: it reads version N's saved training images and writes only its own file, atomically. It makes
    way for fits, so that a team that has just annotated never waits minutes behind it:
    - a training event of its own project: it stops within a few steps, and the fit (new version or
      unchanged) queues it again;
    - a fit of another project waiting in the queue: it stops and queues itself again behind that fit,
      at most ``SEGMENTER_MAX_YIELDS`` times (``yields`` counts them), then trains to the end."""
    backend = get_backend()
    conn = redis_from_settings(backend.settings)
    keys = backend.settings.keys
    why: list[str] = []

    def should_stop() -> bool:
        if fit_pending(conn, keys, project):
            why.append("own")
            return True
        if yields < SEGMENTER_MAX_YIELDS and other_fit_waiting(conn, keys, project):
            why.append("other")
            return True
        return False

    result = {"project": project, **backend.train_segmenter(project, version, should_stop=should_stop)}
    if "stopped" in result and why[-1:] == ["other"]:
        result["queued_again"] = enqueue_segmenter(backend.settings, conn, project, version, yields=yields + 1)
        log.info("segmenter of project %s v%s made way for another project's fit; queued again (%d of %d)",
                 project, version, yields + 1, SEGMENTER_MAX_YIELDS)
    return result


def enqueue_segmenter(settings: Settings, conn: Redis, project: int, version: int, yields: int = 0) -> str | None:
    """Queue the segmenter of version N unless DGAN_SEGMENTER=off; returns the job id. ``yields``: how many
    times it has already made way for other projects' fits."""
    from rq import Retry

    if settings.segmenter_recipe == "off":
        return None
    job = queue(settings, conn).enqueue(train_segmenter, args=(project, version),
                                        kwargs={"yields": yields} if yields else {},
                                        retry=Retry(max=2, interval=[30, 120]), job_timeout=JOB_TIMEOUT_S,
                                        description=f"train the segmenter of project {project} v{version}")
    return job.id


def predict_and_import(project: int, task_ids: list[int], label_config: str) -> dict:
    """RQ job: predictions for tasks /predict had no time for, imported through the REST API in bulk
    (500 per request); progress in the job's meta."""
    from rq import get_current_job

    backend = get_backend()
    job = get_current_job()
    tasks = backend.client.tasks_by_id(project, task_ids)
    imported = 0
    for i in range(0, len(tasks), 500):
        part = tasks[i:i + 500]
        entries, _ = backend.predict(project, part, label_config, budget_s=float("inf"))
        preds = [{"task": t["id"], "result": e["result"], "score": e["score"], "model_version": e["model_version"]}
                 for t, e in zip(part, entries) if e.get("result")]
        if preds:
            backend.client.import_predictions(project, preds)
        imported += len(preds)
        if job is not None:
            job.meta.update({"done": i + len(part), "of": len(tasks), "imported": imported})
            job.save_meta()
    return {"project": project, "imported": imported, "tasks": len(task_ids)}


def enqueue_predictions(settings: Settings, conn: Redis, project: int, task_ids: list[int], label_config: str) -> str:
    """Queue predictions for tasks /predict had no time for, at the *front* of the queue: someone pressed
    "Retrieve predictions" and waits for them, so they wait only for the job running now, not for every
    segmenter training queued before them (minutes each on a CPU). Returns the job id."""
    from rq import Retry

    job = queue(settings, conn).enqueue(predict_and_import, project, task_ids, label_config,
                                        retry=Retry(max=3, interval=[5, 30, 120]), job_timeout=JOB_TIMEOUT_S,
                                        description=f"predict {len(task_ids)} tasks of project {project}",
                                        at_front=True)
    return job.id
