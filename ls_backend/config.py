"""Service configuration from environment variables, validated once at start with clear errors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .redis_keys import DEFAULT_PREFIX, RedisKeys, check_prefix


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable and what to set."""


ENV_DOC = {
    "LABEL_STUDIO_URL": "Base URL of Label Studio as the backend reaches it, e.g. http://localhost:8080 (required)",
    "LABEL_STUDIO_API_KEY": "API key (legacy token or personal access token) of a user of that Label Studio (required)",
    "REDIS_URL": "Redis for events, locks and jobs (default redis://127.0.0.1:6379/0)",
    "MODEL_DIR": "Where per-project state lives: latents, interpreter versions (default ./dgan-models)",
    "DGAN_GENERATOR": "Generator checkpoint (ours, NVlabs .pkl, rosinality .pt); default: the shipped one",
    "DGAN_ENCODER": "Inversion encoder for that generator; default: the shipped one when it matches",
    "DGAN_INVERSION_STEPS": "W+ optimisation steps per image in /predict and fits (default 30)",
    "DGAN_PREDICT_BUDGET_S": "Seconds /predict may spend before handing the rest to a job (default 60; LS waits 100)",
    "DGAN_ALLOWED_ROOTS": "Extra local folders (os.pathsep-separated) images may be read from; default none",
    "DGAN_MAX_IMAGE_PIXELS": "Refuse images with more pixels than this (default 40,000,000)",
    "DGAN_MAX_REQUEST_PIXELS": "Refuse (413) a /predict whose images add up to more pixels (default 100,000,000)",
    "DGAN_MAX_REQUEST_BYTES": "Refuse (413) request bodies larger than this (default 33554432 = 32 MB)",
    "BASIC_AUTH_USER": "Basic auth for the backend's endpoints (set USER, PASS and DGAN_WEBHOOK_SECRET, or none)",
    "BASIC_AUTH_PASS": "Basic auth password",
    "DGAN_WEBHOOK_SECRET": "Secret Label Studio's project webhook must send as header X-Dgan-Webhook-Secret "
                           "(`dgan webhook-secret --project ID --backend-url URL` sets it); needs basic auth",
    "DGAN_KEEP_VERSIONS": "Interpreter versions kept per project, newest first (default 5)",
    "DGAN_REDIS_PREFIX": "Prefix of every Redis key (default dgan): installations sharing a Redis use different ones",
    "DGAN_QUEUE": "RQ queue name (default dgan)",
    "DGAN_LABEL_SOURCE": "What labels generator features before the segmenter is ready: interpreter (default), "
                         "label-branch, or auto (cross-validate both per fit, keep the better)",
    "DGAN_SEGMENTER": "After each fit, train the U-Net that then serves /predict: default (about 3 min at 64 px on "
                      "2 cores; a drifted project's refiner adds 5-20 min), quick (seconds; smoke tests) or off "
                      "(the interpreter serves)",
    "DGAN_REFINE": "Domain drift (SimGAN): auto (default) measures how far the project's task images are from the "
                   "generator's samples and, when far, trains a refiner so the segmenter learns their look; "
                   "always; never",
    "DGAN_DRIFT_IMAGES": "Task images the segmenter job samples (seeded, uniform over the project) to measure drift and "
                         "train the refiner (default 500)",
    "DGAN_LS_DOCUMENT_ROOT": "Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, where `dgan push` stores images "
                             "(else pushed images travel as data URIs)",
    "DGAN_POLYGON_TOLERANCE": "Douglas-Peucker tolerance in pixels of polygons sent to <PolygonLabels> projects "
                              "(default 0.5: exact; 0 keeps every pixel corner; at most 10)",
    "DGAN_FOREGROUND_LABEL": "Before a project's first fit, /predict paints Labels4Free's zero-label foreground mask "
                             "under this label (default: the label whose hint mentions 'foreground', else the one "
                             "named like foreground/fg/object; none: off)",
    "DGAN_FGBG": "Alpha-net for the zero-label foreground (`dgan train-fgbg`); default: the shipped one when it "
                 "belongs to the generator",
    "DGAN_DEVICE": "Where the models run: cpu (default), cuda, cuda:N or auto (cuda when torch sees a GPU, else "
                   "cpu); cuda without a visible GPU is refused at start",
}
WEBHOOK_SECRET_HEADER = "X-Dgan-Webhook-Secret"


