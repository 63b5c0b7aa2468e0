"""Synthesize labeled images and push them into a Label Studio project as tasks with predictions.

A push run covers seeds ``base .. base + chunks·chunk − 1`` in chunks. Each chunk is claimed in Redis
by whoever runs it (the CLI, or several RQ workers on any machines that reach Redis and Label
Studio), synthesized, filtered (most uncertain ``filter`` fraction dropped), and imported in a few
pipelined requests. Exactly-once: a chunk is marked ``importing`` before its request and ``done`` after; a
chunk found ``importing`` on resume is reconciled against the seeds already in the project, so a
kill at any point leaves no duplicates and no gaps. The run stops at exactly ``n`` kept tasks.

Task data: image (data URI or a Local Storage URL), ``dgan_seed``, ``dgan_psi``, ``dgan_uncertainty``,
``dgan_generator_id``, ``dgan_model_version`` — so a reviewer's correction pairs with the exact latent.
Prediction ``score`` = certainty, so sorting by score puts the least certain first.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from model.images import png_data_uri
from model.pipeline import certainty

from .brush import mask_to_results, parse_label_config
from .redis_keys import RedisKeys

MAX_DATA_URI_PX = 256                         # larger images must go to storage, not into the task JSON


@dataclass
class PushRun:
    run_id: str
    project: int
    n: int
    base_seed: int
    chunk: int
    filter_frac: float
    psi: float
    model_version: str
    storage: str                 # "datauri" or "local:<document root>"
    created: float

    @property
    def kept_per_chunk(self) -> int:
        return self.chunk - int(round(self.chunk * self.filter_frac))

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.kept_per_chunk)

    def quota(self, k: int) -> int:
        """Tasks chunk k contributes: kept_per_chunk, the last one only what completes n."""
        return min(self.kept_per_chunk, self.n - k * self.kept_per_chunk)


class Pusher:
    import_batch = 125           # tasks per import request (a chunk of 500 kept samples → 4 requests)

    def __init__(self, backend, conn, document_root: str | None = None, keys: RedisKeys | None = None) -> None:
        """``keys``: the Redis key names (default: the backend's settings' prefix)."""
        self.backend, self.conn, self.document_root = backend, conn, document_root
        self.keys = keys if keys is not None else backend.settings.keys
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    # -- runs ------------------------------------------------------------------------------------
    def start_or_resume(self, project: int, n: int, chunk: int = 500, filter_frac: float = 0.1,
                        psi: float = 1.0) -> tuple[PushRun, bool]:
        """The project's unfinished run with the same n (resumed), else a new run after the last pushed seed."""
        raw = self.conn.get(self.keys.push_run(project))
        if raw:
            run = PushRun(**json.loads(raw))
            if run.n == n and not self.finished(run):
                return run, True
        res = self.backend.generator.cfg.resolution
        if not self.document_root and res > MAX_DATA_URI_PX:
            raise ValueError(f"the generator makes {res} px images; inside tasks as data URIs they would bloat "
                             f"Label Studio's database (the fallback is for ≤ {MAX_DATA_URI_PX} px). Pass "
                             "--document-root (or DGAN_LS_DOCUMENT_ROOT) = Label Studio's "
                             "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT so images are stored as files")
        chunk = max(1, min(chunk, math.ceil(n / (1 - filter_frac))))   # never synthesize far more than n
        _, interp = self.backend.interpreter(project)
        if interp is None:
            raise ValueError(f"project {project} has no fitted model yet; annotate a few tasks and train first")
        span = math.ceil(n / max(1, chunk - int(round(chunk * filter_frac)))) * chunk
        base = int(self.conn.incrby(self.keys.next_seed(project), span)) - span
        storage = f"local:{self.document_root}" if self.document_root else "datauri"
        run = PushRun(uuid.uuid4().hex[:12], project, n, base, chunk, filter_frac, psi, self.backend.model_version(project),
                      storage, time.time())
        self.conn.set(self.keys.push_run(project), json.dumps(asdict(run)))
        return run, False

    def chunk_state(self, run: PushRun, k: int) -> str | None:
        v = self.conn.get(self.keys.push_chunk(run.run_id, k))
        return v.decode() if v else None

    def finished(self, run: PushRun) -> bool:
        return all(self.chunk_state(run, k) == "done" for k in range(run.n_chunks))

    # -- one chunk -------------------------------------------------------------------------------
    def _existing_seeds(self, project: int) -> set[int]:
        return {int(t["data"]["dgan_seed"]) for t in self.backend.client.iter_tasks(project)
                if t.get("data", {}).get("dgan_seed") is not None}

    def _image_value(self, run: PushRun, seed: int, img: np.ndarray, project_dir: Path | None) -> str:
        if project_dir is None:
            return png_data_uri(img)
        name = f"s{seed:010d}.png"
        Image.fromarray(img).save(project_dir / name)
        rel = project_dir.relative_to(Path(run.storage[len("local:"):]))
        return f"/data/local-files/?d={rel.as_posix()}/{name}"

    def _take_lock(self, lock: str, lease_s: int) -> bool:
        """Take the chunk's work lock; a lock left by a dead process on this host is taken over at once."""
        if self.conn.set(lock, self.owner, nx=True, ex=lease_s):
            return True
        holder = (self.conn.get(lock) or b"").decode()
        host, _, pid = holder.partition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            self.conn.delete(lock)
            return bool(self.conn.set(lock, self.owner, nx=True, ex=lease_s))
        return False

    def run_chunk(self, run: PushRun, k: int, lease_s: int = 600) -> int | None:
        """Synthesize, filter and import chunk k. Returns the tasks imported, 0 if it was already done,
        None if another live process is working on it."""
        from model.synthesis import keep_most_certain

        lock = self.keys.push_chunk_lock(run.run_id, k)
        if self.chunk_state(run, k) == "done":
            return 0
        if not self._take_lock(lock, lease_s):
            return None
        try:
            state = self.chunk_state(run, k)
            if state == "done":
                return 0
            label_map = parse_label_config(self.backend.client.label_config(run.project))
            # Labels by the project's segmenter once it is ready (it labels generated images best), else
            # by its interpreter.
            _, seg = self.backend.segmenter(run.project)
            if seg is not None and seg.class_names != label_map.class_names:
                seg = None
            _, interp = self.backend.interpreter(run.project)
            if seg is None and (interp is None or interp.class_names != label_map.class_names):
                raise ValueError(f"project {run.project}'s model does not match its labels; train it again")
            seeds = list(range(run.base_seed + k * run.chunk, run.base_seed + (k + 1) * run.chunk))
            samples = keep_most_certain(self.backend.pipeline.synthesize(seeds, interp, psi=run.psi, segmenter=seg),
                                        run.filter_frac)[:run.quota(k)]
            self.conn.expire(lock, lease_s)      # synthesis took part of the lease: renew it for the import
            if state == "importing":      # a previous attempt may have imported: skip what is there
                present = self._existing_seeds(run.project)
                samples = [x for x in samples if x.seed not in present]
            return self.import_samples(run, k, samples, label_map)
        finally:
            if (self.conn.get(lock) or b"").decode() == self.owner:
                self.conn.delete(lock)

    def import_samples(self, run: PushRun, k: int, samples: list, label_map) -> int:
        """The push stage of chunk k: images to storage, masks to brush RLE, tasks with predictions
        imported in requests of ``import_batch``, chunk state "importing" → "done" in Redis. Returns the
        tasks imported.

        Pipelined: while Label Studio ingests one request (in its own process), this thread encodes the
        next, so the encoding hides behind the import instead of adding to it."""
        key = self.keys.push_chunk(run.run_id, k)
        project_dir = None
        if run.storage.startswith("local:"):
            project_dir = Path(run.storage[len("local:"):]) / "dgan" / f"project-{run.project}" / run.run_id
            project_dir.mkdir(parents=True, exist_ok=True)
        n_cls = len(label_map.class_names)
        self.conn.set(key, "importing")
        imported = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgan-import") as importer:
            in_flight = None
            for start in range(0, len(samples), self.import_batch):
                tasks = [self._task(run, x, n_cls, label_map, project_dir)
                         for x in samples[start:start + self.import_batch]]
                if in_flight is not None:
                    imported += in_flight.result()       # re-raises the previous request's error here
                in_flight = importer.submit(self._import, run.project, tasks)
            if in_flight is not None:
                imported += in_flight.result()
        self.conn.set(key, "done")
        return imported

    def _import(self, project: int, tasks: list[dict]) -> int:
        self.backend.client.import_tasks(project, tasks)
        return len(tasks)

    def _task(self, run: PushRun, x, n_cls: int, label_map, project_dir: Path | None) -> dict:
        """One synthesized sample → a Label Studio task with its prediction (score = certainty)."""
        sure = certainty(x.uncertainty, n_cls)
        return {"data": {label_map.image_key: self._image_value(run, x.seed, x.image, project_dir),
                         "dgan_seed": x.seed, "dgan_psi": run.psi, "dgan_uncertainty": round(x.uncertainty, 6),
                         "dgan_generator_id": self.backend.generator_id, "dgan_model_version": run.model_version,
                         "dgan_push_run": run.run_id},
                "predictions": [{"result": mask_to_results(x.labels, label_map), "score": round(sure, 4),
                                 "model_version": run.model_version}]}

    def push(self, run: PushRun, on_progress: Callable[[int], None] | None = None, poll_s: float = 2.0) -> int:
        """Run every chunk not yet done; chunks another live process holds are left to it and waited for.
        Returns the tasks this call imported."""
        total = 0
        pending = list(range(run.n_chunks))
        while pending:
            waiting = []
            for k in pending:
                made = self.run_chunk(run, k)
                if made is None:
                    waiting.append(k)
                    continue
                total += made
                if on_progress:
                    on_progress(made)
            if waiting:
                time.sleep(poll_s)
            pending = [k for k in waiting if self.chunk_state(run, k) != "done"]
        return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ensure_local_storage(backend, project: int, document_root: str) -> None:
    """Create the project's Local Storage connection for dgan's image folder (once)."""
    folder = Path(document_root) / "dgan" / f"project-{project}"
    folder.mkdir(parents=True, exist_ok=True)
    backend.client.ensure_local_storage(project, str(folder), title="dgan synthesized images")


def push_chunk_job(project: int, run_json: str, k: int) -> int:
    """RQ job: one chunk of a push run (several workers can split a run)."""
    from .jobs import get_backend, redis_from_settings

    backend = get_backend()
    from rq import get_current_job

    run = PushRun(**json.loads(run_json))
    doc_root = run.storage[len("local:"):] if run.storage.startswith("local:") else None
    job = get_current_job()
    if job is not None:
        job.meta.update({"run": run.run_id, "chunk": k, "of": run.n_chunks, "state": "synthesizing"})
        job.save_meta()
    made = Pusher(backend, redis_from_settings(backend.settings), doc_root).run_chunk(run, k) or 0
    if job is not None:
        job.meta.update({"state": "done", "imported": made})
        job.save_meta()
    return made
