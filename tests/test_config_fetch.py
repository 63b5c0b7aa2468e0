import base64
import io

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
                           "BASIC_AUTH_USER": "u", "DGAN_GENERATOR": str(tmp_path / "nope.pt")})
    msg = str(e.value)
    for part in ("not an http(s) URL", "LABEL_STUDIO_API_KEY is not set", "DGAN_PREDICT_BUDGET_S='soon'",
                 "BASIC_AUTH_USER and BASIC_AUTH_PASS", "DGAN_GENERATOR"):
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
    for path in ("/tasks/5/resolve/?fileuri=czM6Ly9iL3gucG5n", "/api/projects/1/presign/?fileuri=x"):
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
