import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from ls_backend.config import ConfigError, Settings
from ls_backend.fetch import ImageFetchError, decode_image, fetch_image_bytes


def _png(w=8, h=6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_settings_validation_names_each_problem(tmp_path):
    with pytest.raises(ConfigError) as e:
        Settings.from_env({"LABEL_STUDIO_URL": "localhost:8080", "DGAN_PREDICT_BUDGET_S": "soon",
                           "BASIC_AUTH_USER": "u", "DGAN_GENERATOR": str(tmp_path / "nope.pt"),
                           "DGAN_POLYGON_TOLERANCE": "50"})
    msg = str(e.value)
    for part in ("not an http(s) URL", "LABEL_STUDIO_API_KEY is not set", "DGAN_PREDICT_BUDGET_S='soon'",
                 "BASIC_AUTH_USER and BASIC_AUTH_PASS", "DGAN_GENERATOR", "DGAN_POLYGON_TOLERANCE='50' is out of range"):
        assert part in msg, part
    s = Settings.from_env({"LABEL_STUDIO_URL": "http://ls:8080/", "LABEL_STUDIO_API_KEY": "k",
                           "MODEL_DIR": str(tmp_path), "DGAN_ALLOWED_ROOTS": str(tmp_path)})
    assert s.label_studio_url == "http://ls:8080" and s.allowed_roots == [tmp_path.resolve()]
    assert s.predict_budget_s == 60.0 and s.redis_url.startswith("redis://")


def test_fetch_refuses_foreign_hosts_and_paths(tmp_path):
    ls = "http://127.0.0.1:8080"
    with pytest.raises(ImageFetchError, match="not the Label Studio host"):
        fetch_image_bytes("http://169.254.169.254/latest/meta-data", ls, {}, [])
    with pytest.raises(ImageFetchError, match="outside the allowed folders"):
        fetch_image_bytes("/etc/passwd", ls, {}, [tmp_path])
    (tmp_path / "a.png").write_bytes(_png())
    assert fetch_image_bytes(str(tmp_path / "a.png"), ls, {}, [tmp_path]) == _png()
    uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert decode_image(fetch_image_bytes(uri, ls, {}, []), 10**6).shape == (6, 8, 3)
    with pytest.raises(ImageFetchError, match="cannot reach Label Studio"):
        fetch_image_bytes("/data/upload/1/x.png", "http://127.0.0.1:9", {}, [], timeout=2)
    # Cloud-storage tasks: Label Studio's proxy/presign paths go to Label Studio, not the local disk.
    for path in ("/tasks/5/resolve/?fileuri=czM6Ly9iL3gucG5n", "/projects/1/presign/?fileuri=x"):
        with pytest.raises(ImageFetchError, match="cannot reach Label Studio"):
            fetch_image_bytes(path, "http://127.0.0.1:9", {}, [tmp_path], timeout=2)
    with pytest.raises(ImageFetchError, match="outside the allowed folders"):
        fetch_image_bytes("file:///etc/passwd", ls, {}, [tmp_path])


def test_decode_refuses_bombs_and_junk():
    with pytest.raises(ImageFetchError, match="exceeds the limit"):
        decode_image(_png(300, 300), max_pixels=10_000)
    with pytest.raises(ImageFetchError, match="not a readable image"):
        decode_image(b"GIF89a garbage", max_pixels=10**6)
    img = decode_image(_png(), 10**6)
    assert img.dtype == np.uint8 and (img[0, 0] == [10, 20, 30]).all()


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in web server (real HTTP) that records every request: Label Studio's media paths answer
    with an image or a redirect, everything else with a secret."""

    routes: dict = {}
    seen: list = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).seen.append((self.headers.get("Host"), self.path, self.headers.get("Authorization")))
        status, headers, body = type(self).routes.get(self.path, (200, {}, b"the admin token"))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    """Two local HTTP servers: "Label Studio" and "storage" (another host)."""
    made = []
    for _ in range(2):
        handler = type("H", (_Recorder,), {"routes": {}, "seen": []})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append((f"http://127.0.0.1:{srv.server_address[1]}", handler, srv))
    yield made
    for _, _, srv in made:
        srv.shutdown()


def test_only_label_studio_media_paths_are_fetched_with_the_token(servers, tmp_path):
    (ls, lsh, _), (storage, sth, _) = servers
    token = {"Authorization": "Token admin-secret"}
    lsh.routes.update({
        "/data/upload/1/a.png": (200, {}, _png()),
        "/data/upload/1/to-api.png": (302, {"Location": "/api/current-user/token"}, b""),
        "/data/upload/1/to-storage.png": (302, {"Location": storage + "/bucket/a.png"}, b""),
        "/tasks/5/resolve/?fileuri=czM6Ly9i": (303, {"Location": storage + "/bucket/a.png?sig=1"}, b""),
    })
    sth.routes.update({"/bucket/a.png?sig=1": (200, {}, _png())})
    assert fetch_image_bytes("/data/upload/1/a.png", ls, token, []) == _png()
    # Label Studio's API and pages, however spelled, are refused before any request, with the same
    # message whether the path exists or not.
    for value in ("/api/current-user/token", f"{ls}/api/current-user/token", f"{ls}/api/projects/1/",
                  "/data/upload/../../api/current-user/token", "/data/upload/%2e%2e/%2e%2e/api/current-user/token",
                  f"{ls}/data/upload/..%2f..%2fapi/current-user/token", f"{ls}/user/account", f"{ls}/data/export/x",
                  "/tasks/5/annotations/", f"{ls}/projects/1/"):
        before = len(lsh.seen)
        with pytest.raises(ImageFetchError, match="media paths|outside the allowed folders"):
            fetch_image_bytes(value, ls, token, [tmp_path])
        assert len(lsh.seen) == before, value
    # A redirect inside Label Studio must stay on a media path; leaving it is only for storage
    # resolve/presign paths (presigned URLs), and the token never goes along.
    with pytest.raises(ImageFetchError, match="not one of its media paths"):
        fetch_image_bytes("/data/upload/1/to-api.png", ls, token, [])
    with pytest.raises(ImageFetchError, match="to another host"):
        fetch_image_bytes("/data/upload/1/to-storage.png", ls, token, [])
    assert all(path != "/api/current-user/token" for _, path, _ in lsh.seen)
    assert fetch_image_bytes("/tasks/5/resolve/?fileuri=czM6Ly9i", ls, token, []) == _png()
    assert sth.seen == [(storage[len("http://"):], "/bucket/a.png?sig=1", None)]
