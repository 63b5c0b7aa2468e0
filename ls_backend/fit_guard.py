"""Skip a fit when nothing it would learn from has changed since the latest version.

A fit costs minutes; listing a project's annotations costs a second. ``Backend.fit`` computes
:func:`annotations_digest` over what the fit would read (label config, generator, every annotated
task's data and its latest annotation's result) and asks :func:`unchanged_fit` before doing the
expensive part; the digest is stored in each version's metadata.
"""

from __future__ import annotations

import hashlib
import json

from .store import ProjectStore


def annotations_digest(annotated: list[tuple[dict, dict]], label_config: str, generator_id: str) -> str:
    """sha256 over everything a fit reads: changes to any annotation, image, label or generator change it."""
    h = hashlib.sha256()
    h.update(json.dumps([label_config, generator_id]).encode())
    for task, annotation in sorted(annotated, key=lambda ta: (str(ta[0].get("id")), str(ta[1].get("id")))):
        h.update(json.dumps([task.get("id"), task.get("data"), annotation.get("id"), annotation.get("result")],
                            sort_keys=True, default=str).encode())
    return h.hexdigest()


def unchanged_fit(store: ProjectStore, project: int, digest: str) -> dict | None:
    """The latest version's metadata (marked ``skipped``) when it was fitted on exactly this digest, else None."""
    version = store.latest_version(project)
    if version == 0:
        return None
    try:
        meta = store.version_meta(project, version)
    except (OSError, ValueError):
        return None
    if meta.get("annotations_digest") != digest:
        return None
    return {**meta, "skipped": f"no annotation changed since {meta.get('model_version')}; kept it"}
