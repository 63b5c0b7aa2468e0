"""Every Redis key name the backend writes, in one place, under one configurable prefix.

The prefix (``DGAN_REDIS_PREFIX``, default ``dgan``) lets several installations, a demo and the
tests share one Redis database without touching each other's keys. RQ's own keys (``rq:…``) are
separated by the queue name (``DGAN_QUEUE``).
"""

from __future__ import annotations

import re

DEFAULT_PREFIX = "dgan"
PREFIX_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}(:[A-Za-z0-9_.\-]{1,64})*")


def check_prefix(prefix: str) -> str:
    """The prefix itself, or ValueError saying what is allowed (no glob characters: it is SCANned)."""
    if not isinstance(prefix, str) or not PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"Redis key prefix {prefix!r} must be letters, digits, '_', '.', '-' in ':'-separated "
                         "parts (e.g. dgan or dgan-staging)")
    return prefix


class RedisKeys:
    """Names of the backend's Redis keys for one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = check_prefix(prefix)

    def __repr__(self) -> str:
        return f"RedisKeys({self.prefix!r})"

    # -- webhooks and fits -------------------------------------------------------------------------
    @property
    def events(self) -> str:
        """List of recent webhook events (compact JSON, capped)."""
        return f"{self.prefix}:events"

    @property
    def projects(self) -> str:
        """Set of project ids Label Studio has set up with this backend (/setup, /predict)."""
        return f"{self.prefix}:projects"

    def event_seq(self, project: int) -> str:
        """Counter of training-relevant events of a project."""
        return f"{self.prefix}:p:{int(project)}:event_seq"

    def fitted_seq(self, project: int) -> str:
        """The event_seq value covered by the project's latest fit."""
        return f"{self.prefix}:p:{int(project)}:fitted_seq"

    def fit_lock(self, project: int) -> str:
        return f"{self.prefix}:p:{int(project)}:fit_lock"

    def fit_queued(self, project: int) -> str:
        """Set while a fit job of the project waits in the queue (one queued fit per project, not one per event)."""
        return f"{self.prefix}:p:{int(project)}:fit_queued"

    @property
    def fits_waiting(self) -> str:
        """Sorted set: projects with a fit job waiting in the queue, scored by when it was queued (a segmenter
        training of another project makes way for them)."""
        return f"{self.prefix}:fits_waiting"

    def last_fit(self, project: int) -> str:
        """JSON summary of the latest fit (or its error)."""
        return f"{self.prefix}:p:{int(project)}:last_fit"

    def event_seq_pattern(self) -> str:
        """SCAN pattern matching every project's event_seq key."""
        return f"{self.prefix}:p:*:event_seq"

    def project_of_event_seq(self, key: str | bytes) -> int:
        """The project id inside an event_seq key."""
        text = key.decode() if isinstance(key, bytes) else key
        return int(text[len(self.prefix) + 3:].split(":")[0])

    # -- push runs ---------------------------------------------------------------------------------
    def push_run(self, project: int) -> str:
        """The project's current (or last) push run, JSON."""
        return f"{self.prefix}:p:{int(project)}:push_run"

    def next_seed(self, project: int) -> str:
        """First seed not yet reserved by a push run of the project."""
        return f"{self.prefix}:p:{int(project)}:next_seed"

    def push_chunk(self, run_id: str, k: int) -> str:
        """State of chunk k of a push run: importing / done."""
        return f"{self.prefix}:push:{run_id}:chunk:{int(k)}"

    def push_chunk_lock(self, run_id: str, k: int) -> str:
        return self.push_chunk(run_id, k) + ":lock"
