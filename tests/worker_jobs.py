"""Job functions for the worker tests (RQ imports them by name in the worker process)."""

from __future__ import annotations

import time
from pathlib import Path


def spin(marker: str, seconds: float) -> str:
    """A long job: writes ``marker`` when it starts, then works in small steps (like a fit) for ``seconds``."""
    Path(marker).write_text("started")
    deadline = time.time() + seconds
    while time.time() < deadline:
        sum(i * i for i in range(10_000))
    return "finished"
