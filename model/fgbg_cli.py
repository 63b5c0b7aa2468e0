"""``dgan train-fgbg`` and ``dgan fgbg grid``: Labels4Free's zero-label foreground for a generator.

    dgan train-fgbg [--generator G.pt --out fgbg.pt] [--steps 2000] [--real FOLDER]
    dgan fgbg grid  [--fgbg fgbg.pt] [--real-domain] --out fgbg-grid.png

``train-fgbg`` is resumable: its state is written beside ``--out`` (``<out>.state``; ``--state`` elsewhere)
every 100 steps and kept at the end; the same command continues a stopped run, and a larger ``--steps``
trains further. Without ``--generator`` it trains the shipped generator's alpha-net, writes the shipped
file and keeps the state in ``runs/fgbg-shipped.state`` (out of the package). 2,000 steps at batch 8:
about 12 min on one busy core (0.35 s a step), fewer on two.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHIPPED_STATE = Path("runs") / "fgbg-shipped.state"   # training state of the shipped alpha-net (cwd-relative)


def _cmd_train(a: argparse.Namespace) -> int:
    import torch

    from model.fgbg import FgBgConfig
    from model.generator.default import DEFAULT_FGBG
    from model.pipeline import Pipeline

    if a.out is None and a.generator:
        raise ValueError("dgan train-fgbg: give --out FILE for the alpha-net of your generator (without "
                         "--generator it writes the shipped one)")
    out = Path(a.out) if a.out else DEFAULT_FGBG
    # the shipped alpha-net's training state stays out of the package folder (runs/ is not committed)
    state = Path(a.state) if a.state else (out.with_name(out.name + ".state") if a.out else SHIPPED_STATE)
    if a.threads:
        torch.set_num_threads(a.threads)
    pipe = Pipeline.load(a.generator, device=a.device)
    real = None
    if a.real:
        from model.images import load_image_folder

        real = load_image_folder(a.real, pipe.resolution, a.limit).permute(0, 2, 3, 1).numpy()
    cfg = FgBgConfig(steps=a.steps, batch=a.batch, psi=a.psi, w_bg=a.w_bg, phi_bg=a.phi_bg, d_init=a.d_init,
                     real="images" if a.real else "generator")
    t0 = time.time()
    model = pipe.train_fgbg(cfg, real, seed=a.seed, state_path=state,
                            log=lambda m: print(m, flush=True))
    model.save(out)
    print(json.dumps({"out": str(out), "state": str(state), "generator_id": model.generator_id,
                      "steps": model.meta["steps"],
                      "training_seconds": model.meta["seconds"], "this_run_seconds": round(time.time() - t0, 1),
                      "final_losses": model.meta["final_losses"]}))
    return 0


def _cmd_grid(a: argparse.Namespace) -> int:
    import numpy as np

    from model.fgbg_eval import grid_rows
    from model.generator.default import load_fgbg_for
    from model.images import save_grid
    from model.pipeline import Pipeline

    pipe = Pipeline.load(a.generator, device=a.device)
    model = load_fgbg_for(pipe.G, a.fgbg)
    if model is None:
        raise ValueError("no alpha-net for this generator: train one with `dgan train-fgbg` (and pass --fgbg)")
    seeds = list(range(a.seed, a.seed + a.n))
    k = 4 if a.with_background else 3
    rows = [grid_rows(pipe, model, pipe.seed_latents(seeds), with_background=a.with_background)]
    what = (f"rows 1-{k}: generator samples · α · the sample over another sample's background"
            + (" · that background (the 4x4-zeroed pass)" if a.with_background else ""))
    if a.real_domain:
        from model.domain import render_batch

        images, _ = render_batch(a.n, seed=1000, size=pipe.resolution)
        rows.append(grid_rows(pipe, model, pipe.invert(images)[0], images, with_background=a.with_background))
        what += (f"; rows {k + 1}-{2 * k}: default-domain test images · α through inversion · the image over a "
                 "swapped background" + (" · that background" if a.with_background else ""))
    path = save_grid(np.concatenate(rows), a.out, cols=a.n, scale=a.scale)
    print(f"wrote {path}: {what}")
    return 0


def add_fgbg_commands(sub: argparse._SubParsersAction, add_device_option) -> None:
    """Register ``dgan train-fgbg`` and ``dgan fgbg grid``."""
    t = sub.add_parser("train-fgbg", help="Labels4Free: train the zero-label foreground alpha-net of a generator "
                                          "(resumable)")
    t.add_argument("--generator", default=None, help="default: the shipped generator")
    t.add_argument("--out", default=None, help="alpha-net checkpoint to write (default: the shipped fgbg.pt, for "
                                               "the shipped generator)")
    t.add_argument("--state", default=None, help="training state to resume from and write (default: <out>.state; "
                                                 f"for the shipped alpha-net {SHIPPED_STATE})")
    t.add_argument("--steps", type=int, default=2000, help="total steps (a larger value continues a finished run)")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--real", default=None, help="folder of real images of the generator's domain for the "
                                                "discriminator (default: the generator's own samples)")
    t.add_argument("--limit", type=int, default=5000, help="use at most this many --real images")
    t.add_argument("--psi", type=float, default=1.0, help="truncation of the foreground pass")
    t.add_argument("--w-bg", type=float, default=2.0, help="weight of the background's minimum share")
    t.add_argument("--phi-bg", type=float, default=0.68,
                   help="the background's minimum share of the image, over a batch (default: the embedded "
                        "domain's 68 %%; set your domain's typical background share)")
    t.add_argument("--d-init", choices=("random", "pretrained"), default="random",
                   help="start the discriminator from random weights or from the generator's own")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    add_device_option(t)
    t.set_defaults(func=_cmd_train)

    f = sub.add_parser("fgbg", help="Labels4Free zero-label foreground: pictures")
    fs = f.add_subparsers(dest="fgbg_cmd", required=True)
    g = fs.add_parser("grid", help="a picture: image · α · the image over a swapped background")
    g.add_argument("--fgbg", default=None, help="alpha-net checkpoint (default: the shipped one)")
    g.add_argument("--generator", default=None)
    g.add_argument("--real-domain", action="store_true",
                   help="also default-domain test images, through inversion (as /predict sees them)")
    g.add_argument("--with-background", action="store_true", help="a fourth row: the swapped-in background pass")
    g.add_argument("--out", default="fgbg-grid.png")
    g.add_argument("--n", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--scale", type=int, default=3)
    add_device_option(g)
    g.set_defaults(func=_cmd_grid)
