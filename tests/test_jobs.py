"""Fit bookkeeping against a real Redis: N events during a fit cause one more fit, not N; a held lock
defers; a crash leaves the project behind so the retry fits again. (Fitting itself is covered by
tests/e2e against Label Studio; here `fit` only records calls.)"""

import time

import pytest
import redis
from rq.registry import ScheduledJobRegistry

from ls_backend import jobs
from ls_backend.config import Settings
from ls_backend.store import RedisKeys

URL = "redis://127.0.0.1:6379/12"


class RecordingBackend:
    def __init__(self, settings, conn, during_first_fit=0, fail=False):
        self.settings, self.conn, self.calls = settings, conn, 0
        self.during_first_fit, self.fail = during_first_fit, fail

    def fit(self, project):
        self.calls += 1
        if self.fail:
            raise RuntimeError("worker died")
        if self.calls == 1:
            for _ in range(self.during_first_fit):        # events arriving while we fit
                self.conn.incr(RedisKeys.event_seq(project))
        return {"model_version": f"dgan-v{self.calls}"}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    conn = redis.Redis.from_url(URL)
    try:
        conn.ping()
    except redis.RedisError:
        pytest.skip("no Redis")
    conn.flushdb()
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k",
                                  "REDIS_URL": URL, "MODEL_DIR": str(tmp_path), "DGAN_QUEUE": "dgan-jobs-test"})
    yield settings, conn, monkeypatch
    conn.flushdb()


def test_events_during_a_fit_cause_one_more_fit(setup):
    settings, conn, mp = setup
    backend = RecordingBackend(settings, conn, during_first_fit=5)
    mp.setattr(jobs, "_backend", backend)
    conn.set(RedisKeys.event_seq(4), 1)
    result = jobs.fit_project(4)
    assert backend.calls == 2 and [f["model_version"] for f in result["fits"]] == ["dgan-v1", "dgan-v2"]
    assert int(conn.get(RedisKeys.fitted_seq(4))) == 6
    assert jobs.fit_project(4)["fits"] == [] and backend.calls == 2     # caught up: nothing to do


def test_held_lock_defers_and_crash_leaves_project_behind(setup):
    settings, conn, mp = setup
    backend = RecordingBackend(settings, conn)
    mp.setattr(jobs, "_backend", backend)
    conn.set(RedisKeys.event_seq(5), 3)
    other = conn.lock(RedisKeys.fit_lock(5), timeout=30)
    assert other.acquire(blocking=False)
    result = jobs.fit_project(5)
    assert "skipped" in result and backend.calls == 0
    assert ScheduledJobRegistry("dgan-jobs-test", connection=conn).count == 1   # it looks again later
    other.release()
    mp.setattr(jobs, "_backend", RecordingBackend(settings, conn, fail=True))
    with pytest.raises(RuntimeError):
        jobs.fit_project(5)
    assert int(conn.get(RedisKeys.fitted_seq(5)) or 0) == 0                    # still behind → the retry fits
    assert not conn.exists(RedisKeys.fit_lock(5))                              # and the lock is free
    mp.setattr(jobs, "_backend", backend)
    assert len(jobs.fit_project(5)["fits"]) == 1 and int(conn.get(RedisKeys.fitted_seq(5))) == 3


def test_heartbeat_keeps_the_fit_lock_past_its_ttl(setup):
    _, conn, monkeypatch = setup
    monkeypatch.setattr(jobs, "LOCK_TTL_S", 0.6)
    lock = jobs.fit_lock(conn, 42)
    assert lock.acquire(blocking=False)
    with jobs._Heartbeat(lock):
        time.sleep(1.5)                      # 2.5 TTLs: without renewals the lock would be gone
        assert lock.owned() and conn.pttl(RedisKeys.fit_lock(42)) > 0
    lock.release()
    assert not conn.exists(RedisKeys.fit_lock(42))