@dataclass
class Settings:
    label_studio_url: str
    label_studio_api_key: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    model_dir: Path = Path("dgan-models")
    generator: str | None = None
    encoder: str | None = None
    inversion_steps: int = 30
    predict_budget_s: float = 60.0
    allowed_roots: list[Path] = field(default_factory=list)
    max_image_pixels: int = 40_000_000
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    queue: str = "dgan"
    webhook_secret: str | None = None
    max_request_bytes: int = 32 << 20
    max_request_pixels: int = 100_000_000
    keep_versions: int = 5
    redis_prefix: str = DEFAULT_PREFIX
    segmenter_recipe: str = "default"     # "default", "quick" (tests, smoke runs) or "off"
    label_source: str = "interpreter"     # "interpreter", "label-branch" or "auto" (the better by cross-validation)
    device: str | None = None             # "cpu", "cuda", "cuda:N" (from_env resolves DGAN_DEVICE); None: DGAN_DEVICE
    refine: str = "auto"                  # "auto" (refiner when the project drifted), "always" or "never"
    drift_images: int = 500               # task images read for drift and the refiner
    foreground_label: str | None = None   # DGAN_FOREGROUND_LABEL: the label of zero-label foreground predictions
    fgbg: str | None = None               # DGAN_FGBG: the alpha-net (None: the shipped one when it fits)

    @property
    def keys(self) -> RedisKeys:
        """The names of this installation's Redis keys."""
        return RedisKeys(self.redis_prefix)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        url = env.get("LABEL_STUDIO_URL", "").strip().rstrip("/")
        key = env.get("LABEL_STUDIO_API_KEY", "").strip()
        problems = []
        if not url:
            problems.append(f"LABEL_STUDIO_URL is not set: {ENV_DOC['LABEL_STUDIO_URL']}")
        elif urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            problems.append(f"LABEL_STUDIO_URL={url!r} is not an http(s) URL like http://localhost:8080")
        if not key:
            problems.append("LABEL_STUDIO_API_KEY is not set: copy it from Label Studio → Account & Settings → "
                            "Personal Access Token (or the legacy token)")

        def number(name: str, default: float, kind=float, minimum: float = 0):
            raw = env.get(name)
            if raw in (None, ""):
                return kind(default)
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not a number")
                return kind(default)
            if value < minimum:
                problems.append(f"{name}={raw!r} must be at least {minimum}")
            return value

        user, pw = env.get("BASIC_AUTH_USER") or None, env.get("BASIC_AUTH_PASS") or None
        secret = env.get("DGAN_WEBHOOK_SECRET") or None
        if bool(user) != bool(pw):
            problems.append("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        elif user and not secret:
            problems.append("BASIC_AUTH_USER is set but DGAN_WEBHOOK_SECRET is not: Label Studio sends annotation "
                            "webhooks without basic auth, so /webhook needs its own secret. Set DGAN_WEBHOOK_SECRET "
                            "(e.g. `python -c 'import secrets; print(secrets.token_hex(20))'`) and run `dgan "
                            "webhook-secret --project ID --backend-url URL` for each project")
        if secret and not user:
            problems.append("DGAN_WEBHOOK_SECRET is set without BASIC_AUTH_USER/BASIC_AUTH_PASS: Label Studio sends "
                            "START_TRAINING with the model connection's basic auth, not the webhook's header; set "
                            "both (and the same user/password in the model connection's settings)")
        if secret and (len(secret) < 16 or not secret.isascii() or not secret.isprintable() or " " in secret):
            problems.append("DGAN_WEBHOOK_SECRET must be at least 16 printable ASCII characters without spaces "
                            "(it travels as an HTTP header)")
        prefix = env.get("DGAN_REDIS_PREFIX") or DEFAULT_PREFIX
        try:
            check_prefix(prefix)
        except ValueError as e:
            problems.append(f"DGAN_REDIS_PREFIX: {e}")
            prefix = DEFAULT_PREFIX
        for name in ("DGAN_GENERATOR", "DGAN_ENCODER", "DGAN_FGBG"):
            if env.get(name) and not Path(env[name]).is_file():
                problems.append(f"{name}={env[name]!r} does not exist")
        segmenter = (env.get("DGAN_SEGMENTER") or "default").strip().lower()
        if segmenter not in ("default", "quick", "off"):
            problems.append(f"DGAN_SEGMENTER={segmenter!r} must be default (train the pre-annotating U-Net after "
                            "each fit), quick (a seconds-long smoke recipe) or off (serve the interpreter only)")
            segmenter = "default"
        label_source = (env.get("DGAN_LABEL_SOURCE") or "interpreter").strip().lower()
        if label_source not in ("interpreter", "label-branch", "auto"):
            problems.append(f"DGAN_LABEL_SOURCE={label_source!r} must be interpreter (DatasetGAN's MLP ensemble), "
                            "label-branch (SemanticGAN's conv label branch) or auto (cross-validate both at "
                            "every fit, keep the better; about 2 min more per fit at 64 px)")
            label_source = "interpreter"
        refine = (env.get("DGAN_REFINE") or "auto").strip().lower()
        if refine not in ("auto", "always", "never"):
            problems.append(f"DGAN_REFINE={refine!r} must be auto (train a SimGAN refiner when the project's images "
                            "drifted from the generator's), always, or never")
            refine = "auto"
        from .polygons import polygon_tolerance

        try:
            polygon_tolerance(env.get("DGAN_POLYGON_TOLERANCE") or 0.5)
        except ValueError as e:
            problems.append(str(e))
        from model.device import DeviceError, resolve_device

        try:
            device = str(resolve_device(None, env))
        except DeviceError as e:
            problems.append(str(e))
            device = "cpu"
        roots = [Path(p).resolve() for p in env.get("DGAN_ALLOWED_ROOTS", "").split(os.pathsep) if p.strip()]
        settings = cls(
            label_studio_url=url, label_studio_api_key=key,
            redis_url=env.get("REDIS_URL") or cls.redis_url,
            model_dir=Path(env.get("MODEL_DIR") or cls.model_dir),
            generator=env.get("DGAN_GENERATOR") or None, encoder=env.get("DGAN_ENCODER") or None,
            inversion_steps=int(number("DGAN_INVERSION_STEPS", 30, int)),
            predict_budget_s=number("DGAN_PREDICT_BUDGET_S", 60.0, float, 1),
            allowed_roots=roots,
            max_image_pixels=int(number("DGAN_MAX_IMAGE_PIXELS", 40_000_000, int, 1)),
            basic_auth_user=user, basic_auth_pass=pw, queue=env.get("DGAN_QUEUE") or "dgan",
            webhook_secret=secret,
            max_request_bytes=int(number("DGAN_MAX_REQUEST_BYTES", 32 << 20, int, 1024)),
            max_request_pixels=int(number("DGAN_MAX_REQUEST_PIXELS", 100_000_000, int, 1)),
            keep_versions=int(number("DGAN_KEEP_VERSIONS", 5, int, 1)),
            redis_prefix=prefix, segmenter_recipe=segmenter, label_source=label_source, device=device,
            refine=refine, drift_images=int(number("DGAN_DRIFT_IMAGES", 500, int, 0)),
            foreground_label=(env.get("DGAN_FOREGROUND_LABEL") or "").strip() or None,
            fgbg=env.get("DGAN_FGBG") or None)
        if settings.max_request_pixels < settings.max_image_pixels:
            problems.append(f"DGAN_MAX_REQUEST_PIXELS={settings.max_request_pixels} is below DGAN_MAX_IMAGE_PIXELS="
                            f"{settings.max_image_pixels}: one allowed image would already be refused; raise it")
        if problems:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems) +
                              "\nSee `dgan serve --help` for every variable.")
        return settings


def env_help() -> str:
    return "\n".join(f"  {k:24s} {v}" for k, v in ENV_DOC.items())
