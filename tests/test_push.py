"""Push bookkeeping against a real (private) Redis, with a recording stand-in for Label Studio's import
endpoint (the real import is covered by tests/e2e): requests are pipelined in batches, a failed request
leaves the chunk "importing" (so a resume reconciles against the project), big images refuse data URIs."""

from types import SimpleNamespace

import numpy as np
import math

import pytest
import redis

from ls_backend.brush import LabelMap
from ls_backend.client import LabelStudioError
from model.pipeline import certainty
from ls_backend.push import Pusher, PushRun
from ls_backend.redis_keys import RedisKeys
from model.synthesis import Sample

from .conftest import tiny_generator

KEYS = RedisKeys("dgan-test")
LABELS = LabelMap("parts", "image", "image", ("a", "b"))


class RecordingImports:
    def __init__(self, fail_on: int | None = None) -> None:
        self.requests: list[list[dict]] = []
        self.fail_on = fail_on

    def import_tasks(self, project, tasks):
        if self.fail_on is not None and len(self.requests) == self.fail_on:
            raise LabelStudioError("Label Studio answered 500 to import")
        self.requests.append(tasks)
        return list(range(len(tasks)))

    @property
    def tasks(self) -> list[dict]:
        """Every task sent, in request order."""
        return [t for r in self.requests for t in r]


@pytest.fixture
def conn(redis_url):
    return redis.Redis.from_url(redis_url)


def _samples(n: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(1000 + i, np.zeros((2, 8), np.float32), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                   rng.integers(0, 3, (16, 16), dtype=np.uint8), float(rng.random())) for i in range(n)]


def _run() -> PushRun:
    return PushRun("r1", 7, 300, 1000, 300, 0.0, 1.0, "dgan-v1", "datauri", 0.0)


def test_chunk_is_imported_in_pipelined_batches_in_seed_order(conn):
    client = RecordingImports()
    pusher = Pusher(SimpleNamespace(client=client, generator_id="g"), conn, keys=KEYS)
    assert pusher.import_samples(_run(), 0, _samples(300), LABELS) == 300
    sizes = [len(r) for r in client.requests]      # the first request leaves after a quarter of the chunk
    assert sizes[0] == 75 and sum(sizes) == 300 and max(sizes) <= pusher.import_batch
    seeds = [t["data"]["dgan_seed"] for r in client.requests for t in r]
    assert seeds == list(range(1000, 1300))
    task = client.requests[0][0]
    assert task["data"]["image"].startswith("data:image/png;base64,")
    assert {r["value"]["brushlabels"][0] for r in task["predictions"][0]["result"]} <= {"a", "b"}
    first = _samples(1)[0]    # the score shown to reviewers is the certainty of the sample's uncertainty
    assert task["predictions"][0]["score"] == round(certainty(first.uncertainty, len(LABELS.class_names)), 4)
    assert task["predictions"][0]["score"] == round(1 - first.uncertainty / math.log(3), 4)
    assert conn.get(KEYS.push_chunk("r1", 0)) == b"done"


def test_a_failed_request_leaves_the_chunk_importing(conn):
    client = RecordingImports(fail_on=1)
    pusher = Pusher(SimpleNamespace(client=client, generator_id="g"), conn, keys=KEYS)
    with pytest.raises(LabelStudioError, match="500"):
        pusher.import_samples(_run(), 0, _samples(300), LABELS)
    assert len(client.requests) == 1
    assert conn.get(KEYS.push_chunk("r1", 0)) == b"importing"


def test_large_images_need_storage_not_data_uris(conn):
    G = tiny_generator(resolution=512, channels={4: 8, 8: 8, 16: 8, 32: 8, 64: 4, 128: 4, 256: 4, 512: 4})
    pusher = Pusher(SimpleNamespace(generator=G), conn, keys=KEYS)
    with pytest.raises(ValueError, match="512 px.*--document-root"):
        pusher.start_or_resume(7, 100)


def test_push_refine_pushes_the_projects_look_with_unchanged_labels(conn, tmp_path, redis_url):
    """``dgan push --refine``: the same seeds, labels and scores as a plain push; the images are the refiner's
    output of the plain ones; a project without a refiner gets a clear error instead."""
    import base64
    import io

    import torch
    from PIL import Image

    from ls_backend.backend import Backend
    from ls_backend.config import Settings
    from model.generator.checkpoints import save_generator
    from model.refiner import Refiner, RefinerConfig, RefinerNet
    from model.synthesis import latents_for_seeds

    from .test_app import CONFIG, _fit_version

    gen = save_generator(tiny_generator(), tmp_path / "g.pt")
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x" * 40,
                                  "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "models"),
                                  "DGAN_GENERATOR": str(gen), "DGAN_REDIS_PREFIX": "dgan-test"})
    backend = Backend(settings)
    _fit_version(backend, 7, latents_for_seeds(backend.generator, list(range(20, 26))))
    with pytest.raises(ValueError, match="project 7 has no refiner: its segmenter has not measured drift"):
        backend.refiner_file(7)
    net = RefinerNet(RefinerConfig(channels=4, blocks=1))
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.8, -0.5, 0.3]))
    Refiner(net, backend.generator_id).save(backend.store.refiner_path(7, 1))
    assert backend.refiner_file(7) == str(backend.store.refiner_path(7, 1))

    client = RecordingImports()
    client.label_config = lambda project: CONFIG
    backend.client = client                        # Label Studio's HTTP API, recorded (tests/e2e: the real one)
    pusher = Pusher(backend, conn)
    plain = PushRun("plain", 7, 4, 500, 4, 0.0, 1.0, "dgan-v1", "datauri", 0.0)
    refined = PushRun("refined", 7, 4, 500, 4, 0.0, 1.0, "dgan-v1", "datauri", 0.0, backend.refiner_file(7))
    assert pusher.run_chunk(plain, 0) == 4 and pusher.run_chunk(refined, 0) == 4
    tasks = client.tasks
    a = [t for t in tasks if t["data"]["dgan_push_run"] == "plain"]
    b = [t for t in tasks if t["data"]["dgan_push_run"] == "refined"]
    assert len(a) == len(b) == 4

    def image(task):
        raw = base64.b64decode(task["data"]["image"].split(",", 1)[1])
        return np.array(Image.open(io.BytesIO(raw)).convert("RGB"))
    refiner = backend.load_refiner(backend.refiner_file(7))
    for ta, tb in zip(a, b):
        assert ta["data"]["dgan_seed"] == tb["data"]["dgan_seed"] and tb["data"]["dgan_refined"] is True
        assert ta["predictions"] == tb["predictions"]                     # labels and score unchanged
        assert np.array_equal(image(tb), refiner.refine(image(ta)[None])[0])
        assert np.abs(image(tb).astype(int) - image(ta)).mean() > 5       # and visibly recoloured
