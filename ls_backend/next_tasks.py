"""``dgan next``: the next tasks to label, for teams that hand out work themselves.

The project's unlabeled real tasks are read from Label Studio (annotated or skipped tasks and pushed
synthetic ones, whose data has ``dgan_seed``, are left out), scored by the project's latest model the
way ``/predict`` scores them (:meth:`ls_backend.backend.Backend.score_items`) and picked greedily by
:func:`model.labeling_order.select_next`: lowest score first, each pick then counting as labeled, so the
list holds no two near-copies. All the ranking math lives in :mod:`model.labeling_order`.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from .backend import SEED_KEYS, Backend
from .brush import parse_label_config

log = logging.getLogger(__name__)


class NoModelError(ValueError):
    """The project has no fitted version yet: there is nothing to rank tasks with."""


def is_candidate(task: dict) -> bool:
    """A task worth proposing: not annotated (nor skipped) and not one of our pushed synthetic tasks."""
    if task.get("annotations") or task.get("total_annotations") or task.get("is_labeled"):
        return False
    data = task.get("data") or {}
    return not any(data.get(k) is not None for k in SEED_KEYS)


def next_tasks(backend: Backend, project: int, k: int = 16, batch: int = 32,
               progress: Callable[[int], None] | None = None) -> dict:
    """The ``k`` tasks of ``project`` to label next, best first: ``{"project", "model_version",
    "candidates", "unreadable", "novelty_measured", "next": [{"task", "score", "certainty", "novelty",
    "why"}]}`` (score, certainty, novelty in [0, 1]; novelty None when not measured). ``progress`` is
    called with the number of tasks scored so far. Raises :class:`NoModelError` before the first fit and
    :class:`~ls_backend.client.LabelStudioError` when Label Studio cannot be read."""
    from model.labeling_order import select_next, why

    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    if backend.store.latest_version(project) == 0:
        raise NoModelError(f"project {project} has no model yet in {backend.store.root}: annotate a few tasks and "
                           "train (Label Studio: Settings → Model → Start training, or annotate with the webhook "
                           "on), then run dgan next again; until then Label Studio's own order applies")
    label_map = parse_label_config(backend.client.label_config(project))
    ids: list[int] = []
    certainty: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    labeled = None
    names: set[str] = set()
    unreadable = 0

    def score(chunk: list[dict]) -> None:
        nonlocal labeled, unreadable
        items = []
        for task in chunk:
            try:
                items.append(backend.load_task_image(task, label_map))
            except ValueError as e:
                log.warning("task %s left out: %s", task.get("id"), e)
                unreadable += 1
        if not items:
            return
        scored = backend.score_items(project, items, label_map)
        if scored is None:     # the version vanished between the check and now (pruned): say so plainly
            raise NoModelError(f"project {project} has no model to rank with any more; run dgan next again")
        name, _, cert, emb, labeled = scored
        names.add(name)
        ids.extend(it.task_id for it in items)
        certainty.append(cert)
        if emb is not None:
            embeddings.append(emb.astype(np.float32))
        if progress is not None:
            progress(len(ids))

    chunk: list[dict] = []
    for task in backend.client.iter_tasks(project):
        if is_candidate(task):
            chunk.append(task)
        if len(chunk) == batch:
            score(chunk)
            chunk = []
    if chunk:
        score(chunk)
    if len(names) > 1:
        raise ValueError(f"project {project} got a new model while its tasks were ranked ({', '.join(sorted(names))}); "
                         "run dgan next again")
    cert_all = np.concatenate(certainty) if certainty else np.zeros(0)
    measured = labeled is not None and len(embeddings) == len(certainty) and bool(embeddings)
    emb_all = np.concatenate(embeddings) if measured else None
    picks = select_next(cert_all, emb_all, labeled if measured else None, k)
    return {"project": project, "model_version": next(iter(names), backend.model_version(project)),
            "candidates": len(ids), "unreadable": unreadable, "novelty_measured": measured,
            "next": [{"task": ids[p.index], "score": round(p.score, 4), "certainty": round(p.certainty, 4),
                      "novelty": None if p.novelty is None else round(p.novelty, 4),
                      "why": why(p.certainty, p.novelty)} for p in picks]}


def format_table(report: dict) -> str:
    """The report of :func:`next_tasks` as lines for a terminal."""
    lines = [f"project {report['project']}: next {len(report['next'])} of {report['candidates']} unlabeled tasks "
             f"by {report['model_version']}" + (f" ({report['unreadable']} unreadable, left out)"
                                                 if report["unreadable"] else ""),
             f"{'rank':>4}  {'task':>8}  {'score':>6}  {'certainty':>9}  {'novelty':>7}  why"]
    for rank, row in enumerate(report["next"], 1):
        nov = "–" if row["novelty"] is None else f"{row['novelty']:.3f}"
        lines.append(f"{rank:>4}  {row['task']:>8}  {row['score']:>6.3f}  {row['certainty']:>9.3f}  {nov:>7}  "
                     f"{row['why']}")
    if report["novelty_measured"]:
        from model.labeling_order import DEFAULT_NOVELTY_WEIGHT as w

        lines.append(f"score = 1 − ({w:g}·novelty + {1 - w:g}·(1 − certainty)), low first; novelty counts the tasks "
                     "listed above as labeled, so no two near-copies are proposed")
    else:
        lines.append("score = certainty, low first (novelty needs at least 2 labeled images kept with the model)")
    if not report["next"]:
        lines.append("no unlabeled real task left to propose")
    return "\n".join(lines)
