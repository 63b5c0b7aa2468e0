"""Running the tests (or a second installation, or the demo) beside a running demo changes none of its
Redis state: tests use a private redis-server, the demo and every installation keep their keys under
their own prefix and never clear a database."""

from __future__ import annotations

import re
from pathlib import Path

import redis

from ls_backend.demo import demo_namespace
from ls_backend.redis_keys import RedisKeys

ROOT = Path(__file__).resolve().parents[1]


def test_demo_namespace_is_its_own_and_follows_its_label_studio(tmp_path):
    first = demo_namespace(tmp_path / "ls")
    assert first == demo_namespace(tmp_path / "ls")                  # the same Label Studio: the same keys
    assert first.startswith("dgan-demo-") and RedisKeys(first).prefix == first
    assert demo_namespace(tmp_path / "other-ls") != first            # a fresh one: fresh keys, no collisions


def test_no_code_clears_a_redis_database_it_did_not_create():
    """Only tests/conftest.py flushes, and only the private server it started itself."""
    offenders = []
    for path in [*ROOT.glob("ls_backend/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("scripts/**/*.py")]:
        if path == ROOT / "tests" / "conftest.py" or path == Path(__file__):
            continue
        text = path.read_text()
        if re.search(r"\.flush(db|all)\(", text) or re.search(r"127\.0\.0\.1:6379/\d", text) and "tests" in path.parts:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_test_redis_is_private(redis_url):
    """The fixture's server is not the shared one on 6379 that a demo or a deployment uses."""
    conn = redis.Redis.from_url(redis_url)
    port = conn.connection_pool.connection_kwargs["port"]
    assert port != 6379 and int(conn.config_get("port")["port"]) == port
