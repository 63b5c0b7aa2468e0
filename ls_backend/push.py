"""Synthesize labeled images and push them into a Label Studio project as tasks with predictions.

A push run covers seeds ``base .. base + chunks·chunk − 1`` in chunks (the last chunk only the prefix its
quota needs, :meth:`PushRun.synthesized`). Each chunk is claimed in Redis
by whoever runs it (the CLI, or several RQ workers on any machines that reach Redis and Label
Studio), synthesized, filtered (most uncertain ``filter`` fraction dropped), and imported in a few
pipelined requests (:meth:`Pusher.import_samples`). Exactly-once: a chunk is marked ``importing`` before
its first request and ``done`` after its last; a chunk found ``importing`` on resume is reconciled against
the seeds already in the project, so a kill at any point leaves no duplicates and no gaps. The run stops
at exactly ``n`` kept tasks.

Task data: image (data URI or a Local Storage URL), ``dgan_seed``, ``dgan_psi``, ``dgan_uncertainty``,
``dgan_generator_id``, ``dgan_model_version`` — so a reviewer's correction pairs with the exact latent.
Prediction ``score`` = certainty, so sorting by score puts the least certain first.
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import struct
import time
import uuid
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from model.pipeline import certainty

from .brush import masks_to_results, parse_label_config
from .redis_keys import RedisKeys

MAX_DATA_URI_PX = 256                         # larger images must go to storage, not into the task JSON
# Pushed PNGs: "sub" filter and zlib level 1 (encode_png). Lossless like any PNG, 4× faster to write than
# PIL's default (adaptive filters, level 6: 0.35 vs 1.5 ms at 64 px) for 18 % more bytes (7.3 vs 6.2 kB);
# PNG encoding was the larger part of the push stage's own work.
PNG_COMPRESS_LEVEL = 1

T = TypeVar("T")
R = TypeVar("R")


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
    refiner: str | None = None   # a SimGAN refiner file: pushed images are refined (labels unchanged)

    @property
    def kept_per_chunk(self) -> int:
        return self.chunk - int(round(self.chunk * self.filter_frac))

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n / self.kept_per_chunk)

    def quota(self, k: int) -> int:
        """Tasks chunk k contributes: kept_per_chunk, the last one only what completes n."""
        return min(self.kept_per_chunk, self.n - k * self.kept_per_chunk)

    def synthesized(self, k: int) -> int:
        """Samples chunk k synthesizes: the whole chunk, the last one only enough that keeping all but the
        most uncertain ``filter_frac`` of them still fills its quota (its seeds are a prefix of the chunk's,
        so a resumed run synthesizes the same ones)."""
        q = self.quota(k)
        m = min(self.chunk, math.ceil(q / (1 - self.filter_frac)))
        while m < self.chunk and m - int(round(m * self.filter_frac)) < q:
            m += 1
        return m

    @property
    def total_synthesized(self) -> int:
        return sum(self.synthesized(k) for k in range(self.n_chunks))


class Pusher:
    # Requests of a chunk (see import_samples): the first leaves once ``first_fraction`` of its tasks are
    # encoded, each later one takes every task encoded meanwhile, at most ``import_batch``. Label Studio
    # spends a fixed overhead on every request (0.1–0.15 of a whole 500-task import), so: few, large
    # requests. ``encode_threads`` encode ahead of them (Pillow's zlib work runs outside the GIL).
    import_batch = 500
    first_fraction = 0.25
    encode_threads = 2
    encode_block = 25          # tasks encoded together: their brushes in one vectorised pass

    def __init__(self, backend, conn, document_root: str | None = None, keys: RedisKeys | None = None) -> None:
        """``keys``: the Redis key names (default: the backend's settings' prefix)."""
        self.backend, self.conn, self.document_root = backend, conn, document_root
        self.keys = keys if keys is not None else backend.settings.keys
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.requests_made = 0           # import requests sent by this pusher (the push bench reports them)

    # -- runs ------------------------------------------------------------------------------------
    def start_or_resume(self, project: int, n: int, chunk: int = 500, filter_frac: float = 0.1,
                        psi: float = 1.0, refiner: str | None = None) -> tuple[PushRun, bool]:
        """The project's unfinished run with the same n (resumed), else a new run after the last pushed seed.
        ``refiner``: a refiner file whose refined images are pushed (see :meth:`Backend.refiner_file`)."""
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
                      storage, time.time(), refiner)
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
        """The task's image: a PNG data URI, or a PNG file in the Local Storage folder and its URL."""
        png = encode_png(img)
        if project_dir is None:
            return "data:image/png;base64," + base64.b64encode(png).decode()
        name = f"s{seed:010d}.png"
        (project_dir / name).write_bytes(png)
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
            seeds = list(range(run.base_seed + k * run.chunk, run.base_seed + k * run.chunk + run.synthesized(k)))
            samples = keep_most_certain(self.backend.pipeline.synthesize(seeds, interp, psi=run.psi, segmenter=seg),
                                        run.filter_frac)[:run.quota(k)]
            if run.refiner and samples:    # labelled on the generator's image, pushed in the project's look
                refined = self.backend.load_refiner(run.refiner).refine(np.stack([x.image for x in samples]))
                samples = [replace(x, image=img) for x, img in zip(samples, refined)]
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
        imported in a few requests, chunk state "importing" → "done" in Redis. Returns the tasks imported.

        Pipelined, so that Label Studio (its own process) is kept busy from the start: ``encode_threads``
        encode tasks in order, ``encode_block`` at a time, ahead of the requests; the first request leaves as
        soon as a quarter of the chunk (``first_fraction``) is ready, and whenever a request has been answered
        the next one takes every task encoded meanwhile (at most ``import_batch``; a tail shorter than the
        first request waits to join it, as each request costs Label Studio a fixed overhead). Memory: at most ``import_batch``
        tasks encoded ahead, ``import_batch`` waiting and one request in flight. An error in encoding or in
        a request stops the chunk there and is raised here, the chunk left "importing" for the resume to
        reconcile."""
        key = self.keys.push_chunk(run.run_id, k)
        project_dir = None
        if run.storage.startswith("local:"):
            project_dir = Path(run.storage[len("local:"):]) / "dgan" / f"project-{run.project}" / run.run_id
            project_dir.mkdir(parents=True, exist_ok=True)
        encode = partial(self._tasks, run, n_cls=len(label_map.class_names), label_map=label_map,
                         project_dir=project_dir)
        blocks = [samples[i:i + self.encode_block] for i in range(0, len(samples), self.encode_block)]
        first = max(1, math.ceil(len(samples) * self.first_fraction))
        self.conn.set(key, "importing")
        imported = 0
        encoder = ThreadPoolExecutor(max_workers=self.encode_threads, thread_name_prefix="dgan-encode")
        tasks = (task for block in ordered_map(encoder, encode, blocks,
                                               ahead=math.ceil(self.import_batch / self.encode_block))
                 for task in block)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgan-import") as importer:
                in_flight: Future | None = None
                ready: list[dict] = []
                for i, task in enumerate(tasks):
                    ready.append(task)
                    if not self._send_now(len(ready), len(samples) - i - 1, in_flight, first):
                        continue
                    if in_flight is not None:
                        imported += in_flight.result()       # re-raises the previous request's error here
                    in_flight, ready = importer.submit(self._import, run.project, ready), []
                if in_flight is not None:
                    imported += in_flight.result()
        finally:
            encoder.shutdown(wait=True, cancel_futures=True)
        self.conn.set(key, "done")
        return imported

    def _send_now(self, n_ready: int, left: int, in_flight: Future | None, first: int) -> bool:
        """Whether the ``n_ready`` encoded tasks go out now (``left``: tasks not encoded yet; ``first``: the
        size of the chunk's first request)."""
        if left == 0 or n_ready >= self.import_batch:
            return True                              # the last ones, or a full request: wait for the slot
        if in_flight is None:
            return n_ready >= first                  # the first request: start Label Studio early
        return in_flight.done() and n_ready >= first and left >= first

    def _import(self, project: int, tasks: list[dict]) -> int:
        self.requests_made += 1
        self.backend.client.import_tasks(project, tasks)
        return len(tasks)

    def _tasks(self, run: PushRun, xs: list, n_cls: int, label_map, project_dir: Path | None) -> list[dict]:
        """Synthesized samples → Label Studio tasks, each with its prediction (score = certainty)."""
        results = masks_to_results([x.labels for x in xs], label_map)
        return [{"data": {label_map.image_key: self._image_value(run, x.seed, x.image, project_dir),
                          "dgan_seed": x.seed, "dgan_psi": run.psi, "dgan_uncertainty": round(x.uncertainty, 6),
                          "dgan_generator_id": self.backend.generator_id, "dgan_model_version": run.model_version,
                          "dgan_push_run": run.run_id, **({"dgan_refined": True} if run.refiner else {})},
                 "predictions": [{"result": result, "score": round(certainty(x.uncertainty, n_cls), 4),
                                  "model_version": run.model_version}]} for x, result in zip(xs, results)]

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


def encode_png(img: np.ndarray) -> bytes:
    """uint8 RGB image [H, W, 3] → PNG bytes (8-bit truecolour, every row "sub"-filtered, zlib level
    ``PNG_COMPRESS_LEVEL``; zlib runs outside the GIL). Lossless: any PNG reader gives back ``img``."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
        raise ValueError(f"encode_png takes a non-empty uint8 RGB image [H, W, 3], got {img.dtype} {list(img.shape)}")
    h, w, _ = img.shape
    rows = np.ascontiguousarray(img).reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), np.uint8)
    raw[:, 0] = 1                                                   # filter type 1, "sub": x − the pixel to its left
    raw[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=raw[:, 4:])          # modulo 256, as PNG defines it
    return b"".join((b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
                     _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), PNG_COMPRESS_LEVEL)), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def ordered_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """``fn(item)`` for every item, in order, computed by ``pool`` at most ``ahead`` items ahead of the
    consumer (``Executor.map`` would submit them all at once). An error is raised where its item is consumed."""
    it = iter(items)
    pending: deque[Future] = deque(pool.submit(fn, x) for x in _take(it, max(1, ahead)))
    while pending:
        result = pending.popleft().result()
        pending.extend(pool.submit(fn, x) for x in _take(it, 1))
        yield result


def _take(it: Iterator[T], n: int) -> list[T]:
    out = []
    for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out


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
