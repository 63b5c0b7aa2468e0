"""Hostile and careless requests against the app: every one gets a JSON 4xx that says what was wrong,
never a 500 or a traceback; oversized bodies are refused before they are read; a /predict cannot
decode more pixels than its budget."""

from __future__ import annotations

import io
import json

import pytest
import redis

from ls_backend.app import create_app
from ls_backend.backend import Backend
from ls_backend.config import Settings
from model.generator.checkpoints import save_generator

from .conftest import tiny_generator

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="dark"/><Label value="bright"/></BrushLabels></View>"""


@pytest.fixture
def app_env(tmp_path, redis_url):
    gen = save_generator(tiny_generator(), tmp_path / "g.pt")
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k" * 40,
                                  "REDIS_URL": redis_url, "MODEL_DIR": str(tmp_path / "models"),
                                  "DGAN_GENERATOR": str(gen), "DGAN_QUEUE": "dgan-inputs",
                                  "DGAN_REDIS_PREFIX": "dgan-inputs", "DGAN_MAX_REQUEST_BYTES": "65536"})
    backend = Backend(settings)
    backend.store.mark_known(7)
    return settings, backend, create_app(settings, backend).test_client(), redis.Redis.from_url(redis_url)


BAD = [
    # (path, raw JSON body, the status, a phrase the error must contain)
    ("/predict", "[1, 2]", 400, "expected a JSON object"),
    ("/predict", '{"tasks": "abc", "project": "7.1"}', 400, "'tasks' must be a list"),
    ("/predict", '{"tasks": [1, 2, 3], "project": "7.1"}', 400, "tasks[0] must be a task object"),
    ("/predict", '{"tasks": [{"id": "x", "data": {}}], "project": "7.1"}', 400, "tasks[0].id must be an integer"),
    ("/predict", '{"tasks": [{"id": 1, "data": "image"}], "project": "7.1"}', 400, "tasks[0].data must be an object"),
    ("/predict", '{"tasks": [], "project": "7.1", "label_config": 5}', 400, "'label_config' must be a string"),
    ("/predict", '{"tasks": [], "project": "7.1", "label_config": ["<View/>"]}', 400,
     "'label_config' must be a string"),
    ("/predict", '{"tasks": [], "project": "0.17"}', 400, "ids start at 1"),
    ("/predict", '{"tasks": [], "project": [7]}', 400, "'project' must be a project id"),
    ("/predict", '{"tasks": [], "project": true}', 400, "'project' must be a project id"),
    ("/predict", '{"tasks": []}', 400, "'project' must be a project id"),
    ("/predict", "{" * 50 + "}" * 50, 400, "not valid JSON"),
    ("/predict", "[" * 30_000 + "]" * 30_000, 400, "not valid JSON"),     # nesting past the recursion limit
    ("/predict", b"\xff\xfe not UTF-8", 400, "not valid JSON"),
    ("/webhook", '{"action": ["ANNOTATION_CREATED"], "project": 7}', 400, "string 'action'"),
    ("/webhook", '{"action": {"a": 1}, "project": 7}', 400, "string 'action'"),
    ("/webhook", '{"action": "' + "A" * 65 + '", "project": 7}', 400, "string 'action'"),
    ("/webhook", '{"action": "START_TRAINING", "project": "seven"}', 400, "'project' must be a project id"),
    ("/webhook", '{"action": "START_TRAINING", "project": -3}', 400, "ids start at 1"),
    ("/webhook", '{"action": "START_TRAINING", "project": 99}', 404, "has not been set up"),
    ("/webhook", "[]", 400, "expected a JSON object"),
    ("/setup", '{"project": "7.1", "schema": {"View": 1}}', 400, "'schema' must be a string"),
    ("/setup", '{"project": "7.1", "schema": 42}', 400, "'schema' must be a string"),
    ("/setup", '{"project": {"id": "x"}}', 400, "'project' must be a project id"),
    ("/setup", '"7.1"', 400, "expected a JSON object"),
    ("/setup", '{"project": "7.1", "schema": "<View><Broken"}', 400, ""),
]


@pytest.mark.parametrize("path,body,status,phrase", BAD, ids=[f"{p}:{b[:30]!r}" for p, b, _, _ in BAD])
def test_bad_bodies_get_a_clear_4xx(app_env, path, body, status, phrase):
    _, _, client, conn = app_env
    r = client.post(path, data=body if isinstance(body, bytes) else body.encode(), content_type="application/json")
    assert r.status_code == status, r.get_data(as_text=True)
    payload = r.get_json()
    assert payload["status"] == "error" and phrase in payload["error"]
    assert "Traceback" not in r.get_data(as_text=True)
    assert conn.keys("dgan-inputs:p:*") == []          # nothing recorded for a refused request


def test_unknown_paths_and_methods_answer_json(app_env):
    _, _, client, _ = app_env
    r = client.get("/nope")
    assert r.status_code == 404 and r.get_json()["status"] == "error"
    r = client.get("/predict")
    assert r.status_code == 405 and r.get_json()["status"] == "error"


class CountingStream(io.RawIOBase):
    """A request body of ``size`` spaces that records how much of it the app read."""

    def __init__(self, size: int) -> None:
        self.size, self.pos, self.read_bytes = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.size + offset if whence == 2 else self.pos + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        n = max(0, min(len(buf), self.size - self.pos))
        buf[:n] = b" " * n
        self.pos += n
        self.read_bytes += n
        return n


def test_oversized_bodies_are_refused_before_they_are_read(app_env):
    settings, _, client, _ = app_env
    for path in ("/predict", "/webhook", "/setup"):
        stream = CountingStream(50 << 20)
        r = client.post(path, input_stream=stream, content_type="application/json")
        assert r.status_code == 413 and "DGAN_MAX_REQUEST_BYTES" in r.get_json()["error"]
        assert stream.read_bytes == 0
    # A body that does not announce its size (chunked) is read only up to the cap, then refused.
    from werkzeug.test import create_environ, run_wsgi_app

    stream = CountingStream(50 << 20)
    environ = create_environ("/predict", method="POST", content_type="application/json")
    environ.pop("CONTENT_LENGTH", None)
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    _, status, _ = run_wsgi_app(client.application, environ, buffered=True)
    assert status.startswith("413") and stream.read_bytes <= settings.max_request_bytes + (1 << 16)


def test_a_request_cannot_decode_more_pixels_than_its_budget(app_env):
    """The per-request pixel budget, as /predict applies it, on real decoding (no model needed)."""
    from PIL import Image

    from ls_backend.fetch import PixelBudgetExceeded, decode_image, pixel_budget

    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, "PNG")
    png = buf.getvalue()
    with pixel_budget(25_000):
        decode_image(png, 40_000)
        decode_image(png, 40_000)
        with pytest.raises(PixelBudgetExceeded, match="30,000 pixels, over the limit of 25,000 per request"):
            decode_image(png, 40_000)
    decode_image(png, 40_000)          # outside a request: only the per-image limit applies


def test_settings_refuse_half_configured_auth_and_bad_limits(tmp_path):
    from ls_backend.config import ConfigError

    base = {"LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "k", "MODEL_DIR": str(tmp_path)}
    with pytest.raises(ConfigError, match="DGAN_WEBHOOK_SECRET is not"):
        Settings.from_env({**base, "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"})
    with pytest.raises(ConfigError, match="without BASIC_AUTH_USER"):
        Settings.from_env({**base, "DGAN_WEBHOOK_SECRET": "s" * 20})
    with pytest.raises(ConfigError, match="at least 16 printable"):
        Settings.from_env({**base, "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "DGAN_WEBHOOK_SECRET": "short"})
    with pytest.raises(ConfigError) as e:
        Settings.from_env({**base, "DGAN_REDIS_PREFIX": "a b*", "DGAN_MAX_REQUEST_PIXELS": "10",
                           "DGAN_KEEP_VERSIONS": "0", "DGAN_MAX_REQUEST_BYTES": "ten"})
    for part in ("DGAN_REDIS_PREFIX", "DGAN_MAX_REQUEST_PIXELS=10 is below", "DGAN_KEEP_VERSIONS='0'",
                 "DGAN_MAX_REQUEST_BYTES='ten'"):
        assert part in str(e.value), part
    ok = Settings.from_env({**base, "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "DGAN_WEBHOOK_SECRET": "s" * 20,
                            "DGAN_REDIS_PREFIX": "dgan-staging"})
    assert ok.auth_enabled and ok.keys.event_seq(3) == "dgan-staging:p:3:event_seq"


def _random_value(rng, depth: int = 0):
    pool = [None, True, 0, -1, 7, 2**70, 1.5, "", "7.1", "0.1", "x" * 300, "é☃",
            "<View/>", CONFIG, "START_TRAINING", "ANNOTATION_CREATED"]
    kind = rng.integers(0, 4 if depth < 3 else 1)
    if kind == 0:
        return pool[rng.integers(len(pool))]
    if kind == 1:
        return [_random_value(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    if kind == 2:
        keys = ["id", "data", "project", "image", "annotation", "annotations", "task", "action", "result"]
        return {keys[rng.integers(len(keys))]: _random_value(rng, depth + 1) for _ in range(rng.integers(0, 4))}
    return {"id": int(rng.integers(1, 100)), "data": {"image": pool[rng.integers(len(pool))]}}


def test_random_bodies_never_get_a_raw_500(app_env):
    """A seeded fuzz over the fields Label Studio sends: every answer is JSON, none is a 500."""
    import numpy as np

    _, _, client, _ = app_env
    rng = np.random.default_rng(0)
    fields = {"/predict": ["tasks", "project", "label_config", "params"], "/setup": ["project", "schema"],
              "/webhook": ["action", "project", "annotation", "annotations", "task"]}
    for _ in range(150):
        for path, names in fields.items():
            body = {n: _random_value(rng) for n in names if rng.random() < 0.8}
            if path == "/predict" and rng.random() < 0.5:      # well-formed around one random field
                body = {"tasks": [_random_value(rng, 3) for _ in range(2)], "project": "7.1", "label_config": CONFIG,
                        **{names[rng.integers(len(names))]: _random_value(rng)}}
            r = client.post(path, json=body)
            assert r.status_code != 500 and r.is_json and "Traceback" not in r.get_data(as_text=True), (path, body)
