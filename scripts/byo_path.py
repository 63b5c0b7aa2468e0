"""The bring-your-own-checkpoint path, timed end to end at a real StyleGAN2 size.

A StyleGAN2 generator of StyleGAN2's real channel widths (rosinality ``channel_multiplier=2``: 512 channels
at 4..64 px, 256 at 128, 128 at 256; z/w 512, 8 mapping layers), seeded random weights, goes through what
a user does with their own checkpoint (README "Plug in your own StyleGAN2 checkpoint"), each stage timed
and written to the JSON as soon as it ends (a partial run still leaves figures):

1. ``checkpoint``: a rosinality ``.pt`` as a user brings it (``{"g_ema", "latent_avg"}``, rosinality key
   names and shapes), written, then ``dgan convert``'s function (``convert``) and the load the backend does
   at start; parameter count, file sizes, GFLOP per image (counted from the architecture), forward s/image;
2. ``encoder``: ``dgan train-encoder``'s function with its default recipe (3,000 steps of batch 32): a few
   steps timed and extrapolated (labelled) unless the whole recipe fits ``--encoder-full-max-s``; and what
   the product does without an encoder (it inverts from w_avg);
3. ``fit``: 16 annotated default-domain images (``model.domain.render_batch`` at the size: images + exact
   masks as brush RLE) through the backend's own fit job (``/setup``, a ``START_TRAINING`` webhook, then
   ``ls_backend.jobs.fit_project`` → ``Backend.fit``: inversion, cross-validation, interpreter), with a stand-in
   for Label Studio's REST API and a real Redis;
4. ``predict_before_segmenter`` / ``predict_after_segmenter``: one "Retrieve predictions" page (30 tasks) through
   the Flask app's ``/predict`` (test client): first served by the interpreter through inversion under the
   backend's time budget (answers what fits, queues the rest for a job), then by the segmenter the segmenter
   job (``ls_backend.jobs.train_segmenter``) trained; seconds per page, within Label Studio's 100 s or not,
   mIoU of the answered tasks against the exact masks;
5. ``push``: ``dgan push``'s synthesis + encoding + import stage (``Pusher.start_or_resume`` + ``Pusher.push``)
   for ``--push-n`` tasks against a recording stand-in for Label Studio's import endpoint, scaled to 1,000.

The weights are random: quality figures (mIoU, PSNR) say nothing about a trained generator; the timings
and the memory do. ``--quick`` is a smoke run of a couple of minutes at small sizes (fewer images, steps,
tasks; the segmenter's quick recipe).

    .venv/bin/python scripts/byo_path.py                       # 256 px, CPU → docs/measured/byo-256.json
    .venv/bin/python scripts/byo_path.py --size 64 --quick     # smoke run
    .venv/bin/python scripts/byo_path.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run as a file from anywhere
    sys.path.insert(0, str(ROOT))

PROJECT = 1
LS_TIMEOUT_S = 100.0                   # Label Studio 1.23.2 waits this long for /predict
ENCODER_DEFAULT = {"steps": 3000, "batch": 32, "base": 32}   # `dgan train-encoder` defaults (model/cli.py)
FIT_SEED, PAGE_SEED = 2000, 4242       # rendered images: the labeled ones, the page (as scripts/predict_latency.py)


# ----------------------------------------------------------------------------------------------
# The JSON, written as it goes


class Report:
    """The results dict, rewritten atomically to ``path`` after every change that matters."""

    def __init__(self, path: Path, head: dict) -> None:
        self.path, self.data = path, {**head, "status": "running", "stage": None, "stages": {}, "summary": {}}
        self.t0 = time.perf_counter()
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        """A stage's dict: filled by the caller, its wall time and peak memory added, written at the end
        (and on an error, with the error)."""
        rec: dict = {}
        self.data["stage"] = name
        self.data["stages"][name] = rec
        self.write()
        print(f"[byo {time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            yield rec
        except BaseException as e:
            rec["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
            self.data["status"] = "failed"
            raise
        finally:
            rec["stage_wall_s"] = round(time.perf_counter() - t, 2)
            rec["peak_rss_gb_so_far"] = peak_rss_gb()
            print(f"[byo {time.strftime('%H:%M:%S')}] {name} {'failed' if 'error' in rec else 'done'} in "
                  f"{rec['stage_wall_s']:.1f} s (peak RSS {rec['peak_rss_gb_so_far']} GB)", file=sys.stderr, flush=True)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                rec["cuda_peak_allocated_gb_so_far"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            self.write()

    def summary(self, **kw) -> None:
        self.data["summary"].update(kw)
        self.write()


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    return str(x)


def peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)    # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timers:
    """Wall time of wrapped methods; a call made inside another wrapped call is recorded as
    ``outer>inner`` (so ``cross_validate>fit`` are the cross-validation's fits, ``fit`` the final one)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.stack, self.data = device, [], {}

    def wrap(self, obj: object, name: str, label: str | None = None) -> None:
        orig, label = getattr(obj, name), label or name

        def timed(*args, **kwargs):
            key = ">".join([*self.stack, label])
            self.stack.append(label)
            t = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                sync(self.device)
                self.stack.pop()
                rec = self.data.setdefault(key, {"calls": 0, "seconds": 0.0})
                rec["calls"] += 1
                rec["seconds"] = round(rec["seconds"] + time.perf_counter() - t, 3)

        setattr(obj, name, timed)

    def take(self) -> dict:
        out, self.data = self.data, {}
        return out


# ----------------------------------------------------------------------------------------------
# A rosinality checkpoint of StyleGAN2's real widths


def rosinality_channels(size: int, multiplier: int = 2, divisor: int = 1) -> dict[int, int]:
    """rosinality stylegan2-pytorch's width table (``Generator.channels``) up to ``size``; ``divisor`` > 1
    narrows it (tests only)."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * multiplier, 128: 128 * multiplier, 256: 64 * multiplier,
             512: 32 * multiplier, 1024: 16 * multiplier}
    if size not in table:
        raise ValueError(f"--size must be a power of two from 8 to 1024, got {size}")
    return {r: max(1, c // divisor) for r, c in table.items() if r <= size}


def rosinality_state(size: int, style_dim: int = 512, n_mlp: int = 8, multiplier: int = 2, divisor: int = 1,
                     seed: int = 0, lr_mlp: float = 0.01,
                     channels: dict[int, int] | None = None) -> tuple["OrderedDict[str, torch.Tensor]", torch.Tensor]:
    """(``g_ema`` state dict with rosinality's key names and shapes, ``latent_avg`` [style_dim]).

    Random, seeded, drawn as rosinality initialises (conv weights and the constant randn, mapping weights
    randn / lr_mul, modulation bias 1) with the terms it leaves at 0 or 1 perturbed (noise strengths, biases,
    modulation biases), so that every tensor matters; ToRGB weights ×0.3 for images of about unit scale.
    ``latent_avg``: the mean mapping output of 4,096 z, computed with rosinality's formula. ``channels``: a
    width table of one's own instead of rosinality's (its ``Generator`` cannot narrow below 64 px; the parity
    fixture patched it)."""
    ch = channels or rosinality_channels(size, multiplier, divisor)
    style_dim = max(4, style_dim // divisor)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    kernel = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = (kernel[None, :] * kernel[:, None]) / kernel.sum() ** 2 * 4          # make_kernel × factor²
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i in range(1, n_mlp + 1):
        sd[f"style.{i}.weight"] = randn(style_dim, style_dim, scale=1 / lr_mlp)
        sd[f"style.{i}.bias"] = randn(style_dim, scale=0.1 / lr_mlp)

    def modconv(prefix: str, cin: int, cout: int, k: int, up: bool) -> None:
        sd[f"{prefix}.conv.weight"] = randn(1, cout, cin, k, k, scale=1.0 if k == 3 else 0.3)
        if up:
            sd[f"{prefix}.conv.blur.kernel"] = kernel.clone()
        sd[f"{prefix}.conv.modulation.weight"] = randn(cin, style_dim)
        sd[f"{prefix}.conv.modulation.bias"] = 1 + randn(cin, scale=0.1)

    def styled(prefix: str, cin: int, cout: int, up: bool) -> None:
        modconv(prefix, cin, cout, 3, up)
        sd[f"{prefix}.noise.weight"] = randn(1, scale=0.1)
        sd[f"{prefix}.activate.bias"] = randn(cout, scale=0.1)

    def torgb(prefix: str, cin: int, up: bool) -> None:
        sd[f"{prefix}.bias"] = randn(1, 3, 1, 1, scale=0.1)
        if up:
            sd[f"{prefix}.upsample.kernel"] = kernel.clone()
        modconv(prefix, cin, 3, 1, False)

    sd["input.input"] = randn(1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4], False)
    torgb("to_rgb1", ch[4], False)
    resolutions = [r for r in ch if r > 4]
    for j, res in enumerate(resolutions):
        styled(f"convs.{2 * j}", ch[res // 2], ch[res], True)
        styled(f"convs.{2 * j + 1}", ch[res], ch[res], False)
    for j, res in enumerate(resolutions):
        torgb(f"to_rgbs.{j}", ch[res], True)
    noise_res = [4] + [r for r in resolutions for _ in range(2)]
    for i, r in enumerate(noise_res):
        sd[f"noises.noise_{i}"] = randn(1, 1, r, r)
    z = torch.randn(4096, style_dim, generator=torch.Generator().manual_seed(seed + 1))
    return sd, rosinality_style(sd, z, n_mlp, lr_mlp).mean(0)


def rosinality_style(sd: dict, z: torch.Tensor, n_mlp: int, lr_mlp: float = 0.01) -> torch.Tensor:
    """rosinality's ``Generator.style(z)``: PixelNorm, then EqualLinear(lr_mul) + fused leaky ReLU (×√2)."""
    x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for i in range(1, n_mlp + 1):
        w, b = sd[f"style.{i}.weight"], sd[f"style.{i}.bias"]
        x = F.leaky_relu(x @ (w * (lr_mlp / math.sqrt(w.shape[1]))).t() + b * lr_mlp, 0.2) * math.sqrt(2)
    return x


def is_rosinality_buffer(key: str) -> bool:
    return key.startswith("noises.") or key.endswith((".blur.kernel", ".upsample.kernel"))


def generator_gflop(cfg) -> float:
    """Multiply-adds × 2 of one image through the generator (mapping, affines, modulated convs, the
    transposed-conv upsampling and its FIR blur, ToRGB), counted from the config."""
    ch, w = cfg.channels, cfg.w_dim
    flop = 2 * (cfg.z_dim * w + (cfg.mapping_layers - 1) * w * w)
    for res in cfg.block_resolutions:
        out = ch[res]
        if res == 4:
            flop += 2 * 9 * out * out * 16 + 2 * w * out
        else:
            cin = ch[res // 2]
            flop += 2 * 9 * cin * out * (res // 2) ** 2 + 2 * 16 * out * (res + 1) ** 2 + 2 * w * cin   # conv0 + blur
            flop += 2 * 9 * out * out * res * res + 2 * w * out                                        # conv1
            flop += 2 * 16 * 3 * res * res                                                             # skip upsample
        flop += 2 * out * 3 * res * res + 2 * w * out                                                  # ToRGB
    return flop / 1e9


# ----------------------------------------------------------------------------------------------
# Label Studio's REST API, stood in for (the real one is covered by tests/e2e and `dgan demo`)


class StandInLabelStudio:
    """What ``LabelStudioClient`` answers for one project: its label config, its annotated tasks, its tasks;
    imports of tasks and predictions are recorded (with their JSON size), nothing is sent anywhere."""

    def __init__(self, label_config: str, tasks: list[dict]) -> None:
        self.config, self.tasks = label_config, tasks
        self.imported_tasks: list[int] = []          # sizes of import requests (tasks)
        self.imported_bytes: list[int] = []          # their JSON bodies, as LabelStudioClient.import_tasks sends them
        self.predictions: list[dict] = []
        self.seeds: set[int] = set()

    def auth_headers(self) -> dict:
        return {"Authorization": "Token stand-in"}

    def label_config(self, project: int) -> str:
        return self.config

    def iter_tasks(self, project: int, only_annotated: bool = False):
        for t in self.tasks:
            if not only_annotated or t.get("annotations"):
                yield t

    def annotated_tasks(self, project: int) -> list[tuple[dict, dict]]:
        return [(t, t["annotations"][-1]) for t in self.tasks if t.get("annotations")]

    def tasks_by_id(self, project: int, ids: list[int]) -> list[dict]:
        by_id = {t["id"]: t for t in self.tasks}
        return [by_id[i] for i in ids if i in by_id]

    def import_tasks(self, project: int, tasks: list[dict]) -> list[int]:
        self.imported_bytes.append(len(json.dumps(tasks, separators=(",", ":"))))
        self.imported_tasks.append(len(tasks))
        self.seeds.update(int(t["data"]["dgan_seed"]) for t in tasks)
        return list(range(len(tasks)))

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        self.predictions += predictions

    def ensure_local_storage(self, project: int, path: str, title: str) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# Redis: a private server unless one is given


@contextlib.contextmanager
def private_redis(url: str | None, folder: Path) -> Iterator[str]:
    """``url`` as given, else a redis-server started here for this run only (no disk, stopped at the end)."""
    if url:
        yield url
        return
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed; install it or pass --redis-url (keys go under a fresh "
                         "prefix and queue, and are deleted at the end)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder), "--logfile", str(folder / "redis.log")])
    import redis

    base = f"redis://127.0.0.1:{port}/0"
    conn = redis.Redis.from_url(base, socket_connect_timeout=0.5)
    deadline = time.time() + 10
    try:
        while True:
            try:
                conn.ping()
                break
            except redis.RedisError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the private redis-server did not start; see {folder / 'redis.log'}") from None
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def delete_own_keys(conn, prefix: str, queue: str) -> int:
    """Delete this run's keys on a shared Redis: its prefix's, its queue's and its jobs'."""
    from rq import Queue

    n = 0
    q = Queue(queue, connection=conn)
    for job_id in q.job_ids:
        n += conn.delete(f"rq:job:{job_id}")
    for pattern in (f"{prefix}:*", f"rq:queue:{queue}"):
        for key in conn.scan_iter(match=pattern, count=500):
            n += conn.delete(key)
    return n


# ----------------------------------------------------------------------------------------------
# The run


def label_config(classes: list[str]) -> str:
    return ('<View><Image name="image" value="$image"/><BrushLabels name="parts" toName="image">'
            + "".join(f'<Label value="{c}"/>' for c in classes[1:]) + "</BrushLabels></View>")


def page_miou(entries: list[dict], masks: np.ndarray, label_map, size: int) -> float | None:
    """mIoU (%) of the answered entries' brush results against the exact masks."""
    from ls_backend.brush import results_to_mask
    from model.metrics import mean_iou

    got = [(i, e) for i, e in enumerate(entries) if "result" in e]
    if not got:
        return None
    pred = np.stack([results_to_mask(e["result"], label_map, size, size) for _, e in got])
    return round(100 * mean_iou(pred, masks[[i for i, _ in got]], len(label_map.class_names)), 2)


def latent_psnr(store) -> float | None:
    """Mean reconstruction PSNR (dB) of the inversions cached in the store (the fit's images)."""
    vals = [float(torch.load(p, weights_only=True)["psnr_db"]) for p in sorted((store.root / "latents").glob("*.pt"))]
    return round(float(np.mean(vals)), 2) if vals else None


def push_plan(n: int, filter_frac: float = 0.1, chunk: int = 500) -> dict:
    """Chunks and samples ``dgan push --n N`` synthesizes (the arithmetic of ``Pusher.start_or_resume``)."""
    from ls_backend.push import PushRun

    chunk = max(1, min(chunk, math.ceil(n / (1 - filter_frac))))
    run = PushRun("plan", PROJECT, n, 0, chunk, filter_frac, 1.0, "", "datauri", 0.0)
    return {"n": n, "chunk": chunk, "chunks": run.n_chunks, "synthesized": run.total_synthesized}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="generator resolution (default 256; 64 or 32 for smoke runs)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    ap.add_argument("--out", default=None, help="JSON written as the run goes (default docs/measured/byo-SIZE.json)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 fit images, 2 inversion steps, a page of 8, "
                                                         "10 pushed tasks, the segmenter's quick recipe")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, 2 on the 2-core box)")
    ap.add_argument("--seed", type=int, default=0, help="the random weights' seed")
    ap.add_argument("--width-divisor", type=int, default=1,
                    help="divide every width (and z/w) by this; 1 = StyleGAN2's real widths (tests use 16)")
    ap.add_argument("--fit-images", type=int, default=None, help="annotated images of the fit (default 16; quick 4)")
    ap.add_argument("--inversion-steps", type=int, default=None,
                    help="DGAN_INVERSION_STEPS (default: the product's, 30; quick 2)")
    ap.add_argument("--page", type=int, default=None, help="tasks in the /predict page (default 30; quick 8)")
    ap.add_argument("--push-n", type=int, default=None, help="tasks pushed and timed, scaled to 1,000 (default 100; "
                                                             "quick 10)")
    ap.add_argument("--encoder-steps", type=int, default=None,
                    help="encoder steps timed (default 3 at the recipe's batch 32; quick 2 at batch 4)")
    ap.add_argument("--encoder-full-max-s", type=float, default=1200.0,
                    help="train the encoder's whole default recipe when it is projected to take less (default 1200)")
    ap.add_argument("--segmenter", choices=("reduced", "default", "quick", "off"), default=None,
                    help="the segmenter job: reduced (default: the default recipe's U-Net and batch, fewer steps and "
                         "a smaller pool; the default recipe's time extrapolated), default (the whole recipe), quick "
                         "(the smoke recipe; --quick's default) or off")
    ap.add_argument("--segmenter-steps", type=int, default=20, help="reduced: teacher and student steps (default 20)")
    ap.add_argument("--segmenter-pool", type=int, default=64, help="reduced: generator samples labeled (default 64)")
    ap.add_argument("--predict-budget-s", type=float, default=None,
                    help="DGAN_PREDICT_BUDGET_S for the page before the segmenter (default: the product's, 60; the page after always runs under the product's)")
    ap.add_argument("--finish-queued", action="store_true",
                    help="also run the job that predicts and imports the tasks the first page left (minutes per task "
                         "at 256 px on a CPU)")
    ap.add_argument("--redis-url", default=None, help="a Redis to use (default: a private redis-server for this run)")
    ap.add_argument("--workdir", default=None, help="where checkpoints and the model dir go (default: a temp dir, "
                                                    "removed at the end)")
    a = ap.parse_args(argv)
    q = a.quick
    a.fit_images = a.fit_images or (4 if q else 16)
    a.page = a.page or (8 if q else 30)
    a.push_n = a.push_n or (10 if q else 100)
    a.encoder_steps = a.encoder_steps or (2 if q else 3)
    a.encoder_batch = 4 if q else ENCODER_DEFAULT["batch"]
    a.segmenter = a.segmenter or ("quick" if q else "reduced")
    if a.inversion_steps is None and q:
        a.inversion_steps = 2
    if q:
        a.encoder_full_max_s = 0.0
    a.out = Path(a.out or ROOT / "docs" / "measured" / f"byo-{a.size}.json")
    return a


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from model.device import resolve_device

    device = resolve_device(a.device)
    own_tmp = a.workdir is None
    work = Path(a.workdir or tempfile.mkdtemp(prefix="dgan-byo-")).resolve()   # redis-server resolves its logfile after chdir
    work.mkdir(parents=True, exist_ok=True)
    head = {
        "what": "the bring-your-own-checkpoint path at a real StyleGAN2 size: convert, encoder, fit through "
                "inversion, a /predict page before and after the segmenter, push",
        "command": "scripts/byo_path.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "size": a.size, "device": str(device), "quick": a.quick, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "cpu": _cpu_name(), "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "widths": ("StyleGAN2's real widths (rosinality channel_multiplier=2)" if a.width_divisor == 1 else
                   f"StyleGAN2's widths divided by {a.width_divisor} (a test run, not a real size)"),
        "weights": f"random, seed {a.seed}: quality figures (mIoU, PSNR) mean nothing, timings and memory do",
        "label_studio": "a stand-in for its REST API (annotated tasks in, imports recorded); no Label Studio ran",
        "settings": {"fit_images": a.fit_images, "inversion_steps": a.inversion_steps or "product default (30)",
                     "page": a.page, "push_n": a.push_n, "segmenter": a.segmenter,
                     "predict_budget_s": (a.predict_budget_s if a.predict_budget_s is not None
                                          else "product default (60)")},
    }
    report = Report(a.out, head)
    try:
        with private_redis(a.redis_url, work / "redis") as redis_url:
            run(a, report, device, work, redis_url)
        report.data["status"] = "complete"
        report.data["stage"] = None
    except BaseException:
        report.data["status"] = "failed"
        raise
    finally:
        report.data["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
        report.write()
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    return report.data


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def run(a: argparse.Namespace, report: Report, device: torch.device, work: Path, redis_url: str) -> None:
    import redis

    from ls_backend.app import create_app
    from ls_backend.backend import Backend
    from ls_backend.brush import mask_to_results, parse_label_config
    from ls_backend.config import Settings
    from model.domain import CLASSES, render_batch
    from model.generator.checkpoints import convert, generator_id, load_generator, num_params
    from model.images import png_data_uri

    timers = Timers(device)
    size = a.size

    # -- 1. the user's checkpoint, converted ------------------------------------------------------
    with report.stage("checkpoint") as rec:
        t = time.perf_counter()
        sd, latent_avg = rosinality_state(size, divisor=a.width_divisor, seed=a.seed)
        src = work / "user-rosinality.pt"
        torch.save({"g_ema": sd, "latent_avg": latent_avg}, src)
        rec["make_and_write_rosinality_s"] = round(time.perf_counter() - t, 2)
        built_params = sum(v.numel() for k, v in sd.items() if not is_rosinality_buffer(k))
        n_mlp = len([k for k in sd if k.startswith("style.") and k.endswith(".weight")])
        dst = work / "mine.pt"
        t = time.perf_counter()
        convert(src, dst)                                   # what `dgan convert user.pt mine.pt` runs
        rec["convert_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        G = load_generator(dst)                             # what the backend and every command load
        rec["load_converted_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        gid = generator_id(G)
        rec["generator_id_s"] = round(time.perf_counter() - t, 2)
        cfg = G.cfg
        z = torch.randn(256, cfg.z_dim, generator=torch.Generator().manual_seed(a.seed + 2))
        with torch.no_grad():
            mapping_err = float((G.mapping(z) - rosinality_style(sd, z, n_mlp)).abs().max())
        rec.update({
            "format_in": "rosinality stylegan2-pytorch .pt {'g_ema', 'latent_avg'} (weights_only)",
            "rosinality_keys": len(sd), "built_parameters": built_params,
            "converted_parameters": num_params(G), "parameters_match": num_params(G) == built_params,
            "channels": {str(k): v for k, v in cfg.channels.items()}, "z_dim": cfg.z_dim, "w_dim": cfg.w_dim,
            "mapping_layers": cfg.mapping_layers, "num_ws": G.num_ws, "resolution": cfg.resolution,
            "latent_avg_is_w_avg": bool(torch.equal(G.mapping.w_avg, latent_avg)),
            "mapping_max_abs_diff_vs_rosinality_formula": mapping_err,
            "rosinality_file_mb": round(src.stat().st_size / 1e6, 1),
            "converted_file_mb": round(dst.stat().st_size / 1e6, 1),
            "generator_id": gid, "gflop_per_image": round(generator_gflop(cfg), 2),
        })
        from model.features import FeatureExtractor

        rec["feature_dim"] = FeatureExtractor(G).dim
        G = G.to(device)
        with torch.no_grad():
            for n in (1, 4):
                ws = G.map(torch.randn(n, cfg.z_dim, generator=torch.Generator().manual_seed(1)).to(device))
                G.synthesis(ws[:1])                          # warm-up
                sync(device)
                t = time.perf_counter()
                G.synthesis(ws)
                sync(device)
                rec[f"forward_s_per_image_batch{n}"] = round((time.perf_counter() - t) / n, 3)
        rec["achieved_gflop_per_s_batch4"] = round(rec["gflop_per_image"] / rec["forward_s_per_image_batch4"], 1)
        del sd
        report.summary(convert_s=rec["convert_s"], parameters=num_params(G), gflop_per_image=rec["gflop_per_image"],
                       forward_s_per_image=rec["forward_s_per_image_batch4"])

    # -- 2. the encoder -----------------------------------------------------------------------------
    with report.stage("encoder") as rec:
        from model.inversion import LatentEncoder, train_encoder

        k, batch = a.encoder_steps, a.encoder_batch
        t = time.perf_counter()
        enc = train_encoder(G, steps=1, batch=batch, base=ENCODER_DEFAULT["base"], seed=0)     # warm-up step
        sync(device)
        first = time.perf_counter() - t
        t = time.perf_counter()
        enc = train_encoder(G, steps=k, batch=batch, base=ENCODER_DEFAULT["base"], seed=0)
        sync(device)
        per_step = (time.perf_counter() - t) / k
        projected = per_step * ENCODER_DEFAULT["steps"] * ENCODER_DEFAULT["batch"] / batch
        rec.update({"default_recipe": dict(ENCODER_DEFAULT, source="`dgan train-encoder` defaults (model/cli.py)"),
                    "timed_steps": k, "timed_batch": batch, "first_step_s": round(first, 2),
                    "s_per_step": round(per_step, 2),
                    "s_per_step_at_batch_32": round(per_step * ENCODER_DEFAULT["batch"] / batch, 2)})
        if 0 < projected <= a.encoder_full_max_s:
            t = time.perf_counter()
            enc = train_encoder(G, **ENCODER_DEFAULT, seed=0)
            sync(device)
            rec["default_recipe_s"] = round(time.perf_counter() - t, 1)
            rec["default_recipe_s_is"] = "measured"
        else:
            rec["default_recipe_s"] = round(projected, 1)
            rec["default_recipe_s_is"] = ("extrapolated: s/step × 3,000 steps" +
                                          (f" × 32/{batch} (time taken ∝ batch)" if batch != 32 else ""))
        path = enc.save(work / "mine-encoder.pt")
        t = time.perf_counter()
        LatentEncoder.load(path, generator_id=gid)          # DGAN_ENCODER's load, checked against the generator
        rec["encoder_load_s"] = round(time.perf_counter() - t, 2)
        rec["encoder_file_mb"] = round(path.stat().st_size / 1e6, 1)
        rec["encoder_parameters"] = sum(p.numel() for p in enc.encoder.parameters())
        del enc
        # What the product does without one: Pipeline.load → load_encoder_for(G, None) → None (the shipped
        # encoder belongs to the shipped generator), and inversion starts from w_avg.
        from model.pipeline import Pipeline

        t = time.perf_counter()
        pipe_no_enc = Pipeline.load(str(work / "mine.pt"), None, device=device)
        rec["pipeline_load_without_encoder_s"] = round(time.perf_counter() - t, 2)
        rec["without_an_encoder"] = {
            "pipeline_encoder": None if pipe_no_enc.encoder is None else "found",
            "what_happens": "Pipeline.load finds no encoder for this generator (the shipped one belongs to the shipped "
                            "generator) and inverts from w_avg: fits and /predict work, with a worse start "
                            "(encoder: README 18.8 dB start, 23.5 dB after 30 steps at 64 px). This run's fit and "
                            "pages run that way, as a user who has not trained the encoder (see default_recipe_s)."}
        del pipe_no_enc
        report.summary(encoder_default_recipe_s=rec["default_recipe_s"],
                       encoder_default_recipe_s_is=rec["default_recipe_s_is"])

    # -- the backend, as `dgan serve` + `dgan worker` run it ----------------------------------------------
    classes = list(CLASSES)
    config = label_config(classes)
    label_map = parse_label_config(config)
    lab_img, lab_mask = render_batch(a.fit_images, seed=FIT_SEED, size=size)
    t = time.perf_counter()
    tasks = [{"id": 1 + i, "data": {"image": png_data_uri(img)},
              "annotations": [{"id": 100 + i, "result": mask_to_results(m, label_map)}]}
             for i, (img, m) in enumerate(zip(lab_img, lab_mask))]
    annotate_s = time.perf_counter() - t
    page_img, page_mask = render_batch(a.page, seed=PAGE_SEED, size=size)
    page_tasks = [{"id": 1000 + i, "data": {"image": png_data_uri(img)}} for i, img in enumerate(page_img)]
    ls = StandInLabelStudio(config, tasks + page_tasks)
    prefix, queue_name = f"dgan-byo-{uuid.uuid4().hex[:8]}", f"dgan-byo-{uuid.uuid4().hex[:8]}"
    env = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "stand-in", "REDIS_URL": redis_url,
           "MODEL_DIR": str(work / "models"), "DGAN_GENERATOR": str(work / "mine.pt"), "DGAN_QUEUE": queue_name,
           "DGAN_REDIS_PREFIX": prefix, "DGAN_DEVICE": str(device), "DGAN_REFINE": "never",
           "DGAN_SEGMENTER": "off" if a.segmenter == "off" else ("default" if a.segmenter == "default" else "quick")}
    if a.inversion_steps is not None:
        env["DGAN_INVERSION_STEPS"] = str(a.inversion_steps)
    settings = Settings.from_env(env)
    if a.predict_budget_s is not None:
        settings.predict_budget_s = a.predict_budget_s      # set directly: the variable refuses values below 1
    backend = Backend(settings)
    backend.__dict__["client"] = ls                         # Label Studio's REST API, stood in for
    conn = redis.Redis.from_url(redis_url)
    from ls_backend import jobs

    jobs._backend = backend                                 # the worker process's backend (jobs.get_backend)
    app = create_app(settings, backend).test_client()
    try:
        _backend_stages(a, report, device, timers, backend, app, conn, ls, settings, label_map, config,
                        lab_img, lab_mask, page_tasks, page_mask, annotate_s)
    finally:
        jobs._backend = None
        if a.redis_url:
            delete_own_keys(conn, prefix, queue_name)


def _backend_stages(a, report: Report, device, timers: Timers, backend, app, conn, ls: StandInLabelStudio, settings,
                    label_map, config: str, lab_img, lab_mask, page_tasks, page_mask, annotate_s: float) -> None:
    from ls_backend import jobs
    from ls_backend.push import Pusher
    from model.pipeline import SegmenterRecipe

    size = a.size
    # -- 3. the fit ---------------------------------------------------------------------------------------
    with report.stage("fit") as rec:
        t = time.perf_counter()
        pipe = backend.pipeline                              # the generator load a server does once
        rec["backend_pipeline_load_s"] = round(time.perf_counter() - t, 2)
        rec["encoder"] = None if pipe.encoder is None else "found"
        for name in ("invert", "cross_validate", "fit", "label", "train_segmenter", "synthesize", "sample_images"):
            timers.wrap(pipe, name)
        timers.wrap(backend, "latents")
        rec["brush_rle_of_the_annotations_s"] = round(annotate_s, 2)
        r = app.post("/setup", json={"project": f"{PROJECT}.1700000000", "schema": config})
        assert r.status_code == 200, r.get_json()
        t = time.perf_counter()
        r = app.post("/webhook", json={"action": "START_TRAINING", "project": {"id": PROJECT}})
        rec["webhook_s"] = round(time.perf_counter() - t, 3)
        assert r.status_code == 201 and r.get_json()["queued_fit"], r.get_json()
        t = time.perf_counter()
        job = jobs.fit_project(PROJECT)                     # the RQ job the webhook queued, run here
        sync(device)
        fit_s = time.perf_counter() - t
        fits = [f for f in job["fits"] if "version" in f]
        if not fits:
            raise RuntimeError(f"the fit job fitted nothing: {job}")
        version = fits[-1]["version"]
        meta = backend.store.version_meta(PROJECT, version)
        interp = backend.interpreter(PROJECT)[1]
        rec.update({"images": a.fit_images, "fit_job_s": round(fit_s, 2), "model_version": meta["model_version"],
                    "label_source": meta["label_source"], "cv_miou": meta["cv_miou"],
                    "cv_per_class": meta["cv_per_class"], "inversion_steps": settings.inversion_steps,
                    "interpreter": {"in_dim": interp.cfg.in_dim, "members": interp.cfg.members,
                                    "epochs": interp.cfg.epochs, "pixels": interp.report.pixels,
                                    "steps": interp.report.steps, "seconds": round(interp.report.seconds, 2)},
                    "interpreter_file_mb": round(
                        backend.store.interpreter_path(PROJECT, version).stat().st_size / 1e6, 2),
                    "timings": timers.take(),
                    "how": "POST /setup, POST /webhook START_TRAINING (queues the fit on RQ), then "
                           "ls_backend.jobs.fit_project run in this process (what `dgan worker` runs): Backend.fit "
                           "reads the annotated tasks, decodes brush RLE, inverts the images, cross-validates, fits"})
        rec["inversion_psnr_db_mean"] = latent_psnr(backend.store)
        queued = conn.llen(f"rq:queue:{settings.queue}")
        rec["segmenter_job_queued"] = bool(queued) and a.segmenter != "off"
        report.summary(fit_s=rec["fit_job_s"], fit_images=a.fit_images, fit_cv_miou=rec["cv_miou"])

    # -- 4a. a /predict page before the segmenter ------------------------------------------------------------
    body = {"project": f"{PROJECT}.1700000000", "label_config": config, "tasks": page_tasks,
            "params": {"login": None, "password": None, "context": None}}
    with report.stage("predict_before_segmenter") as rec:
        queue_key = f"rq:queue:{settings.queue}"
        before = conn.llen(queue_key)
        t = time.perf_counter()
        resp = app.post("/predict", json=body)
        sync(device)
        page_s = time.perf_counter() - t
        entries = resp.get_json()["results"]
        answered = [e for e in entries if "result" in e]
        queued = [e for e in entries if e.get("status") == "queued"]
        rec.update({"tasks": len(page_tasks), "page_s": round(page_s, 2), "answered": len(answered),
                    "queued_for_the_job": len(queued),
                    "s_per_answered_task": round(page_s / max(1, len(answered)), 2),
                    "within_label_studio_100s": page_s <= LS_TIMEOUT_S,
                    "budget_s": settings.predict_budget_s,
                    "model_versions": sorted({e["model_version"] for e in entries}),
                    "predict_job_enqueued": conn.llen(queue_key) > before,
                    "miou_answered_vs_exact_masks": page_miou(entries, page_mask, label_map, size),
                    "timings": timers.take(),
                    "how": "POST /predict (Flask test client) with the page's data-URI tasks, as 'Retrieve "
                           "predictions' sends them; tasks the budget leaves are queued (predict_and_import job)"})
        report.summary(predict_page_tasks=len(page_tasks), predict_page_s_before_segmenter=rec["page_s"],
                       predict_answered_before_segmenter=len(answered),
                       predict_within_100s_before_segmenter=rec["within_label_studio_100s"])
        leftover = [t["id"] for t, e in zip(page_tasks, entries) if e.get("status") == "queued"]
        if a.finish_queued and leftover:
            t = time.perf_counter()
            done = jobs.predict_and_import(PROJECT, leftover, config)     # the queued RQ job, run here
            sync(device)
            job_s = time.perf_counter() - t
            rec["queued_job"] = {"tasks": len(leftover), "imported": done["imported"], "job_s": round(job_s, 2),
                                 "s_per_task": round(job_s / len(leftover), 2), "timings": timers.take()}
            report.write()

    # -- the segmenter job -----------------------------------------------------------------------------------
    if a.segmenter != "off":
        with report.stage("segmenter") as rec:
            base = SegmenterRecipe()
            recipe = {"default": base, "quick": SegmenterRecipe.quick(),
                      "reduced": replace(base, teacher_steps=a.segmenter_steps, student_steps=a.segmenter_steps,
                                         pool=a.segmenter_pool)}[a.segmenter]
            recipe = replace(recipe, refine="never")
            # Backend.train_segmenter builds SegmenterRecipe() or .quick() from DGAN_SEGMENTER: hand it ours.
            patch = mock.patch.object(SegmenterRecipe, "quick", classmethod(lambda cls: recipe)) \
                if a.segmenter == "reduced" else contextlib.nullcontext()
            t = time.perf_counter()
            with patch:
                job = jobs.train_segmenter(PROJECT, version)     # the RQ job fit_project queued, run here
            sync(device)
            seg_s = time.perf_counter() - t
            seg = backend.segmenter(PROJECT)[1]
            if seg is None:
                raise RuntimeError(f"the segmenter job trained nothing: {job}")
            m = seg.meta
            rec.update({"recipe": a.segmenter, "teacher_steps": recipe.teacher_steps,
                        "student_steps": recipe.student_steps, "pool": recipe.pool, "batch": recipe.batch,
                        "base": recipe.base, "job_s": round(seg_s, 2), "teacher_s": m.get("teacher_seconds"),
                        "student_s": m.get("student_seconds"), "model_version": job.get("model_version"),
                        "timings": timers.take(),
                        "how": "ls_backend.jobs.train_segmenter run in this process (Backend.train_segmenter: "
                               "teacher on the labeled images, generator pool labeled by it, student); "
                               "DGAN_REFINE=never"})
            if a.segmenter == "default":
                rec["default_recipe_s"], rec["default_recipe_s_is"] = round(seg_s, 1), "measured"
            elif m.get("teacher_seconds") is not None and m.get("student_seconds") is not None:
                pool_s = max(0.0, m["seconds"] - m["teacher_seconds"] - m["student_seconds"])
                rec["pool_s"] = round(pool_s, 2)
                if a.segmenter == "reduced":
                    est = (m["teacher_seconds"] / recipe.teacher_steps * base.teacher_steps
                           + m["student_seconds"] / recipe.student_steps * base.student_steps
                           + pool_s / max(1, recipe.pool) * base.pool)
                    rec["default_recipe_s"] = round(est, 1)
                    rec["default_recipe_s_is"] = (f"extrapolated: teacher and student s/step × {base.teacher_steps} "
                                                  f"and {base.student_steps} steps, pool s/sample × {base.pool} "
                                                  "(same U-Net, batch and image size as the default recipe)")
            report.summary(segmenter_job_s=rec["job_s"], segmenter_recipe=a.segmenter,
                           **({"segmenter_default_recipe_s": rec["default_recipe_s"],
                               "segmenter_default_recipe_s_is": rec["default_recipe_s_is"]}
                              if "default_recipe_s" in rec else {}))

        # -- 4b. the same page once the segmenter serves (under the backend's own budget) -----------------------
        settings.predict_budget_s = type(settings).predict_budget_s
        with report.stage("predict_after_segmenter") as rec:
            t = time.perf_counter()
            resp = app.post("/predict", json=body)
            sync(device)
            page_s = time.perf_counter() - t
            entries = resp.get_json()["results"]
            answered = [e for e in entries if "result" in e]
            rec.update({"tasks": len(page_tasks), "page_s": round(page_s, 2), "answered": len(answered),
                        "queued_for_the_job": sum(e.get("status") == "queued" for e in entries),
                        "s_per_task": round(page_s / max(1, len(page_tasks)), 3),
                        "within_label_studio_100s": page_s <= LS_TIMEOUT_S,
                        "model_versions": sorted({e["model_version"] for e in entries}),
                        "miou_answered_vs_exact_masks": page_miou(entries, page_mask, label_map, size),
                        "recipe_of_the_serving_segmenter": a.segmenter, "timings": timers.take()})
            report.summary(predict_page_s_after_segmenter=rec["page_s"],
                           predict_within_100s_after_segmenter=rec["within_label_studio_100s"])

    # -- 5. push ---------------------------------------------------------------------------------------------
    with report.stage("push") as rec:
        from ls_backend.push import MAX_DATA_URI_PX

        doc_root = None
        if size > MAX_DATA_URI_PX:                 # larger images go to Label Studio's Local Storage folder
            doc_root = str(Path(settings.model_dir) / "ls-document-root")
        pusher = Pusher(backend, conn, doc_root)
        timers.wrap(pusher, "import_samples")
        t = time.perf_counter()
        run, _ = pusher.start_or_resume(PROJECT, a.push_n)          # `dgan push --n N` defaults: chunk 500, filter 0.1
        made = pusher.push(run)
        sync(device)
        push_s = time.perf_counter() - t
        timings = timers.take()
        stage_s = timings.get("import_samples", {}).get("seconds", 0.0)
        synth_s = timings.get("synthesize", {}).get("seconds", 0.0)
        seg_ready = backend.segmenter(PROJECT)[1] is not None
        synthesized = run.total_synthesized
        # `dgan push --n 1000`: chunks of 500 (keeping 450 of each), the last only what its quota needs (1,112).
        plan = push_plan(1000, run.filter_frac)
        if made == 1000:
            per_1000, per_1000_is = push_s, "measured"
        else:
            per_1000 = synth_s / synthesized * plan["synthesized"] + (push_s - synth_s) / max(1, made) * 1000
            per_1000_is = (f"scaled from {made} tasks ({synthesized} synthesized): synthesis s/sample × "
                           f"{plan['synthesized']} samples (dgan push --n 1000: {plan['chunks']} chunks of "
                           f"{plan['chunk']}) + the rest s/task × 1,000")
        rec.update({"tasks": made, "synthesized": synthesized, "chunk": run.chunk,
                    "filter": run.filter_frac, "push_s": round(push_s, 2),
                    "per_1000_tasks_s": round(per_1000, 1), "per_1000_tasks_s_is": per_1000_is,
                    "push_1000_plan": plan,
                    "synthesis_s": round(synth_s, 2), "push_stage_s": round(stage_s, 2),
                    "labels_by": "segmenter" if seg_ready else "interpreter",
                    "images_as": "Local Storage files" if doc_root else "data URIs",
                    "import_requests": len(ls.imported_tasks), "tasks_per_request": ls.imported_tasks,
                    "mean_task_json_kb": round(sum(ls.imported_bytes) / max(1, made) / 1e3, 1),
                    "largest_request_mb": round(max(ls.imported_bytes, default=0) / 1e6, 2),
                    "imported_seeds_distinct": len(ls.seeds) == made, "timings": timings,
                    "how": "Pusher.start_or_resume + Pusher.push (what `dgan push --project P --n N` runs, chunk 500, "
                           "filter 0.1) against a recording stand-in for Label Studio's import endpoint: Label "
                           "Studio's own import time is not included"})
        report.summary(push_tasks_timed=made, push_per_1000_tasks_s=rec["per_1000_tasks_s"],
                       push_per_1000_tasks_s_is=rec["per_1000_tasks_s_is"], push_labels_by=rec["labels_by"])


if __name__ == "__main__":
    result = main()
    print(json.dumps(result["summary"], indent=2))
