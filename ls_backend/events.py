"""Webhook events: compact records in Redis, a bounded disk journal while Redis is down, and its replay.

An event is stored as a few ids (action, project, task, annotations), never as the request body, so
what one request can put into Redis or onto disk is bounded by construction.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

from redis import Redis

from .config import Settings

log = logging.getLogger(__name__)

# ANNOTATIONS_CREATED (plural) comes from the Data Manager's "Create annotations from predictions",
# i.e. reviewers accepting pre-labels in bulk.
TRAINING_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED",
                              "ANNOTATIONS_DELETED", "START_TRAINING"})
EVENTS_KEPT = 10_000              # newest events kept in Redis (each well under 1 KB)
MAX_IDS_PER_EVENT = 100           # annotation ids recorded per bulk event
MAX_JOURNAL_BYTES = 16 << 20      # the disk journal stops growing here (503 without saving)
JOURNAL_NAME = "pending-events.jsonl"


def _id(value: object) -> int | None:
    """An integer id from a Label Studio payload field (int, "12" or {"id": 12}), else None."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        return int(value)
    return None


def compact_event(body: dict, action: str, project: int | None) -> dict:
    """What is kept of a webhook: when, what, and the ids it names (bounded size)."""
    event: dict = {"received": round(time.time(), 3), "action": action[:64], "project": project}
    annotation = body.get("annotation")
    task = body.get("task")
    if _id(task) is not None:
        event["task"] = _id(task)
    elif isinstance(annotation, dict) and _id(annotation.get("task")) is not None:
        event["task"] = _id(annotation.get("task"))
    if _id(annotation) is not None:
        event["annotation"] = _id(annotation)
    many = body.get("annotations")
    if isinstance(many, list):
        ids = [i for i in (_id(a) for a in many[:MAX_IDS_PER_EVENT]) if i is not None]
        event["annotations"] = ids
        if len(many) > MAX_IDS_PER_EVENT:
            event["annotations_total"] = len(many)
    return event


def record_event(settings: Settings, conn: Redis, event: dict) -> bool:
    """Append the event to the capped list and, for a training action, count it and queue one fit.
    Returns whether it is a training event. Raises RedisError when Redis is unavailable."""
    keys = settings.keys
    training = event.get("action") in TRAINING_ACTIONS and event.get("project") is not None
    pipe = conn.pipeline(transaction=True)
    pipe.rpush(keys.events, json.dumps(event))
    pipe.ltrim(keys.events, -EVENTS_KEPT, -1)
    if training:
        pipe.incr(keys.event_seq(event["project"]))
    pipe.execute()
    if training:
        from .jobs import enqueue_fit

        enqueue_fit(settings, conn, event["project"])
    return training


def journal_path(settings: Settings) -> Path:
    return Path(settings.model_dir) / JOURNAL_NAME


def journal_event(settings: Settings, event: dict) -> Path:
    """Save an event on disk while Redis is down. OSError (disk) or OverflowError (journal full)."""
    path = journal_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > MAX_JOURNAL_BYTES:
        raise OverflowError(f"the journal {path} already holds {path.stat().st_size >> 20} MB of events")
    with open(path, "a") as f:      # one short line per write: O_APPEND keeps concurrent lines whole
        f.write(json.dumps(event) + "\n")
    return path


def replay_journal(settings: Settings, conn: Redis | None = None) -> int:
    """Record and queue the events saved while Redis was down; returns how many.

    The journal is claimed by renaming it to a unique name first, so concurrent callers (threads of
    the app, a worker starting) never replay the same events twice. Claimed files left by a process
    that died mid-replay are replayed too (at worst one extra fit, which finds nothing changed)."""
    from .jobs import redis_from_settings

    path = journal_path(settings)
    claimed = [p for p in sorted(path.parent.glob(JOURNAL_NAME + ".*.replaying")) if _orphaned(p)]
    if path.exists():
        mine = path.with_name(f"{JOURNAL_NAME}.{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:8]}.replaying")
        try:
            path.replace(mine)
            claimed.append(mine)
        except FileNotFoundError:    # another thread claimed it first
            pass
    if not claimed:
        return 0
    conn = conn or redis_from_settings(settings)
    count = 0
    for file in claimed:
        try:
            lines = file.read_text().splitlines()
        except FileNotFoundError:    # replayed by someone else meanwhile
            continue
        for i, line in enumerate(lines):
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("skipping an unreadable line in %s: %.80r", file, line)
                continue
            if not (isinstance(event, dict) and isinstance(event.get("action"), str)):
                continue
            event["project"] = _id(event.get("project"))
            try:
                record_event(settings, conn, event)
            except Exception:
                # Redis went away again: what is not recorded yet goes back into the journal.
                with open(path, "a") as f:
                    f.write("".join(rest + "\n" for rest in lines[i:]))
                file.unlink(missing_ok=True)
                raise
            count += 1
        file.unlink(missing_ok=True)
    return count


def _orphaned(claimed: Path) -> bool:
    """A claimed journal whose replaying process (on this host) is gone."""
    parts = claimed.name[len(JOURNAL_NAME) + 1:].rpartition(".")[0].rsplit("_", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def journal_pending(settings: Settings) -> bool:
    """Cheap check (one stat) used after each successful Redis write."""
    return journal_path(settings).exists()
