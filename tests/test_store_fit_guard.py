"""Bounded state on disk and skipped fits: only the newest DGAN_KEEP_VERSIONS interpreter versions stay;
a fit with nothing changed since the latest version returns it instead of writing a new one."""

from __future__ import annotations

import json

import pytest

from ls_backend.backend import Backend
from ls_backend.config import Settings
from ls_backend.fit_guard import annotations_digest, unchanged_fit
from ls_backend.store import ProjectStore
from model.generator.checkpoints import generator_id, save_generator

from .conftest import tiny_generator

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="a"/></BrushLabels></View>')


def _commit(store: ProjectStore, project: int, meta: dict | None = None) -> int:
    version, path = store.next_version_paths(project)
    path.write_bytes(b"model")
    store.commit_version(project, version, {"model_version": f"dgan-v{version}", **(meta or {})})
    return version


def test_only_the_newest_versions_are_kept(tmp_path):
    store = ProjectStore(tmp_path, keep_versions=3)
    for _ in range(7):
        _commit(store, 4)
    assert store.versions(4) == [5, 6, 7]
    folder = store.interpreter_path(4, 7).parent
    assert sorted(p.name for p in folder.iterdir()) == ["v0005.json", "v0005.pt", "v0006.json", "v0006.pt",
                                                       "v0007.json", "v0007.pt"]
    # A model file a crashed fit left without metadata goes too, once a newer version exists.
    store.interpreter_path(4, 8).write_bytes(b"half")
    _commit(store, 4)      # v9 (v8's number is taken)
    assert store.versions(4) == [6, 7, 9]
    assert not store.interpreter_path(4, 8).exists()
    with pytest.raises(ValueError, match="at least the newest"):
        ProjectStore(tmp_path, keep_versions=0)


def test_known_projects(tmp_path):
    store = ProjectStore(tmp_path)
    assert not store.is_known(3)
    store.mark_known(3)
    assert store.is_known(3) and not store.is_known(4)
    _commit(store, 5)                     # fitted before markers existed: known
    assert store.is_known(5)


def _annotated(result_value: str = "x") -> list[tuple[dict, dict]]:
    return [({"id": 1, "data": {"image": "data:,1", "dgan_seed": 3}}, {"id": 10, "result": [{"v": result_value}]}),
            ({"id": 2, "data": {"image": "data:,2"}}, {"id": 11, "result": []})]


def test_digest_changes_with_anything_a_fit_reads():
    base = annotations_digest(_annotated(), CONFIG, "g1")
    assert annotations_digest(list(reversed(_annotated())), CONFIG, "g1") == base        # order does not matter
    assert annotations_digest(_annotated("y"), CONFIG, "g1") != base                     # an edited annotation
    assert annotations_digest(_annotated()[:1], CONFIG, "g1") != base                    # a deleted one
    assert annotations_digest(_annotated(), CONFIG.replace('"a"', '"b"'), "g1") != base  # relabelled config
    assert annotations_digest(_annotated(), CONFIG, "g2") != base                        # another generator
    moved = _annotated()
    moved[1][0]["data"]["image"] = "data:,3"
    assert annotations_digest(moved, CONFIG, "g1") != base                               # another image


class FixedProject:
    """Label Studio's answers for one project, as the client returns them."""

    def __init__(self, annotated):
        self.annotated, self.calls = annotated, 0

    def label_config(self, project):
        return CONFIG

    def annotated_tasks(self, project):
        self.calls += 1
        return self.annotated


def test_fit_with_nothing_changed_keeps_the_latest_version(tmp_path):
    G = tiny_generator()
    gen = save_generator(G, tmp_path / "g.pt")
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k",
                                  "MODEL_DIR": str(tmp_path / "m"), "DGAN_GENERATOR": str(gen)})
    backend = Backend(settings)
    backend.__dict__["client"] = FixedProject(_annotated())
    digest = annotations_digest(_annotated(), CONFIG, generator_id(G))
    _commit(backend.store, 6, {"annotations_digest": digest, "n_images": 2})
    meta = backend.fit(6)
    assert meta["model_version"] == "dgan-v1" and "no annotation changed" in meta["skipped"]
    assert backend.store.versions(6) == [1]
    assert unchanged_fit(backend.store, 6, digest)["n_images"] == 2
    assert unchanged_fit(backend.store, 6, "other") is None and unchanged_fit(backend.store, 7, digest) is None
    assert json.loads(backend.store.interpreter_path(6, 1).with_suffix(".json").read_text())["version"] == 1
