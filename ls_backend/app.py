"""Flask app speaking Label Studio 1.23.2's ML backend protocol.

/health /setup /predict /webhook /versions. Nothing slow happens in a request except /predict's
budgeted fast path: webhooks are recorded in Redis and queued in milliseconds; fits run in workers.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from pathlib import Path

from flask import Flask, Response, jsonify, request
from redis.exceptions import RedisError

from .backend import Backend, parse_project_id
from .brush import LabelConfigError
from .client import LabelStudioError
from .config import Settings
from .store import RedisKeys, model_version_name

log = logging.getLogger(__name__)
# ANNOTATIONS_CREATED (plural) comes from the Data Manager's "Create annotations from predictions",
# i.e. reviewers accepting pre-labels in bulk.
TRAINING_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                    "START_TRAINING"}
# Label Studio sends its ML webhooks without credentials (only the ML API client sends basic auth), so
# /webhook stays open: it only records an event and queues a fit that reads Label Studio with our own token.
OPEN_PATHS = {"/health", "/webhook"}
EVENTS_KEPT = 100_000


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"status": "error", "error": message}), status


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    """Build the app. Settings come from the environment when not given (validated here, at start)."""
    settings = settings or Settings.from_env()
    app = Flask("dgan-backend")
    state: dict = {"backend": backend}

    def get_backend() -> Backend:
        if state["backend"] is None:
            state["backend"] = Backend(settings)
        return state["backend"]

    def get_redis():
        if "redis" not in state:
            from .jobs import redis_from_settings

            state["redis"] = redis_from_settings(settings)
        return state["redis"]

    @app.before_request
    def _auth():
        if not settings.basic_auth_user or request.path in OPEN_PATHS:
            return None
        auth = request.authorization
        ok = (auth is not None and auth.type == "basic"
              and hmac.compare_digest(auth.username or "", settings.basic_auth_user)
              and hmac.compare_digest(auth.password or "", settings.basic_auth_pass or ""))
        if not ok:
            return Response(json.dumps({"status": "error", "error": "wrong or missing basic auth credentials"}),
                            401, {"WWW-Authenticate": 'Basic realm="dgan"', "Content-Type": "application/json"})
        return None

    @app.get("/health")
    @app.get("/")
    def health():
        try:
            redis_ok = bool(get_redis().ping())
        except RedisError:
            redis_ok = False
        return jsonify({"status": "UP", "model_class": "DatasetGAN", "redis": redis_ok})

    @app.post("/setup")
    def setup():
        body = request.get_json(silent=True) or {}
        try:
            project = parse_project_id(body.get("project"))
            return jsonify(get_backend().setup(project, body.get("schema")))
        except (ValueError, LabelConfigError) as e:
            return _error(400, str(e))
        except LabelStudioError as e:
            return _error(502, str(e))

    @app.post("/predict")
    def predict():
        body = request.get_json(silent=True) or {}
        tasks = body.get("tasks") or []
        try:
            project = parse_project_id(body.get("project") or (tasks[0].get("project") if tasks else None))
            label_config = body.get("label_config") or get_backend().client.label_config(project)
            entries, leftover = get_backend().predict(project, tasks, label_config)
        except LabelConfigError as e:
            return _error(400, str(e))
        except ValueError as e:
            return _error(400, str(e))
        except LabelStudioError as e:
            return _error(502, str(e))
        if leftover:
            from .jobs import enqueue_predictions

            try:
                enqueue_predictions(settings, get_redis(), project, leftover, label_config)
            except RedisError as e:
                log.error("could not queue %d leftover predictions: %s", len(leftover), e)
            # No "result" key: Label Studio skips these entries instead of storing an empty prediction,
            # so the job's imported prediction is the task's only one.
            version = entries[0]["model_version"] if entries else model_version_name(0)
            entries += [{"model_version": version, "status": "queued"} for _ in leftover]
        return jsonify({"results": entries})

    @app.post("/webhook")
    def webhook():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "action" not in body:
            return _error(400, "expected a Label Studio webhook JSON body with an 'action'")
        action = body["action"]
        event = json.dumps({"received": time.time(), **body})
        try:
            project = parse_project_id(body.get("project")) if action in TRAINING_ACTIONS else None
        except ValueError as e:
            return _error(400, str(e))
        try:
            conn = get_redis()
            pipe = conn.pipeline(transaction=True)
            pipe.rpush(RedisKeys.events, event)
            pipe.ltrim(RedisKeys.events, -EVENTS_KEPT, -1)
            if project is not None:
                pipe.incr(RedisKeys.event_seq(project))
            pipe.execute()
            if project is not None:
                from .jobs import enqueue_fit

                enqueue_fit(settings, conn, project)
        except RedisError as e:
            # Keep the event on disk so it is not lost; the worker replays this journal when Redis is back.
            journal = Path(settings.model_dir) / "pending-events.jsonl"
            journal.parent.mkdir(parents=True, exist_ok=True)
            with open(journal, "a") as f:
                f.write(event + "\n")
            return _error(503, f"Redis at {settings.redis_url} is unavailable ({e}); the event was saved to "
                               f"{journal} and will be processed when Redis is back")
        return jsonify({"status": "ok", "action": action, "queued_fit": project is not None}), 201

    @app.get("/versions")
    def versions():
        store = get_backend().store
        names = []
        root = Path(settings.model_dir) / "projects"
        for d in sorted(root.glob("*")) if root.is_dir() else []:
            if d.name.isdigit():
                names += [model_version_name(v) for v in store.versions(int(d.name))]
        return jsonify({"versions": sorted(set(names)) or [model_version_name(0)]})

    return app
