"""The backend with basic auth and a webhook secret, against a real Label Studio 1.23.2: what Label Studio
actually sends passes (setup and predictions with the model connection's basic auth, annotation
webhooks with the project webhook's secret header once `dgan webhook-secret` set it, START_TRAINING
with basic auth), and nothing else does."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import redis
import requests
from label_studio_sdk.converter.brush import mask2rle

from ls_backend.labelstudio import free_port, wait_for
from ls_backend.redis_keys import RedisKeys
from model.images import png_data_uri

pytestmark = pytest.mark.slow

KEYS = RedisKeys("dgan-e2e-auth")
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="thing"/></BrushLabels></View>')
USER, PASSWORD, SECRET = "ml", "pa55-word-for-e2e", "e2e-webhook-secret-0123456789"


@pytest.fixture(scope="module")
def secured_backend(label_studio, e2e_redis_url, tmp_path_factory):
    logs = tmp_path_factory.mktemp("secured")
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "REDIS_URL": e2e_redis_url, "MODEL_DIR": str(logs / "models"), "DGAN_QUEUE": KEYS.prefix,
           "DGAN_REDIS_PREFIX": KEYS.prefix, "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD,
           "DGAN_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "ls_backend.cli", "serve", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=open(logs / "serve.log", "ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(url + "/health", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(up, 60, "the secured backend", every=0.5)
    yield url, env
    proc.terminate()
    proc.wait(10)


def test_label_studio_satisfies_the_backend_auth(label_studio, secured_backend, e2e_redis_url):
    url, env = secured_backend
    conn = redis.Redis.from_url(e2e_redis_url)
    s = requests.Session()
    s.headers["Authorization"] = f"Token {label_studio.token}"
    api = label_studio.url + "/api"
    project = s.post(f"{api}/projects", json={"title": "dgan auth", "label_config": CONFIG}).json()["id"]
    img = np.zeros((32, 32, 3), np.uint8)
    assert s.post(f"{api}/projects/{project}/import", json=[{"image": png_data_uri(img)}] * 3).status_code == 201
    task_ids = sorted(t["id"] for t in s.get(f"{api}/tasks", params={"project": project}).json()["tasks"])
    ml = s.post(f"{api}/ml", json={"url": url, "project": project, "title": "dgan", "auth_method": "BASIC_AUTH",
                                   "basic_auth_user": USER, "basic_auth_pass": PASSWORD})
    assert ml.status_code == 201, ml.text                 # Label Studio's /setup call passed basic auth

    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 4:9] = 255
    result = [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 32,
               "original_height": 32, "image_rotation": 0,
               "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["thing"]}}]

    def seq() -> int:
        return int(conn.get(KEYS.event_seq(project)) or 0)

    # The webhook Label Studio registered has no secret yet: its events are refused.
    assert s.post(f"{api}/tasks/{task_ids[0]}/annotations", json={"result": result}).status_code == 201
    time.sleep(2)
    assert seq() == 0
    out = subprocess.run([sys.executable, "-m", "ls_backend.cli", "webhook-secret", "--project", str(project),
                          "--backend-url", url], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert s.post(f"{api}/tasks/{task_ids[1]}/annotations", json={"result": result}).status_code == 201
    wait_for(lambda: seq() == 1, 20, "the annotation webhook with the secret header", every=0.2)
    # "Start training" goes through the model connection (basic auth), not the webhook.
    assert s.post(f"{api}/ml/{ml.json()['id']}/train", json={}).status_code in (200, 201)
    wait_for(lambda: seq() == 2, 20, "START_TRAINING", every=0.2)
    # A stranger gets nothing in.
    r = requests.post(url + "/webhook", json={"action": "START_TRAINING", "project": {"id": project}}, timeout=5)
    assert r.status_code == 401 and seq() == 2
