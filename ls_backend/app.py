"""Flask app speaking Label Studio 1.23.2's ML backend protocol.

/health /setup /predict /webhook /versions. Nothing slow happens in a request except /predict's
budgeted fast path: webhooks are recorded in Redis and queued in milliseconds; fits run in workers.

Guards, in the order a request meets them: body size (413 before the body is read), credentials
(basic auth; /webhook also takes the project webhook's secret header), the JSON's shape (400 naming
the field), known projects (/webhook), and the pixels a /predict may decode (413). Every error is a
JSON ``{"status": "error", "error": ...}``; nothing answers with a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging

from flask import Flask, Response, jsonify, request
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .backend import Backend, parse_project_id
from .brush import LabelConfigError
from .client import LabelStudioError
from .config import WEBHOOK_SECRET_HEADER, Settings
from .events import compact_event, journal_event, journal_pending, record_event, replay_journal
from .fetch import PixelBudgetExceeded, pixel_budget
from .store import model_version_name

log = logging.getLogger(__name__)
OPEN_PATHS = {"/health", "/"}          # monitoring; /webhook has its own check (basic auth or secret header)
MAX_ACTION_CHARS = 64


class InvalidRequest(ValueError):
    """The request body is not what Label Studio sends; the message names the field and the value."""


def _error(status: int, message: str, headers: dict | None = None) -> Response:
    resp = jsonify({"status": "error", "error": message})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _same(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison that also takes non-ASCII input (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest((given or "").encode("utf-8", "surrogatepass"),
                               (expected or "").encode("utf-8", "surrogatepass"))


def _short(value: object, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "…"


def json_object() -> dict:
    """The request's JSON body as a dict, or InvalidRequest (also for deeply nested or non-UTF-8 bodies)."""
    raw = request.get_data(cache=True)          # RequestEntityTooLarge (413) past the size cap
    cap = request.max_content_length
    if request.content_length is None and cap is not None and len(raw) >= cap:
        request.stream.read(1)                  # a chunked body cut at the cap: 413 if anything follows
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(f"the body is not valid JSON ({type(e).__name__}); send a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"expected a JSON object, got a JSON {type(body).__name__}")
    return body


def project_id(value: object, field: str = "project") -> int:
    """A positive project id from Label Studio's forms ("3.1700000000", 3, {"id": 3})."""
    if isinstance(value, bool) or isinstance(value, (list, float)):
        raise InvalidRequest(f"'{field}' must be a project id like \"3.1700000000\", 3 or {{\"id\": 3}}, "
                         f"got {_short(value)}")
    try:
        project = parse_project_id(value)
    except ValueError:
        raise InvalidRequest(f"'{field}' must be a project id like \"3.1700000000\", 3 or {{\"id\": 3}}, "
                         f"got {_short(value)}") from None
    if project < 1 or project >= 2**53:
        raise InvalidRequest(f"'{field}' {_short(value)} is not a Label Studio project id (ids start at 1)")
    return project


def check_tasks(value: object) -> list[dict]:
    """/predict's ``tasks``: a list of objects with an integer ``id`` and an object ``data``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"'tasks' must be a list of task objects, got {type(value).__name__} {_short(value)}")
    for i, task in enumerate(value):
        if not isinstance(task, dict):
            raise InvalidRequest(f"tasks[{i}] must be a task object {{\"id\": …, \"data\": {{…}}}}, got {_short(task)}")
        tid = task.get("id")
        if isinstance(tid, bool) or not isinstance(tid, int):
            raise InvalidRequest(f"tasks[{i}].id must be an integer, got {_short(tid)}")
        if not isinstance(task.get("data", {}), dict):
            raise InvalidRequest(f"tasks[{i}].data must be an object, got {_short(task.get('data'))}")
    return value


def optional_str(body: dict, field: str) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{field}' must be a string (a Label Studio label config), got {type(value).__name__} "
                         f"{_short(value)}")
    return value


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    """Build the app. Settings come from the environment when not given (validated here, at start)."""
    settings = settings or Settings.from_env()
    app = Flask("dgan-backend")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
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

    def basic_auth_ok() -> bool:
        auth = request.authorization
        return (auth is not None and auth.type == "basic" and _same(auth.username, settings.basic_auth_user)
                & _same(auth.password, settings.basic_auth_pass))

    def replay_pending(conn) -> None:
        """Events journaled while Redis was down are recorded as soon as Redis answers again."""
        if journal_pending(settings):
            try:
                n = replay_journal(settings, conn)
                if n:
                    log.info("replayed %d webhook events saved while Redis was down", n)
            except (RedisError, OSError) as e:
                log.warning("could not replay the pending events yet: %s", e)

    too_large = (f"the request body is larger than {settings.max_request_bytes:,} bytes (DGAN_MAX_REQUEST_BYTES); "
                 "send fewer tasks per request")

    @app.before_request
    def _guard():
        if request.content_length is not None and request.content_length > settings.max_request_bytes:
            return _error(413, too_large, {"Connection": "close"})   # refused before the body is read
        if not settings.auth_enabled or request.path in OPEN_PATHS:
            return None
        if request.path == "/webhook" and settings.webhook_secret and _same(
                request.headers.get(WEBHOOK_SECRET_HEADER), settings.webhook_secret):
            return None
        if basic_auth_ok():
            return None
        what = ("the webhook secret header " + WEBHOOK_SECRET_HEADER + " or basic auth"
                if request.path == "/webhook" else "basic auth credentials")
        return _error(401, f"wrong or missing {what}", {"WWW-Authenticate": 'Basic realm="dgan"'})

    @app.errorhandler(InvalidRequest)
    def _bad_request(e: InvalidRequest):
        return _error(400, str(e))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(e):
        return _error(413, too_large, {"Connection": "close"})

    @app.errorhandler(PixelBudgetExceeded)
    def _too_many_pixels(e: PixelBudgetExceeded):
        return _error(413, str(e))

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        return _error(e.code or 500, f"{e.name}: {e.description}")

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unexpected error in %s %s", request.method, request.path)
        return _error(500, f"internal error ({type(e).__name__}); the backend's log has the details")

    @app.get("/health")
    @app.get("/")
    def health():
        try:
            conn = get_redis()
            redis_ok = bool(conn.ping())
        except RedisError:
            redis_ok = False
        if redis_ok:
            replay_pending(conn)
        return jsonify({"status": "UP", "model_class": "DatasetGAN", "redis": redis_ok})

    @app.post("/setup")
    def setup():
        body = json_object()
        project = project_id(body.get("project"))
        schema = optional_str(body, "schema")
        try:
            result = get_backend().setup(project, schema)
        except LabelConfigError as e:
            return _error(400, str(e))
        except LabelStudioError as e:
            return _error(502, str(e))
        get_backend().store.mark_known(project)
        return jsonify(result)

    @app.post("/predict")
    def predict():
        body = json_object()
        tasks = check_tasks(body.get("tasks"))
        raw_project = body.get("project") or (tasks[0].get("project") if tasks else None)
        project = project_id(raw_project)
        label_config = optional_str(body, "label_config")
        try:
            label_config = label_config or get_backend().client.label_config(project)
            with pixel_budget(settings.max_request_pixels):
                entries, leftover = get_backend().predict(project, tasks, label_config)
        except (LabelConfigError, ValueError) as e:
            return _error(400, str(e))
        except LabelStudioError as e:
            return _error(502, str(e))
        get_backend().store.mark_known(project)
        if leftover:
            from .jobs import enqueue_predictions

            try:
                enqueue_predictions(settings, get_redis(), project, leftover, label_config)
            except RedisError as e:
                log.error("could not queue %d leftover predictions: %s", len(leftover), e)
            # No "result" key: Label Studio skips these entries instead of storing an empty prediction,
            # so the job's imported prediction is the task's only one.
            version = entries[0]["model_version"] if entries else get_backend().queued_version(project, label_config)
            entries += [{"model_version": version, "status": "queued"} for _ in leftover]
        return jsonify({"results": entries})

    @app.post("/webhook")
    def webhook():
        body = json_object()
        action = body.get("action")
        if not isinstance(action, str) or not action or len(action) > MAX_ACTION_CHARS:
            raise InvalidRequest(f"expected a Label Studio webhook with a string 'action' (e.g. ANNOTATION_CREATED), "
                             f"got {_short(action)}")
        project = project_id(body.get("project")) if "project" in body else None
        if project is not None and not get_backend().store.is_known(project):
            return _error(404, f"project {project} has not been set up with this backend (Label Studio calls /setup "
                               "when the model is connected); event ignored")
        event = compact_event(body, action, project)
        try:
            conn = get_redis()
            queued = record_event(settings, conn, event)
        except RedisError as e:
            # Keep the event on disk so it is not lost; it is replayed as soon as Redis answers again.
            try:
                journal = journal_event(settings, event)
            except (OSError, OverflowError) as disk:
                return _error(503, f"Redis at {settings.redis_url} is unavailable ({e}) and the event could not be "
                                   f"saved either ({disk}); it is lost")
            return _error(503, f"Redis at {settings.redis_url} is unavailable ({e}); the event was saved to "
                               f"{journal} and will be processed when Redis is back")
        replay_pending(conn)
        return jsonify({"status": "ok", "action": action, "queued_fit": queued}), 201

    @app.get("/versions")
    def versions():
        """Every model version this backend can answer with: interpreters dgan-vN, segmenters dgan-vN-segmenter."""
        from .backend import segmenter_version_name

        store = get_backend().store
        names, drift = set(), {}
        for project in store.projects():
            for v in store.versions(project):
                names.add(model_version_name(v))
                if store.segmenter_path(project, v).exists():
                    names.add(segmenter_version_name(v))
            latest = store.latest_segmenter(project)
            if latest:   # how far the project's images are from the generator's (model.drift), when measured
                measured = store.version_meta(project, latest).get("segmenter", {}).get("drift")
                if measured:
                    drift[str(project)] = {"model_version": segmenter_version_name(latest), **measured}
        return jsonify({"versions": sorted(names) or [model_version_name(0)], "drift": drift})

    return app
