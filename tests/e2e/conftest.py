"""End-to-end fixtures: a real Label Studio (started once for these tests), real Redis, and the backend's
own processes (`dgan serve`, `dgan worker`) started as a user would.

Package-scoped: they stop when the last end-to-end test ends. Session-scoped, the worker went on training
the segmenters the tests had queued while the fast tests ran, and slowed them down by minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests

from ls_backend.labelstudio import LabelStudioProcess, find_label_studio, free_port, start_label_studio
from ls_backend.redis_keys import RedisKeys

KEYS = RedisKeys("dgan-e2e")         # the backend's keys in these tests (DGAN_REDIS_PREFIX below)


@pytest.fixture(scope="package")
def label_studio(tmp_path_factory) -> LabelStudioProcess:
    url, token = os.environ.get("DGAN_E2E_LS_URL"), os.environ.get("DGAN_E2E_LS_TOKEN")
    if url and token:   # reuse a running instance (development)
        root = Path(os.environ.get("DGAN_E2E_LS_ROOT", tmp_path_factory.mktemp("lsroot")))
        yield LabelStudioProcess(url, "", "", token, root, root, None, root / "none.log")
        return
    if find_label_studio() is None:
        pytest.skip("label-studio is not installed (.venv-ls/bin/label-studio or LABEL_STUDIO_BIN)")
    ls = start_label_studio(tmp_path_factory.mktemp("label-studio"))
    yield ls
    ls.stop()


@pytest.fixture(scope="package")
def e2e_redis_url(private_redis) -> str:
    """Database 1 of the session's private redis-server (the fast tests use database 0)."""
    return private_redis + "/1"


@pytest.fixture(scope="package")
def redis_conn(e2e_redis_url):
    return redis.Redis.from_url(e2e_redis_url)


class Backend:
    def __init__(self, url: str, env: dict, procs: list[subprocess.Popen], logs: Path) -> None:
        self.url, self.env, self.procs, self.logs = url, env, procs, logs

    def start_worker(self) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "ls_backend.cli", "worker"], env=self.env,
                             stdout=open(self.logs / "worker.log", "ab"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p


@pytest.fixture(scope="package")
def backend(label_studio, redis_conn, e2e_redis_url, tmp_path_factory) -> Backend:
    logs = tmp_path_factory.mktemp("backend")
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "REDIS_URL": e2e_redis_url, "MODEL_DIR": str(logs / "models"), "DGAN_QUEUE": "dgan-e2e",
           "DGAN_REDIS_PREFIX": KEYS.prefix,
           "DGAN_PREDICT_BUDGET_S": "20", "DGAN_INVERSION_STEPS": os.environ.get("DGAN_E2E_INVERSION_STEPS", "20"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    serve = subprocess.Popen([sys.executable, "-m", "ls_backend.cli", "serve", "--host", "127.0.0.1",
                              "--port", str(port)], env=env, stdout=open(logs / "serve.log", "ab"),
                             stderr=subprocess.STDOUT)
    b = Backend(f"http://127.0.0.1:{port}", env, [serve], logs)
    b.start_worker()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if requests.get(b.url + "/health", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        raise RuntimeError(f"dgan serve did not start; see {logs / 'serve.log'}")
    yield b
    stop_processes(b.procs)


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Terminate the processes a fixture started; kill any that has not exited after 10 s."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
