"""Per-project state on disk (the source of truth). Redis key names live in :mod:`ls_backend.redis_keys`.

Disk layout under ``MODEL_DIR``::

    projects/<id>/setup                   Label Studio has set this project up with the backend (/setup)
    projects/<id>/interpreters/v0001.pt   interpreter versions, written atomically (tmp + rename)
    projects/<id>/interpreters/v0001.json their metadata: training task/annotation ids, CV mIoU, timings
    projects/<id>/interpreters/v0001.train.npz        the labeled images and masks v1 was fitted on
    projects/<id>/interpreters/v0001.segmenter.pt     the segmenter trained on them after the fit
    projects/<id>/interpreters/v0001.refiner.pt       the SimGAN refiner its student learned from (drifted
                                                      projects only; .refiner.state while it trains)
    latents/<sha256 of image bytes>.pt    W+ latents of inverted images (shared by all projects)

A version is visible only once both files exist, so a crash mid-write never exposes half a model.
Only the newest ``keep_versions`` versions of a project are kept (DGAN_KEEP_VERSIONS).
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
DEFAULT_KEEP_VERSIONS = 5


def image_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_version_name(version: int) -> str:
    return f"dgan-v{version}" if version > 0 else "dgan-untrained"


class ProjectStore:
    """Files of one MODEL_DIR; cheap to construct, safe to share between threads and processes."""

    def __init__(self, model_dir: str | Path, keep_versions: int = DEFAULT_KEEP_VERSIONS) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions={keep_versions}: at least the newest version must be kept")
        self.root = Path(model_dir)
        self.keep_versions = keep_versions
        (self.root / "latents").mkdir(parents=True, exist_ok=True)

    # -- projects Label Studio has set up with this backend --------------------------------------
    def _marker(self, project: int) -> Path:
        return self.root / "projects" / str(int(project)) / "setup"

    def mark_known(self, project: int) -> None:
        """Record that Label Studio set this project up (/setup or /predict, both authenticated)."""
        marker = self._marker(project)
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

    def is_known(self, project: int) -> bool:
        """Set up by Label Studio, or fitted before markers existed."""
        return self._marker(project).exists() or bool(self.versions(project))

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

    def projects(self) -> list[int]:
        """Ids of the projects that have a folder here (set up or fitted)."""
        root = self.root / "projects"
        return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit()) if root.is_dir() else []

    # -- what each version trains after its fit: the segmenter that pre-annotates ------------------
    def training_data_path(self, project: int, version: int) -> Path:
        """The labeled images (at the generator's resolution) and masks version N was fitted on (.npz)."""
        return self._dir(project) / f"v{version:04d}.train.npz"

    def segmenter_path(self, project: int, version: int) -> Path:
        """The segmenter trained on version N's labeled images, written atomically when it is ready."""
        return self._dir(project) / f"v{version:04d}.segmenter.pt"

    def refiner_path(self, project: int, version: int) -> Path:
        """The SimGAN refiner trained with version N's segmenter when the project's images had drifted."""
        return self._dir(project) / f"v{version:04d}.refiner.pt"

    def refiner_state_path(self, project: int, version: int) -> Path:
        """The refiner's training state while it trains (a stopped job resumes from it)."""
        return self._dir(project) / f"v{version:04d}.refiner.state"

    def latest_refiner(self, project: int) -> int:
        """The newest version with a refiner (0 when none has one)."""
        ready = [v for v in self.versions(project) if self.refiner_path(project, v).exists()]
        return ready[-1] if ready else 0

    def latest_segmenter(self, project: int) -> int:
        """The newest version whose segmenter is ready (0 when none is)."""
        ready = [v for v in self.versions(project) if self.segmenter_path(project, v).exists()]
        return ready[-1] if ready else 0

    def next_version_paths(self, project: int) -> tuple[int, Path]:
        """Reserve the next version number: (N+1, its .pt path) — the caller writes the model then commits."""
        d = self._dir(project)
        d.mkdir(parents=True, exist_ok=True)
        version = self.latest_version(project) + 1
        while self.interpreter_path(project, version).exists():
            version += 1
        return version, self.interpreter_path(project, version)

    def commit_version(self, project: int, version: int, meta: dict) -> None:
        """Write the metadata last: from this moment the version is visible. Older versions beyond
        ``keep_versions`` are deleted (metadata first, so none is ever half visible)."""
        path = self.interpreter_path(project, version).with_suffix(".json")
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"version": version, "created": time.time(), **meta}, indent=2))
        os.replace(tmp, path)
        self.prune(project)

    def update_version_meta(self, project: int, version: int, extra: dict) -> None:
        """Merge ``extra`` into version N's metadata (atomically; e.g. its segmenter's drift figures)."""
        path = self.interpreter_path(project, version).with_suffix(".json")
        meta = {**json.loads(path.read_text()), **extra}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, path)

    def prune(self, project: int) -> list[int]:
        """Delete all but the newest ``keep_versions`` versions; returns the deleted version numbers."""
        visible = self.versions(project)
        old = visible[:-self.keep_versions]
        for v in old:
            pt = self.interpreter_path(project, v)
            pt.with_suffix(".json").unlink(missing_ok=True)
            pt.unlink(missing_ok=True)
            for extra in (self.segmenter_path(project, v), self.training_data_path(project, v),
                          self.refiner_path(project, v), self.refiner_state_path(project, v)):
                extra.unlink(missing_ok=True)
        if visible:   # models a crashed fit wrote without metadata, older than the newest version
            for pt in self._dir(project).glob("v*.pt"):
                m = VERSION_RE.search(pt.name)
                if m and int(m.group(1)) < visible[-1] and not pt.with_suffix(".json").exists():
                    pt.unlink(missing_ok=True)
        return old

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
