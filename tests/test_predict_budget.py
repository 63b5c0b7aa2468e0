"""Backend.predict's time budget, on stubbed models (no generator): what is fetched and what is planned."""

from __future__ import annotations

import numpy as np
import pytest

from ls_backend.backend import Backend, TaskImage
from ls_backend.config import Settings

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="a"/></BrushLabels></View>')


@pytest.fixture
def stubbed(tmp_path):
    """A backend whose models are stubs: tasks with ``seed`` set are cheap, the others need an inversion
    estimated at 1 s (and taking none); every image fetch is counted."""
    b = Backend(Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x" * 40,
                                   "MODEL_DIR": str(tmp_path / "models")}))
    fetched: list[int] = []

    def load(task, _label_map):
        fetched.append(task["id"])
        return TaskImage(task["id"], np.zeros((8, 8, 3), np.uint8), str(task["id"]), task.get("seed"))

    b.interpreter = lambda _p: (1, object())
    b.segmenter_serves = lambda _p, _lm: False
    b.load_task_image = load
    b.needs_inversion = lambda it: it.seed is None
    b.new_task_seconds = lambda: 1.0
    b.predict_items = lambda _p, items, _lm, _fg=None: [{"result": [], "score": 0.0, "model_version": "dgan-v1"}
                                                        for _ in items]
    return b, fetched


def test_a_task_over_the_budget_is_not_fetched_twice(stubbed):
    # 2 cheap tasks and 3 new ones (1 s each) under a 2.5 s budget: the third new one does not fit the first
    # round; it is answered in the next round (the others took no time) from the image already fetched.
    b, fetched = stubbed
    tasks = [{"id": 1, "seed": 1}, {"id": 2, "seed": 2}, {"id": 3}, {"id": 4}, {"id": 5}]
    entries, leftover = b.predict(7, tasks, CONFIG, budget_s=2.5)
    assert len(entries) == 5 and leftover == []
    assert fetched == [1, 2, 3, 4, 5]


def test_the_job_without_a_deadline_measures_no_inversion_estimate(stubbed):
    b, fetched = stubbed

    def no_estimate():
        raise AssertionError("an unlimited budget needs no estimate")

    b.new_task_seconds = no_estimate
    entries, leftover = b.predict(7, [{"id": i} for i in range(10)], CONFIG, budget_s=float("inf"))
    assert len(entries) == 10 and leftover == [] and fetched == list(range(10))


def test_a_measured_cost_goes_stale_and_is_measured_again(tmp_path):
    import time

    from ls_backend.backend import NEW_TASK_ESTIMATE_TTL_S

    b = Backend(Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x" * 40,
                                   "MODEL_DIR": str(tmp_path / "models")}))
    calls: list[bool] = []

    class Timed:
        def invert_seconds_per_image(self, remeasure: bool = False) -> float:
            calls.append(remeasure)
            return 2.0

    b.__dict__["pipeline"] = Timed()
    assert b.new_task_seconds() == 2.0 and calls == [False]          # no measurement yet: the pipeline's timing
    b._new_task_s, b._new_task_at = 500.0, time.time()                # one slow batch (a fit shared the CPU)
    assert b.new_task_seconds() == 500.0 and calls == [False]
    b._new_task_at -= NEW_TASK_ESTIMATE_TTL_S + 1                     # ... later: timed again, not trusted forever
    assert b.new_task_seconds() == 2.0 and calls == [False, True]
