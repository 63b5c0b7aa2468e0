"""`dgan worker` asked to stop (SIGTERM, as `docker stop` sends before killing 10 s later) stops at once:
the job in progress is abandoned and put back at the front of the queue for the next worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job, JobStatus

ROOT = Path(__file__).resolve().parents[1]


def _worker(redis_url: str, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k",
           "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "models"), "DGAN_QUEUE": "dgan-shutdown",
           "DGAN_REDIS_PREFIX": "dgan-shutdown", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "ls_backend.cli", "worker"], cwd=ROOT, env=env,
                            stdout=open(tmp_path / "worker.log", "ab"), stderr=subprocess.STDOUT)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen, tmp_path: Path) -> float:
    """SIGTERM the worker and return the seconds it took to exit (failing with its log past 10 s)."""
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError("worker still running 10 s after SIGTERM:\n" + (tmp_path / "worker.log").read_text())
    return time.time() - t0


def test_sigterm_abandons_the_running_job_and_queues_it_again(redis_url, tmp_path):
    conn = redis.Redis.from_url(redis_url)
    q = Queue("dgan-shutdown", connection=conn)
    marker = tmp_path / "started"
    job = q.enqueue("tests.worker_jobs.spin", str(marker), 120.0, job_timeout=600)
    proc = _worker(redis_url, tmp_path)
    try:
        assert _wait(marker.exists, 60), (tmp_path / "worker.log").read_text()
        assert q.count == 0
        stopped_s = _stop(proc, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "worker.log").read_text()
    assert stopped_s < 5, log
    assert q.job_ids == [job.id], log                                # back in the queue, at the front
    assert Job.fetch(job.id, connection=conn).get_status() == JobStatus.QUEUED
    assert "abandoned on shutdown and queued again" in log

    # The next worker picks it up (and, stopped too, gives it back again).
    marker.unlink()
    proc = _worker(redis_url, tmp_path)
    try:
        assert _wait(marker.exists, 60)
        assert _stop(proc, tmp_path) < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert q.job_ids == [job.id]


def test_an_idle_worker_stops_at_once(redis_url, tmp_path):
    proc = _worker(redis_url, tmp_path)
    try:
        conn = redis.Redis.from_url(redis_url)
        assert _wait(lambda: any(b"dgan-shutdown" in (conn.hget(k, "queues") or b"")
                                 and conn.hget(k, "state") == b"idle"
                                 for k in conn.keys("rq:worker:*")), 60), (tmp_path / "worker.log").read_text()
        assert _stop(proc, tmp_path) < 5
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
