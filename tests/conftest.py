"""Shared fixtures: tiny seeded generators (32 px, ~0.1M parameters) that run in milliseconds, and a
private Redis server for the tests that need one."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Iterator

import pytest
import redis
import torch

from model.generator.stylegan2 import Generator, GeneratorConfig

TINY = dict(resolution=32, z_dim=32, w_dim=32, mapping_layers=2, channels={4: 32, 8: 32, 16: 16, 32: 8})


def tiny_generator(seed: int = 0, **overrides) -> Generator:
    """A randomly initialised 32 px generator with non-zero biases and noise strengths."""
    torch.manual_seed(seed)
    G = Generator(GeneratorConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength") or (name.endswith(".bias") and "affine" not in name):
                p.normal_(0, 0.3)
    return G.eval().requires_grad_(False)


@pytest.fixture
def tiny_G() -> Generator:
    return tiny_generator()


# -- a private Redis ------------------------------------------------------------------------------
# Tests never touch a Redis they did not start: a running `dgan demo` or a deployment on 6379 keeps
# every key. The server lives in a temporary folder, keeps nothing on disk and is stopped at the end.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory) -> Iterator[str]:
    """Base URL (no database number) of a redis-server started for this test session only."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); tests use a private one")
    folder = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder), "--logfile", str(folder / "redis.log")])
    url = f"redis://127.0.0.1:{port}"
    conn = redis.Redis.from_url(url + "/0", socket_connect_timeout=0.5)
    deadline = time.time() + 10
    while True:
        try:
            conn.ping()
            break
        except redis.RedisError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"the private redis-server did not start; see {folder / 'redis.log'}") from None
            time.sleep(0.05)
    yield url
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def redis_url(private_redis) -> Iterator[str]:
    """A clean database 0 of the private server for one test (emptied before and after: it is ours)."""
    url = private_redis + "/0"
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    yield url
    conn.flushdb()
