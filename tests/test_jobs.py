"""Fit bookkeeping against a real (private) Redis: N events during a fit cause one more fit, not N; a held lock
defers; a crash leaves the project behind so the retry fits again. (Fitting itself is covered by
tests/e2e against Label Studio; here `fit` only records calls.)"""

import time

import pytest
import redis
from rq.registry import ScheduledJobRegistry

from ls_backend import jobs
from ls_backend.config import Settings


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
                self.conn.incr(self.settings.keys.event_seq(project))
        return {"model_version": f"dgan-v{self.calls}"}


@pytest.fixture
def setup(tmp_path, monkeypatch, redis_url):
    conn = redis.Redis.from_url(redis_url)
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k",
                                  "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path), "DGAN_QUEUE": "dgan-jobs-test",
                                  "DGAN_REDIS_PREFIX": "dgan-jobs-test"})
    return settings, conn, monkeypatch


def test_events_during_a_fit_cause_one_more_fit(setup):
    settings, conn, mp = setup
    K = settings.keys
    backend = RecordingBackend(settings, conn, during_first_fit=5)
    mp.setattr(jobs, "_backend", backend)
    conn.set(K.event_seq(4), 1)
    result = jobs.fit_project(4)
    assert backend.calls == 2 and [f["model_version"] for f in result["fits"]] == ["dgan-v1", "dgan-v2"]
    assert int(conn.get(K.fitted_seq(4))) == 6
    assert jobs.fit_project(4)["fits"] == [] and backend.calls == 2     # caught up: nothing to do


def test_held_lock_defers_and_crash_leaves_project_behind(setup):
    settings, conn, mp = setup
    K = settings.keys
    backend = RecordingBackend(settings, conn)
    mp.setattr(jobs, "_backend", backend)
    conn.set(K.event_seq(5), 3)
    other = conn.lock(K.fit_lock(5), timeout=30)
    assert other.acquire(blocking=False)
    result = jobs.fit_project(5)
    assert "skipped" in result and backend.calls == 0
    assert ScheduledJobRegistry("dgan-jobs-test", connection=conn).count == 1   # it looks again later
    other.release()
    mp.setattr(jobs, "_backend", RecordingBackend(settings, conn, fail=True))
    with pytest.raises(RuntimeError):
        jobs.fit_project(5)
    assert int(conn.get(K.fitted_seq(5)) or 0) == 0                    # still behind → the retry fits
    assert not conn.exists(K.fit_lock(5))                              # and the lock is free
    mp.setattr(jobs, "_backend", backend)
    assert len(jobs.fit_project(5)["fits"]) == 1 and int(conn.get(K.fitted_seq(5))) == 3


def test_heartbeat_keeps_the_fit_lock_past_its_ttl(setup):
    settings, conn, monkeypatch = setup
    K = settings.keys
    monkeypatch.setattr(jobs, "LOCK_TTL_S", 0.6)
    lock = jobs.fit_lock(conn, K, 42)
    assert lock.acquire(blocking=False)
    with jobs._Heartbeat(lock):
        time.sleep(1.5)                      # 2.5 TTLs: without renewals the lock would be gone
        assert lock.owned() and conn.pttl(K.fit_lock(42)) > 0
    lock.release()
    assert not conn.exists(K.fit_lock(42))


def test_a_flood_of_events_queues_one_fit_per_project(setup):
    settings, conn, mp = setup
    K = settings.keys
    q = jobs.queue(settings, conn)
    ids = [jobs.enqueue_fit(settings, conn, 8) for _ in range(50)]
    assert ids[0] is not None and ids[1:] == [None] * 49 and q.count == 1
    assert jobs.enqueue_fit(settings, conn, 9) is not None and q.count == 2     # another project: its own
    # Once the job starts, the next event queues the next fit (it may arrive after the fit read event_seq).
    mp.setattr(jobs, "_backend", RecordingBackend(settings, conn))
    jobs.fit_project(8)
    assert not conn.exists(K.fit_queued(8))
    assert jobs.enqueue_fit(settings, conn, 8) is not None and q.count == 3


def test_installations_with_different_prefixes_share_a_redis_without_touching_each_other(setup, tmp_path):
    settings, conn, mp = setup
    other = Settings(**{**settings.__dict__, "redis_prefix": "dgan-other", "queue": "dgan-other"})
    conn.set(other.keys.event_seq(4), 7)
    conn.set(other.keys.next_seed(4), 123)
    before = {k: conn.dump(k) for k in conn.keys("dgan-other*")}
    backend = RecordingBackend(settings, conn)
    mp.setattr(jobs, "_backend", backend)
    conn.set(settings.keys.event_seq(4), 2)
    assert jobs.enqueue_fit(settings, conn, 4) is not None
    jobs.fit_project(4)
    assert backend.calls == 1 and int(conn.get(settings.keys.fitted_seq(4))) == 2
    assert {k: conn.dump(k) for k in conn.keys("dgan-other*")} == before
    assert jobs.queue(other, conn).count == 0


