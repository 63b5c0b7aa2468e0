"""The push stage's pipeline: tasks are encoded while Label Studio ingests the previous request, the first
request leaves early, later ones take what was encoded meanwhile, memory stays bounded, errors stop the
chunk where they happen, and the pushed images and labels are exactly the samples'."""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from PIL import Image

from ls_backend.brush import LabelMap, mask_to_results
from ls_backend.client import LabelStudioError
from ls_backend.push import Pusher, PushRun, encode_png, ordered_map
from ls_backend.redis_keys import RedisKeys
from model.synthesis import Sample

from .test_push import RecordingImports

KEYS = RedisKeys("dgan-test")
LABELS = LabelMap("parts", "image", "image", ("a", "b"))


@pytest.fixture
def conn(redis_url):
    return redis.Redis.from_url(redis_url)


def _samples(n: int, size: int = 16) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(1000 + i, np.zeros((2, 8), np.float32), rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                   rng.integers(0, 3, (size, size), dtype=np.uint8), float(rng.random())) for i in range(n)]


def _run(n: int, storage: str = "datauri") -> PushRun:
    return PushRun("r1", 7, n, 1000, n, 0.0, 1.0, "dgan-v1", storage, 0.0)


class CountingPusher(Pusher):
    """Counts encoded tasks (what the fake Label Studio below looks at); encoding paced at ``encode_s``
    per task (blocks of ``encode_block``), like a real 64 px task (tiny test images would be encoded before the first request left)."""

    def __init__(self, *args, encode_s: float = 0.003, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoded, self.encode_s = 0, encode_s
        self._count_lock = threading.Lock()

    def _tasks(self, run, xs, *args, **kwargs) -> list[dict]:
        time.sleep(self.encode_s * len(xs))
        tasks = super()._tasks(run, xs, *args, **kwargs)
        with self._count_lock:
            self.encoded += len(tasks)
        return tasks


class SlowLabelStudio:
    """An import endpoint that is busy until the pusher has encoded ``wait_for`` more tasks (or gives up
    after ``timeout`` s): if encoding stopped while a request is in flight, a request would time out."""

    def __init__(self, wait_for: int, total: int, timeout: float = 20.0) -> None:
        self.wait_for, self.total, self.timeout = wait_for, total, timeout
        self.requests: list[list[dict]] = []
        self.encoded_during: list[int] = []
        self.pusher: CountingPusher | None = None

    def import_tasks(self, project, tasks):
        start = self.pusher.encoded
        deadline = time.time() + self.timeout
        while self.pusher.encoded < min(start + self.wait_for, self.total) and time.time() < deadline:
            time.sleep(0.002)
        self.encoded_during.append(self.pusher.encoded - start)
        self.requests.append(tasks)
        return list(range(len(tasks)))


def test_encoding_goes_on_while_a_request_is_in_flight_and_requests_grow(conn):
    samples = _samples(200)
    ls = SlowLabelStudio(wait_for=60, total=len(samples))
    pusher = CountingPusher(SimpleNamespace(client=ls, generator_id="g"), conn, keys=KEYS)
    ls.pusher = pusher
    t0 = time.time()
    assert pusher.import_samples(_run(200), 0, samples, LABELS) == 200
    assert time.time() - t0 < 15                                  # no request waited for its timeout
    sizes = [len(r) for r in ls.requests]
    assert sizes[0] == math.ceil(200 * pusher.first_fraction)      # the first request leaves early
    assert ls.encoded_during[0] >= 60                              # encoding went on meanwhile ...
    assert sizes[1] >= sizes[0] and len(sizes) <= 3                # ... and the next request took it all
    assert sum(sizes) == 200 and pusher.requests_made == len(sizes)
    seeds = [t["data"]["dgan_seed"] for r in ls.requests for t in r]
    assert seeds == list(range(1000, 1200))                        # each task once, in seed order
    assert conn.get(KEYS.push_chunk("r1", 0)) == b"done"


def test_when_a_batch_goes_out():
    pusher = Pusher(SimpleNamespace(settings=SimpleNamespace(keys=KEYS)), None)
    pusher.import_batch = 100
    done, busy = Future(), Future()
    done.set_result(10)
    assert not pusher._send_now(49, 100, None, first=50) and pusher._send_now(50, 100, None, first=50)
    assert pusher._send_now(60, 100, done, first=50)           # Label Studio is free: send what is ready
    assert not pusher._send_now(60, 100, busy, first=50)       # busy: keep encoding
    assert not pusher._send_now(60, 30, done, first=50)        # a tail of 30 would cost a request: it waits
    assert not pusher._send_now(20, 100, done, first=50)       # too few to be worth a request
    assert pusher._send_now(100, 300, busy, first=50)          # full: wait for the request in flight
    assert pusher._send_now(3, 0, busy, first=50)              # the last ones


def test_requests_stay_within_the_batch_limit(conn):
    client = RecordingImports()
    pusher = Pusher(SimpleNamespace(client=client, generator_id="g"), conn, keys=KEYS)
    pusher.import_batch, pusher.first_fraction = 40, 0.3
    assert pusher.import_samples(_run(130), 0, _samples(130), LABELS) == 130
    sizes = [len(r) for r in client.requests]
    assert sizes[0] == 39 and max(sizes) <= 40 and sum(sizes) == 130
    assert [t["data"]["dgan_seed"] for t in client.tasks] == list(range(1000, 1130))


def test_pushed_images_and_labels_are_exactly_the_samples(conn, tmp_path):
    samples = _samples(30, size=32)
    client = RecordingImports()
    pusher = Pusher(SimpleNamespace(client=client, generator_id="g"), conn, keys=KEYS)
    pusher.import_samples(_run(30), 0, samples, LABELS)
    for task, x in zip(client.tasks, samples):
        uri = task["data"]["image"]
        assert uri.startswith("data:image/png;base64,")
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
        assert np.array_equal(pixels, x.image)                      # lossless, however fast it was written
        assert task["predictions"][0]["result"] == mask_to_results(x.labels, LABELS)
    # Local Storage: the same pixels in files under the run's folder, URLs in the tasks.
    client = RecordingImports()
    pusher = Pusher(SimpleNamespace(client=client, generator_id="g"), conn, keys=KEYS)
    pusher.import_samples(_run(30, f"local:{tmp_path}"), 1, samples, LABELS)
    folder = Path(tmp_path) / "dgan" / "project-7" / "r1"
    for task, x in zip(client.tasks, samples):
        name = task["data"]["image"].rsplit("/", 1)[1]
        assert task["data"]["image"] == f"/data/local-files/?d=dgan/project-7/r1/{name}"
        assert np.array_equal(np.asarray(Image.open(folder / name)), x.image)


def test_an_encoding_error_stops_the_chunk_and_leaves_it_importing(conn):
    samples = _samples(100)
    samples[70] = Sample(1070, samples[70].ws, np.zeros((16, 16, 5), np.uint8), samples[70].labels, 0.1)  # not RGB
    client = RecordingImports()
    pusher = Pusher(SimpleNamespace(client=client, generator_id="g"), conn, keys=KEYS)
    with pytest.raises(ValueError, match="uint8 RGB image"):
        pusher.import_samples(_run(100), 0, samples, LABELS)
    assert len(client.tasks) <= 70                                 # nothing after the bad sample went out
    assert conn.get(KEYS.push_chunk("r1", 0)) == b"importing"      # a resume reconciles it


def test_a_failed_request_stops_the_chunk_after_it(conn):
    client = RecordingImports(fail_on=1)
    pusher = Pusher(SimpleNamespace(client=client, generator_id="g"), conn, keys=KEYS)
    with pytest.raises(LabelStudioError, match="500"):
        pusher.import_samples(_run(300), 0, _samples(300), LABELS)
    assert len(client.requests) == 1 and pusher.requests_made == 2
    assert conn.get(KEYS.push_chunk("r1", 0)) == b"importing"


def test_ordered_map_keeps_order_stays_bounded_and_raises_where_the_item_is_consumed():
    submitted: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            submitted.append(x)
        if x == 7:
            raise ValueError("item 7")
        return x * x

    with ThreadPoolExecutor(2) as pool:
        out = ordered_map(pool, work, range(20), ahead=3)
        assert [next(out) for _ in range(3)] == [0, 1, 4]
        time.sleep(0.05)
        assert len(submitted) <= 3 + 3                             # never more than `ahead` beyond the consumer
        assert [next(out) for _ in range(4)] == [9, 16, 25, 36]
        with pytest.raises(ValueError, match="item 7"):
            next(out)
    with ThreadPoolExecutor(2) as pool:
        assert list(ordered_map(pool, lambda x: -x, iter([3, 1, 2]), ahead=10)) == [-3, -1, -2]
        assert list(ordered_map(pool, lambda x: x, [], ahead=4)) == []


@pytest.mark.parametrize("shape", [(64, 64, 3), (1, 1, 3), (7, 13, 3), (256, 200, 3)])
def test_png_is_lossless(shape):
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    img[0, :, 0] = 255                                   # wrap-around differences in the "sub" filter
    png = encode_png(img)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert np.array_equal(np.asarray(im), img)
    view = np.ascontiguousarray(np.random.default_rng(2).integers(0, 256, (8, 16, 3), dtype=np.uint8))[:, ::2]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(view)))), view)   # not contiguous


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)])
def test_png_refuses_what_is_not_an_rgb_image(bad):
    with pytest.raises(ValueError, match=r"uint8 RGB image \[H, W, 3\], got"):
        encode_png(bad)
