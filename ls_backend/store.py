"""Per-project state on disk (the source of truth) plus the Redis keys for events, locks and fit bookkeeping.

Disk layout under ``MODEL_DIR``::

    projects/<id>/interpreters/v0001.pt   interpreter versions, written atomically (tmp + rename)
    projects/<id>/interpreters/v0001.json their metadata: training task/annotation ids, CV mIoU, timings
    latents/<sha256 of image bytes>.pt    W+ latents of inverted images (shared by all projects)

A version is visible only once both files exist, so a crash mid-write never exposes half a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import torch

VERSION_RE = re.compile(r"v(\d{4,})\.pt$")


def image_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_version_name(version: int) -> str:
    return f"dgan-v{version}" if version > 0 else "dgan-untrained"


class ProjectStore:
    """Files of one MODEL_DIR; cheap to construct, safe to share between threads and processes."""

    def __init__(self, model_dir: str | Path) -> None:
        self.root = Path(model_dir)
        (self.root / "latents").mkdir(parents=True, exist_ok=True)

    # -- interpreter versions ------------------------------------------------------------------
    def _dir(self, project: int) -> Path:
        return self.root / "projects" / str(int(project)) / "interpreters"

    def versions(self, project: int) -> list[int]:
        d = self._dir(project)
        if not d.is_dir():
            return []
        found = []
        for p in d.glob("v*.pt"):
            m = VERSION_RE.search(p.name)
            if m and p.with_suffix(".json").exists():
                found.append(int(m.group(1)))
        return sorted(found)

    def latest_version(self, project: int) -> int:
        v = self.versions(project)
        return v[-1] if v else 0

    def interpreter_path(self, project: int, version: int) -> Path:
        return self._dir(project) / f"v{version:04d}.pt"

    def version_meta(self, project: int, version: int) -> dict:
        return json.loads(self.interpreter_path(project, version).with_suffix(".json").read_text())

    def next_version_paths(self, project: int) -> tuple[int, Path]:
        """Reserve the next version number: (N+1, its .pt path) — the caller writes the model then commits."""
        d = self._dir(project)
        d.mkdir(parents=True, exist_ok=True)
        version = self.latest_version(project) + 1
        while self.interpreter_path(project, version).exists():
            version += 1
        return version, self.interpreter_path(project, version)

    def commit_version(self, project: int, version: int, meta: dict) -> None:
        """Write the metadata last: from this moment the version is visible."""
        path = self.interpreter_path(project, version).with_suffix(".json")
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"version": version, "created": time.time(), **meta}, indent=2))
        os.replace(tmp, path)

    # -- latents -------------------------------------------------------------------------------
    def latent_path(self, digest: str) -> Path:
        return self.root / "latents" / f"{digest}.pt"

    def get_latent(self, digest: str, gen_id: str) -> torch.Tensor | None:
        path = self.latent_path(digest)
        if not path.exists():
            return None
        data = torch.load(path, weights_only=True)
        return data["ws"] if data.get("generator_id") == gen_id else None

    def put_latent(self, digest: str, gen_id: str, ws: torch.Tensor, psnr_db: float) -> None:
        path = self.latent_path(digest)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"ws": ws.detach().cpu().clone(), "generator_id": gen_id, "psnr_db": float(psnr_db)}, tmp)
        os.replace(tmp, path)


class RedisKeys:
    """Names of the Redis keys (one place, so tests and tools agree)."""

    events = "dgan:events"                                    # list of every webhook event (JSON)

    @staticmethod
    def event_seq(project: int) -> str:                       # counter of training-relevant events
        return f"dgan:p:{project}:event_seq"

    @staticmethod
    def fitted_seq(project: int) -> str:                      # event_seq value covered by the latest fit
        return f"dgan:p:{project}:fitted_seq"

    @staticmethod
    def fit_lock(project: int) -> str:
        return f"dgan:p:{project}:fit_lock"

    @staticmethod
    def last_fit(project: int) -> str:                        # JSON summary of the latest fit (or its error)
        return f"dgan:p:{project}:last_fit"
