"""Process entry points: gunicorn for the app, an RQ worker for jobs, and start-up checks."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime, timezone

from .config import Settings
from .events import replay_journal

log = logging.getLogger(__name__)
JOURNAL_POLL_S = 5.0          # how often a worker looks for events journaled while Redis was down

__all__ = ["check_redis", "run_gunicorn", "replay_journal", "recover_unfitted", "run_worker", "JobAbandoned"]


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
            self.cfg.set("graceful_timeout", 8)   # `docker stop` waits 10 s before it kills
            self.cfg.set("accesslog", "-")

        def load(self):
            return create_app(settings)

    _App().run()


def recover_unfitted(settings: Settings) -> list[int]:
    """Projects whose events are ahead of their last fit (a worker died mid-fit): queue a fit again."""
    from .jobs import enqueue_fit, redis_from_settings

    conn = redis_from_settings(settings)
    keys = settings.keys
    projects = []
    for key in conn.scan_iter(keys.event_seq_pattern()):
        try:
            project = keys.project_of_event_seq(key)
        except ValueError:
            continue
        if int(conn.get(key) or 0) > int(conn.get(keys.fitted_seq(project)) or 0):
            enqueue_fit(settings, conn, project)
            projects.append(project)
    return projects


class JobAbandoned(BaseException):
    """Raised inside a running job when its worker is asked to stop; the job goes back to the queue.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in a job swallows it."""


def worker_class() -> type:
    """An RQ SimpleWorker that stops within a second or two of SIGTERM/SIGINT (``docker stop`` gives 10 s):
    the job in progress is abandoned and put back at the front of its queue for the next worker. Our
    jobs are safe to run again: fits are idempotent, push chunks are exactly-once, predictions are
    re-imported."""
    from rq import SimpleWorker
    from rq.exceptions import InvalidJobOperation

    class DganWorker(SimpleWorker):
        _running = None
        _abandon = False

        def execute_job(self, job, queue):
            self._running, self._abandon = job, False
            try:
                super().execute_job(job, queue)
            except JobAbandoned:
                pass                                 # the signal came before the job itself started
            finally:
                self._running = None
            if self._abandon:
                try:
                    try:
                        job.requeue(at_front=True)       # from the failed registry, where RQ put it
                    except InvalidJobOperation:
                        queue.enqueue_job(job, at_front=True)
                    log.warning("job %s (%s) abandoned on shutdown and queued again", job.id, job.description)
                except Exception as e:  # noqa: BLE001 - Redis gone: recover_unfitted queues fits at the next start
                    log.error("job %s abandoned on shutdown could not be queued again: %s", job.id, e)

        def unsubscribe(self):
            # RQ's own waits up to its pubsub thread's 60 s poll when the thread has not seen its subscription
            # confirmed yet (redis-py >= 8 joins it with no timeout), past `docker stop`'s 10 s. Bound it.
            thread = self.pubsub_thread
            if thread is None:
                return
            try:
                self.pubsub.unsubscribe()
            except Exception as e:  # noqa: BLE001 - Redis gone at shutdown: nothing left to unsubscribe from
                log.debug("unsubscribe at shutdown failed: %s", e)
            try:
                thread.stop(timeout=1)
            except TypeError:                        # redis-py < 8: stop() takes no timeout and does not join
                thread.stop()
            thread.join(timeout=1)                   # a daemon thread: still blocked, it dies with the process
            self.pubsub.close()

        def request_stop(self, signum, frame):
            job = self._running
            if job is None:
                return super().request_stop(signum, frame)
            self._shutdown_requested_date = datetime.now(timezone.utc)
            self._stop_requested = True
            self._stopped_job_id = job.id            # STOPPED, not retried by RQ: requeued by execute_job
            self._abandon = True
            signal.signal(signal.SIGINT, self.request_force_stop)
            signal.signal(signal.SIGTERM, self.request_force_stop)
            if self.scheduler:
                self.stop_scheduler()
            raise JobAbandoned(f"worker asked to stop (signal {signum}) during job {job.id}")

    return DganWorker


def _watch_journal(settings: Settings, stop: threading.Event) -> None:
    """Replay events journaled by the app while Redis was down, as soon as Redis answers again."""
    from redis.exceptions import RedisError

    while not stop.wait(JOURNAL_POLL_S):
        try:
            n = replay_journal(settings)
            if n:
                log.info("replayed %d webhook events saved while Redis was down", n)
        except (RedisError, OSError) as e:
            log.debug("journal replay postponed: %s", e)


def run_worker(settings: Settings, burst: bool = False) -> None:
    from .jobs import queue, redis_from_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    replayed = replay_journal(settings)
    if replayed:
        log.info("replayed %d webhook events saved while Redis was down", replayed)
    recovered = recover_unfitted(settings)
    if recovered:
        log.info("queued fits again for projects %s (events newer than their last fit)", recovered)
    stop = threading.Event()
    threading.Thread(target=_watch_journal, args=(settings, stop), daemon=True, name="dgan-journal").start()
    # SimpleWorker runs jobs in this process, so the generator and interpreters stay loaded between jobs.
    conn = redis_from_settings(settings)
    try:
        worker_class()([queue(settings, conn)], connection=conn).work(burst=burst, with_scheduler=True)
    finally:
        stop.set()
