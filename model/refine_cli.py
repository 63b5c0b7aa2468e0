"""``dgan refine``: train SimGAN's refiner on a folder of unlabeled real images, apply it, show it.

    dgan refine train --real FOLDER --out refiner.pt [--steps 1200] [--generator G.pt] [--parts SEG.pt]
    dgan refine apply --refiner refiner.pt --images FOLDER --out FOLDER
    dgan refine grid  --refiner refiner.pt --real FOLDER --out grid.png

``train`` is resumable: its state is written beside ``--out`` (``<out>.state``) every 100 steps, and a
second run with the same settings continues from it. Label Studio projects: ``dgan refine train
--project N`` (the backend's CLI adds it) reads the project's task images instead of a folder.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

POOL_SEED = 70_000_000    # generator samples a refiner trains on start at this seed
# (project id, limit, resolution) → the project's task images uint8 [N, R, R, 3] (the backend provides it)
ProjectImages = Callable[[int, int, int], "np.ndarray | None"]


def _real_images(folder: str, size: int, limit: int) -> np.ndarray:
    from model.images import load_image_folder

    return load_image_folder(folder, size, limit).permute(0, 2, 3, 1).numpy()


def train_from_images(real: np.ndarray, out: str | Path, generator: str | None = None, steps: int = 1200,
                      pool: int = 2000, self_reg: float = 10.0, seed: int = 0, device: str | None = None,
                      parts: str | Path | None = None) -> dict:
    """Train a refiner for ``generator``'s samples towards ``real`` (uint8 [N, R, R, 3]); write it to
    ``out`` (resumable through ``<out>.state``) and return its summary. ``parts``: a segmenter checkpoint
    (a version's ``.segmenter.pt``) that reads the samples' parts, for per-part colour maps."""
    from model.pipeline import Pipeline
    from model.refiner import RefinerConfig, train_refiner
    from model.segmenter import Segmenter

    pipe = Pipeline.load(generator, device=device)
    if real.shape[1:3] != (pipe.resolution, pipe.resolution):
        raise ValueError(f"real images are {real.shape[2]}x{real.shape[1]} px; the generator makes "
                         f"{pipe.resolution} px: read them at that size")
    samples = pipe.sample_images(list(range(POOL_SEED + seed * pool, POOL_SEED + (seed + 1) * pool)))
    out = Path(out)
    part_model = None
    if parts is not None:   # the part U-Net reads images only: one trained on real labeled images (dgan
        seg = Segmenter.load(parts)   # train-segmenter) records no generator and is fine; another one's is not
        if seg.generator_id is not None and seg.generator_id != pipe.generator_id:
            raise ValueError(f"{parts} belongs to generator {seg.generator_id}, not {pipe.generator_id}: give a "
                             "segmenter of this generator's project, or one trained with dgan train-segmenter "
                             "on labeled images of this domain")
        part_model = seg.model
    cfg = RefinerConfig(steps=steps, self_reg=self_reg, part_colours=part_model is not None)
    ref = train_refiner(samples, real, cfg, seed=seed, parts=part_model, generator_id=pipe.generator_id,
                        state_path=out.with_name(out.name + ".state"),
                        log=lambda m: print(m, flush=True))
    ref.save(out)
    return {"out": str(out), "generator_id": pipe.generator_id, **ref.meta}


def _cmd_train(a: argparse.Namespace, project_images: ProjectImages | None = None) -> int:
    from model.pipeline import Pipeline

    project = getattr(a, "project", None)
    if (a.real is None) == (project is None):
        raise SystemExit("dgan refine train: give either --real FOLDER (unlabeled images of the target domain)"
                         + (" or --project ID (a Label Studio project's task images)" if project_images else ""))
    res = Pipeline.load(a.generator, device=a.device).resolution
    if project is not None:
        real = project_images(project, a.limit, res)
        if real is None or len(real) < 8:
            raise SystemExit(f"project {project} has {0 if real is None else len(real)} readable task images; "
                             "a refiner needs at least 8")
    else:
        real = _real_images(a.real, res, a.limit)
    print(json.dumps(train_from_images(real, a.out, a.generator, a.steps, a.pool, a.self_reg, a.seed, a.device,
                                       a.parts)))
    return 0


def _cmd_apply(a: argparse.Namespace) -> int:
    from PIL import Image

    from model.images import list_images, read_rgb
    from model.refiner import Refiner

    ref = Refiner.load(a.refiner)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = list_images(a.images)
    for i in range(0, len(files), 256):
        part = files[i:i + 256]
        images = np.stack([read_rgb(p) for p in part])
        for p, img in zip(part, ref.refine(images)):
            Image.fromarray(img).save(out / (p.stem + ".png"))
    print(json.dumps({"refined": len(files), "out": str(out)}))
    return 0


def _cmd_grid(a: argparse.Namespace) -> int:
    from model.images import save_grid
    from model.pipeline import Pipeline
    from model.refiner import Refiner

    ref = Refiner.load(a.refiner)
    pipe = Pipeline.load(a.generator, device=a.device)
    samples = pipe.sample_images(list(range(a.n)))
    real = _real_images(a.real, pipe.resolution, a.n)
    path = save_grid(np.concatenate([samples, ref.refine(samples), real]), a.out, cols=a.n, scale=a.scale)
    print(f"wrote {path}: row 1 generator samples, row 2 refined, row 3 real images of {a.real}")
    return 0


def add_refine_commands(sub: argparse._SubParsersAction, add_device_option,
                        project_images: ProjectImages | None = None) -> None:
    """Register ``dgan refine {train,apply,grid}``; with ``project_images`` (the backend's reader of a Label
    Studio project's task images), ``train`` also takes ``--project ID``."""
    ref = sub.add_parser("refine", help="SimGAN refiner: make generator samples look like your real images")
    rs = ref.add_subparsers(dest="refine_cmd", required=True)
    t = rs.add_parser("train", help="train a refiner on unlabeled real images (resumable)")
    t.add_argument("--real", help="folder of unlabeled real images of the target domain")
    if project_images is not None:
        t.add_argument("--project", type=int, help="or: a Label Studio project whose task images are the target")
    t.add_argument("--out", required=True, help="refiner checkpoint to write")
    t.add_argument("--generator", default=None, help="default: the shipped generator")
    t.add_argument("--steps", type=int, default=1200)
    t.add_argument("--pool", type=int, default=2000, help="generator samples to refine during training")
    t.add_argument("--self-reg", type=float, default=10.0, help="weight of the structure-keeping term")
    t.add_argument("--limit", type=int, default=5000, help="use at most this many real images")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--parts", default=None,
                   help="a segmenter checkpoint of this generator (e.g. a version's .segmenter.pt): each part "
                        "it reads gets its own colour map (the backend's own refiners use the project's teacher)")
    add_device_option(t)
    t.set_defaults(func=partial(_cmd_train, project_images=project_images))
    ap = rs.add_parser("apply", help="refine a folder of generator images (labels stay valid)")
    ap.add_argument("--refiner", required=True, help="refiner checkpoint (`dgan refine train --out`)")
    ap.add_argument("--images", required=True, help="folder of generator images to refine")
    ap.add_argument("--out", required=True, help="folder the refined images are written to (same names, as PNG)")
    ap.set_defaults(func=_cmd_apply)
    g = rs.add_parser("grid", help="a picture: generator samples · refined · real images")
    g.add_argument("--refiner", required=True, help="refiner checkpoint (`dgan refine train --out`)")
    g.add_argument("--real", required=True, help="folder of real images of the target domain (the third row)")
    g.add_argument("--out", default="refiner-grid.png", help="PNG to write (default refiner-grid.png)")
    g.add_argument("--generator", default=None, help="default: the shipped generator")
    g.add_argument("--n", type=int, default=8, help="images per row (default 8)")
    g.add_argument("--scale", type=int, default=3, help="pixel upscaling of the picture (default 3)")
    add_device_option(g)
    g.set_defaults(func=_cmd_grid)
