"""Synthesize labeled images: sample latents by seed → image + interpreter label map + uncertainty.

Sample ``i`` of a run uses seed ``seed + i`` (its own z, independent of batching), so any range of
seeds can be produced anywhere, resumed, or split across workers. Filtering works per chunk of
consecutive seeds: the most uncertain ``filter_frac`` of each chunk is dropped, which keeps the
stream resumable at chunk boundaries.

Dataset folder written by :func:`write_synthetic_dataset` (same layout as the domain renderer)::

    images/s00000123.png  labels/s00000123.png (palette)  labels.json
    latents/chunk-00000000.npz   (seeds, ws float32 [n, num_ws, w_dim] of the kept samples)
    manifest.jsonl               one line per kept sample: seed, uncertainty, image, label, latent
    chunks.jsonl                 one line per finished chunk (what a resumed run skips)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .domain.dataset import save_label_png, write_labels_json
from .domain.render import LABEL_COLORS
from .device import module_device
from .features import FeatureExtractor
from .generator.checkpoints import generator_id
from .generator.stylegan2 import Generator
from .images import to_uint8
from .interpreter import Interpreter


@dataclass
class Sample:
    seed: int
    ws: np.ndarray          # float32 [num_ws, w_dim]
    image: np.ndarray       # uint8 [H, W, 3]
    labels: np.ndarray      # uint8 [H, W]
    uncertainty: float      # image score: mean of the top-10% pixel JS divergences (higher = less certain)


def latents_for_seeds(G: Generator, seeds: list[int], psi: float = 1.0) -> torch.Tensor:
    """W+ latents float32 [len(seeds), num_ws, w_dim] on G's device; seed s always gives the same latent
    (z is drawn on the CPU, whatever the device)."""
    z = torch.stack([torch.randn(G.cfg.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    with torch.no_grad():
        return G.map(z.to(module_device(G)), psi=psi)


def generate_chunk(G: Generator, interp: Interpreter, seeds: list[int], psi: float = 1.0, batch: int = 16,
                   fx: FeatureExtractor | None = None) -> list[Sample]:
    """Image, labels and uncertainty for every seed (nothing filtered)."""
    fx = fx or FeatureExtractor(G)
    out: list[Sample] = []
    for i in range(0, len(seeds), batch):
        part = seeds[i:i + batch]
        ws = latents_for_seeds(G, part, psi)
        img, maps = fx.native(ws, "const")
        pred = interp.predict_native(maps, fx.resolution)
        imgs, ws_np = to_uint8(img), ws.cpu().numpy()
        for j, s in enumerate(part):
            out.append(Sample(int(s), ws_np[j], imgs[j], pred.labels[j], float(pred.score[j])))
    return out


def keep_most_certain(samples: list[Sample], filter_frac: float) -> list[Sample]:
    """Drop the ``filter_frac`` most uncertain samples (ties broken by seed); keeps seed order."""
    n_drop = int(round(len(samples) * filter_frac))
    if n_drop == 0:
        return samples
    dropped = {s.seed for s in sorted(samples, key=lambda s: (-s.uncertainty, s.seed))[:n_drop]}
    return [s for s in samples if s.seed not in dropped]


def synthesize(G: Generator, interp: Interpreter, n: int, seed: int = 0, psi: float = 1.0,
               filter_frac: float = 0.1, chunk: int = 500, batch: int = 16,
               skip_chunks: set[int] | None = None) -> Iterator[tuple[int, list[Sample]]]:
    """Yield (chunk start seed, kept samples) for seeds seed .. seed+n-1 in chunks of ``chunk``."""
    if not 0 <= filter_frac < 1:
        raise ValueError(f"filter_frac must be in [0, 1), got {filter_frac}")
    fx = FeatureExtractor(G)
    for start in range(seed, seed + n, chunk):
        if skip_chunks and start in skip_chunks:
            continue
        seeds = list(range(start, min(start + chunk, seed + n)))
        yield start, keep_most_certain(generate_chunk(G, interp, seeds, psi, batch, fx), filter_frac)


def write_synthetic_dataset(G: Generator, interp: Interpreter, out: str | Path, n: int, seed: int = 0,
                            psi: float = 1.0, filter_frac: float = 0.1, chunk: int = 500,
                            progress: bool = False) -> dict:
    """Write (or resume) a labeled dataset folder; returns a summary dict."""
    out = Path(out)
    for sub in ("images", "labels", "latents"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    gid = generator_id(G)
    run = {"seed": seed, "n": n, "psi": psi, "filter_frac": filter_frac, "chunk": chunk, "generator_id": gid,
           "interpreter_generator_id": interp.generator_id}
    if interp.generator_id != gid:
        raise ValueError(f"the interpreter was fitted for generator {interp.generator_id}, not {gid}")
    run_file = out / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous != run:
            raise ValueError(f"{out} holds a synthesis run with other settings ({previous}); "
                             "use a new folder or the same settings to resume")
    run_file.write_text(json.dumps(run, indent=2))
    write_labels_json(out, interp.class_names, LABEL_COLORS[: len(interp.class_names)]
                      if len(interp.class_names) <= len(LABEL_COLORS) else _palette(len(interp.class_names)))
    chunks_file = out / "chunks.jsonl"
    done = {json.loads(line)["start"] for line in chunks_file.read_text().splitlines()} if chunks_file.exists() else set()
    manifest = out / "manifest.jsonl"
    if manifest.exists():  # a crash between the manifest and the chunk record: drop the unfinished chunk's lines
        keep = [line for line in manifest.read_text().splitlines()
                if (lambda sd: sd - (sd - seed) % chunk)(json.loads(line)["seed"]) in done]
        manifest.write_text("".join(line + "\n" for line in keep))
    total_chunks = (n + chunk - 1) // chunk
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, initial=min(n, len(done) * chunk), unit="img", desc="synthesize")
    t0 = time.time()
    made = 0
    for start, samples in synthesize(G, interp, n, seed, psi, filter_frac, chunk, skip_chunks=done):
        lines = []
        for s in samples:
            name = f"s{s.seed:08d}.png"
            Image.fromarray(s.image).save(out / "images" / name)
            save_label_png(s.labels, out / "labels" / name)
            lines.append(json.dumps({"seed": s.seed, "uncertainty": round(s.uncertainty, 6), "image": f"images/{name}",
                                     "label": f"labels/{name}", "latent": f"latents/chunk-{start:08d}.npz",
                                     "psi": psi, "generator_id": gid}))
        np.savez(out / "latents" / f"chunk-{start:08d}.npz", seeds=np.array([s.seed for s in samples]),
                 ws=np.stack([s.ws for s in samples]) if samples else np.zeros((0,)))
        with open(out / "manifest.jsonl", "a") as f:
            f.write("".join(line + "\n" for line in lines))
        with open(chunks_file, "a") as f:
            f.write(json.dumps({"start": start, "kept": len(samples)}) + "\n")
        made += min(chunk, seed + n - start)
        if bar:
            bar.update(min(chunk, seed + n - start))
    if bar:
        bar.close()
    kept = sum(1 for _ in open(out / "manifest.jsonl")) if (out / "manifest.jsonl").exists() else 0
    return {"out": str(out), "generated_now": made, "kept_total": kept, "chunks": total_chunks,
            "seconds": round(time.time() - t0, 2)}


def _palette(n: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(0)
    return [(0, 0, 0)] + [tuple(int(v) for v in rng.integers(40, 255, 3)) for _ in range(n - 1)]