class SegmenterBackend(RecordingBackend):
    """fit returns a version; train_segmenter records whether its should_stop saw a waiting fit and, with
    ``stops``, stops then (as Backend.train_segmenter does)."""

    def __init__(self, settings, conn, stops=False):
        super().__init__(settings, conn)
        self.stop_answers, self.stops = [], stops

    def fit(self, project):
        self.calls += 1
        return {"model_version": f"dgan-v{self.calls}", "version": self.calls}

    def train_segmenter(self, project, version, should_stop=None):
        self.stop_answers.append(should_stop())
        if self.stops and self.stop_answers[-1]:
            return {"model_version": f"dgan-v{version}-segmenter", "stopped": "a fit is waiting"}
        return {"model_version": f"dgan-v{version}-segmenter"}


def test_a_fit_queues_the_segmenter_which_makes_way_for_waiting_fits(setup):
    settings, conn, mp = setup
    K = settings.keys
    backend = SegmenterBackend(settings, conn)
    mp.setattr(jobs, "_backend", backend)
    conn.set(K.event_seq(6), 2)
    q = jobs.queue(settings, conn)
    before = q.count
    jobs.fit_project(6)
    queued = q.jobs[-1]
    assert q.count == before + 1 and queued.func_name == "ls_backend.jobs.train_segmenter" and queued.args == (6, 1)
    assert jobs.train_segmenter(6, 1)["model_version"] == "dgan-v1-segmenter"
    conn.incr(K.event_seq(6))                          # an annotation arrives: the segmenter job yields
    jobs.train_segmenter(6, 1)
    assert backend.stop_answers == [False, True]
    settings.segmenter_recipe = "off"
    assert jobs.enqueue_segmenter(settings, conn, 6, 1) is None


def test_a_segmenter_makes_way_for_another_projects_fit_and_queues_itself_behind_it(setup):
    settings, conn, mp = setup
    K = settings.keys
    backend = SegmenterBackend(settings, conn, stops=True)
    mp.setattr(jobs, "_backend", backend)
    q = jobs.queue(settings, conn)
    q.empty()
    conn.delete(K.fits_waiting)
    conn.incr(K.event_seq(8))
    jobs.enqueue_fit(settings, conn, 8)                       # project 8's team annotated: its fit waits
    out = jobs.train_segmenter(6, 1)                          # project 6's segmenter stops for it ...
    assert out["stopped"] and out["queued_again"]
    order = [(j.func_name.rsplit(".", 1)[1], j.args, j.kwargs) for j in q.jobs]
    assert order == [("fit_project", (8,), {}), ("train_segmenter", (6, 1), {"yields": 1})]   # ... and goes behind it
    assert not jobs.other_fit_waiting(conn, K, 8)             # its own fit does not count as another's
    jobs.fit_project(8)                                        # the fit starts: no longer waiting
    assert conn.zcard(K.fits_waiting) == 0
    assert jobs.train_segmenter(6, 1, yields=1) == {"project": 6, "model_version": "dgan-v1-segmenter"}
    # After SEGMENTER_MAX_YIELDS restarts it trains to the end whatever waits.
    conn.incr(K.event_seq(9))
    jobs.enqueue_fit(settings, conn, 9)
    done = jobs.train_segmenter(6, 1, yields=jobs.SEGMENTER_MAX_YIELDS)
    assert "stopped" not in done and backend.stop_answers[-1] is False
    # A fit queued long ago that never started (its worker gone) no longer holds segmenters back.
    conn.zadd(K.fits_waiting, {"9": time.time() - jobs.FIT_QUEUED_TTL_S - 1})
    assert not jobs.other_fit_waiting(conn, K, 6)


def test_retrieved_predictions_go_ahead_of_queued_segmenter_trainings(setup):
    settings, conn, _ = setup
    q = jobs.queue(settings, conn)
    q.empty()
    jobs.enqueue_segmenter(settings, conn, 2, 2)               # another project's segmenter, minutes of training
    jobs.enqueue_segmenter(settings, conn, 3, 1)               # this project's own, queued by its fit
    jobs.enqueue_predictions(settings, conn, 3, [11, 12], "<View/>")   # then "Retrieve predictions"
    order = [(j.func_name.rsplit(".", 1)[1], j.args[:2]) for j in q.jobs]
    assert order == [("predict_and_import", (3, [11, 12])), ("train_segmenter", (2, 2)), ("train_segmenter", (3, 1))]
