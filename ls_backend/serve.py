"""Process entry points: gunicorn for the app, an RQ worker for jobs, and start-up checks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .config import Settings
from .store import RedisKeys

log = logging.getLogger(__name__)


def check_redis(settings: Settings) -> None:
    """Fail at start, with the URL and what to do, when Redis does not answer."""
    from redis.exceptions import RedisError

    from .jobs import redis_from_settings

    try:
        redis_from_settings(settings).ping()
    except RedisError as e:
        raise ConnectionError(f"Redis at {settings.redis_url} does not answer ({e}); start it "
                              "(e.g. `redis-server --port 6379`) or set REDIS_URL") from e


def run_gunicorn(settings: Settings, host: str, port: int, workers: int = 1, threads: int = 4) -> None:
    from gunicorn.app.base import BaseApplication

    from .app import create_app

    class _App(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("timeout", 180)          # /predict may use Label Studio's whole 100 s budget
            self.cfg.set("accesslog", "-")

        def load(self):
            return create_app(settings)

    _App().run()


def replay_journal(settings: Settings) -> int:
    """Events saved to disk while Redis was down are recorded and queued now. Returns how many."""
    from .app import TRAINING_ACTIONS
    from .backend import parse_project_id
    from .jobs import enqueue_fit, redis_from_settings

    journal = Path(settings.model_dir) / "pending-events.jsonl"
    if not journal.exists():
        return 0
    conn = redis_from_settings(settings)
    processing = journal.with_suffix(".replaying")
    journal.replace(processing)
    lines = processing.read_text().splitlines()
    projects = set()
    for line in lines:
        conn.rpush(RedisKeys.events, line)
        body = json.loads(line)
        if body.get("action") in TRAINING_ACTIONS:
            project = parse_project_id(body.get("project"))
            conn.incr(RedisKeys.event_seq(project))
            projects.add(project)
    for project in projects:
        enqueue_fit(settings, conn, project)
    processing.unlink()
    return len(lines)


def recover_unfitted(settings: Settings) -> list[int]:
    """Projects whose events are ahead of their last fit (a worker died mid-fit): queue a fit again."""
    from .jobs import enqueue_fit, redis_from_settings

    conn = redis_from_settings(settings)
    projects = []
    for key in conn.scan_iter("dgan:p:*:event_seq"):
        project = int(key.decode().split(":")[2])
        if int(conn.get(key) or 0) > int(conn.get(RedisKeys.fitted_seq(project)) or 0):
            enqueue_fit(settings, conn, project)
            projects.append(project)
    return projects


def run_worker(settings: Settings, burst: bool = False) -> None:
    from rq import SimpleWorker

    from .jobs import queue, redis_from_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    replayed = replay_journal(settings)
    if replayed:
        log.info("replayed %d webhook events saved while Redis was down", replayed)
    recovered = recover_unfitted(settings)
    if recovered:
        log.info("queued fits again for projects %s (events newer than their last fit)", recovered)
    # SimpleWorker runs jobs in this process, so the generator and interpreters stay loaded between jobs.
    conn = redis_from_settings(settings)
    SimpleWorker([queue(settings, conn)], connection=conn).work(burst=burst, with_scheduler=True)
