"""The model commands of ``dgan``: everything that needs no Label Studio and no Redis.

:func:`add_commands` registers them on the ``dgan`` parser (``ls_backend/cli.py`` adds the service
commands beside them). Each handler imports what it needs when it runs, so ``dgan --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

# The benchmarks of model/bench.py (named here so that building the parser imports no torch).
MODEL_BENCHES = ("generator", "interpreter", "inversion", "synthesis", "quality", "labeling-order", "refiner", "fgbg")

ExtraBench = Callable[[argparse.Namespace], dict[str, Any]]

DEVICE_HELP = "cpu, cuda, cuda:N or auto (cuda when torch sees a GPU); default: $DGAN_DEVICE, else cpu"


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` on a command that runs a model (None: ``DGAN_DEVICE``, resolved by model.device)."""
    parser.add_argument("--device", default=None, help=DEVICE_HELP)


def _device(a: argparse.Namespace):
    """The torch device of ``--device`` (or ``DGAN_DEVICE``); a clear error when it is wrong or absent."""
    from model.device import resolve_device

    return resolve_device(getattr(a, "device", None))


def _cmd_domain_render(a: argparse.Namespace) -> int:
    from model.domain.dataset import write_domain_dataset

    out = write_domain_dataset(a.out, a.n, seed=a.seed, size=a.size, variant=a.variant, start=a.start,
                               progress=not a.quiet)
    print(f"wrote {a.n} images and labels to {out} (classes in {out / 'labels.json'})")
    return 0


def _cmd_sample(a: argparse.Namespace) -> int:
    from model.generator.default import load_default_or
    from model.images import save_grid, to_uint8

    device = _device(a)
    G = load_default_or(a.generator).to(device)
    imgs = G.sample(a.n, seed=a.seed, psi=a.psi)
    path = save_grid(to_uint8(imgs), a.out, cols=a.cols, scale=a.scale)
    print(f"wrote {a.n} samples ({G.cfg.resolution}px, seed {a.seed}, psi {a.psi}) to {path}")
    return 0


def _cmd_convert(a: argparse.Namespace) -> int:
    from model.generator.checkpoints import convert, load_generator, num_params

    out = convert(a.src, a.dst)
    G = load_generator(out)
    print(f"converted {a.src} → {out}: {G.cfg.resolution}px, {num_params(G) / 1e6:.2f}M parameters, "
          f"{G.num_ws} w slots, upsample={G.cfg.upsample}, conv_clamp={G.cfg.conv_clamp}")
    return 0


def _cmd_train_gan(a: argparse.Namespace) -> int:
    from model.generator.stylegan2 import default_channels
    from model.generator.train import TrainConfig, train_gan

    gen = {"resolution": a.resolution, "z_dim": a.z_dim, "w_dim": a.w_dim,
           "channels": json.loads(a.channels) if a.channels else default_channels(a.resolution)}
    cfg = TrainConfig(data=a.data, out=a.out, batch=a.batch, lr=a.lr, r1_gamma=a.r1_gamma, pl_weight=a.pl_weight,
                      augment=tuple(x for x in a.augment.split(",") if x), total_kimg=a.kimg,
                      checkpoint_minutes=a.checkpoint_minutes, seed=a.seed, threads=a.threads,
                      max_images=a.max_images, generator=gen, device=str(_device(a)),
                      time_limit_minutes=a.time_limit_minutes)
    trainer = train_gan(cfg, resume=a.resume)
    print(f"trained to {trainer.nimg / 1000:.1f} kimg; generator at {Path(a.out) / 'generator.pt'}")
    return 0


def _cmd_preview(a: argparse.Namespace) -> int:
    import numpy as np

    from model.domain import render_batch
    from model.generator.checkpoints import num_params
    from model.generator.default import load_default_or
    from model.images import save_grid, to_uint8
    from model.visualize import preview_rows

    device = _device(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[1/3] rendering {a.n} default-domain images with exact part labels ...")
    images, labels = render_batch(a.n, seed=a.seed)
    save_grid(images, out / "domain-grid.png", cols=8, scale=2)
    save_grid(preview_rows(images[:8], labels[:8]), out / "domain-labels.png", cols=6, scale=3)
    print("[2/3] loading the shipped default generator ...")
    G = load_default_or(a.generator).to(device)
    print(f"      {G.cfg.resolution}px StyleGAN2, {num_params(G) / 1e6:.2f}M parameters")
    print(f"[3/3] sampling {a.n} images, and labeling 8 with the interpreter ...")
    save_grid(to_uint8(G.sample(a.n, seed=a.seed)), out / "generator-grid.png", cols=8, scale=2)
    names = ["domain-grid.png", "domain-labels.png", "generator-grid.png"]
    try:
        from model.generator.default import load_interpreter_for

        interp = load_interpreter_for(G, a.interpreter)
    except (FileNotFoundError, ValueError) as e:
        print(f"      no synthesized-labels panel: {e}")
    else:
        from model.pipeline import Pipeline

        samples = Pipeline(G, device=device).synthesize(list(range(a.seed, a.seed + 8)), interp)
        rows = preview_rows(np.stack([x.image for x in samples]), np.stack([x.labels for x in samples]))
        save_grid(rows, out / "synthesis-labels.png", cols=6, scale=3)
        names.append("synthesis-labels.png")
    print(f"done in {time.time() - t0:.1f}s:")
    for name in names:
        print(f"  {out / name}")
    return 0


def _cmd_train_segmenter(a: argparse.Namespace) -> int:
    import numpy as np

    from model.domain.dataset import read_labeled_folder
    from model.metrics import iou_per_class, mean_iou
    from model.segmenter import predict, save_segmenter, train_segmenter

    images, labels, classes = read_labeled_folder(a.data, limit=a.n)
    res = train_segmenter(images, labels, len(classes), steps=a.steps, batch=a.batch, base=a.base, seed=a.seed,
                          progress=True, device=_device(a))
    summary = {"n_train": len(images), "steps": a.steps, "seconds": round(res.seconds, 1),
               "final_loss": round(res.final_loss, 4)}
    if a.test:
        t_img, t_lab, _ = read_labeled_folder(a.test)
        pred = predict(res.model, t_img)
        per_class = np.round(100 * iou_per_class(pred, t_lab, len(classes)), 1).tolist()
        summary.update(n_test=len(t_img), miou=round(100 * mean_iou(pred, t_lab, len(classes)), 2),
                       iou_per_class=dict(zip(classes, per_class)))
    if a.out:
        save_segmenter(res.model, a.out, meta={"classes": classes, **{k: v for k, v in summary.items()
                                                                        if k != "iou_per_class"}})
    print(json.dumps(summary))
    return 0


def _cmd_eval_gan(a: argparse.Namespace) -> int:
    from model.domain.dataset import read_labeled_folder
    from model.generator.quality import fd_report, write_report
    from model.segmenter import load_segmenter

    evaluator = load_segmenter(a.evaluator)
    real, _, _ = read_labeled_folder(a.real, limit=2 * a.n)
    if len(real) < 2 * a.n:
        raise ValueError(f"{a.real} holds {len(real)} images; the floor needs 2 × {a.n} real images")
    run = Path(a.run)
    snaps = sorted((run / "snapshots").glob("*.pt")) if run.is_dir() else [run]
    if a.last:
        snaps = snaps[-a.last:]
    report = fd_report(snaps, evaluator, real[: a.n], real[a.n:], n=a.n)
    if run.is_dir():
        write_report(report, run / "fd.json")
    print(json.dumps(report, indent=2))
    return 0


def _cmd_train_encoder(a: argparse.Namespace) -> int:
    from model.generator.default import DEFAULT_ENCODER, load_default_or
    from model.inversion import train_encoder

    G = load_default_or(a.generator).to(_device(a))          # the encoder trains on the generator's device
    enc = train_encoder(G, steps=a.steps, batch=a.batch, base=a.base, seed=a.seed, progress=True)
    out = enc.save(a.out or DEFAULT_ENCODER)
    print(f"encoder for generator {enc.generator_id} written to {out} (final loss {enc.meta['final_loss']:.4f})")
    return 0


def _cmd_fit(a: argparse.Namespace) -> int:
    from model.domain.dataset import read_labeled_folder
    from model.pipeline import Pipeline

    pipe = Pipeline.load(a.generator, a.encoder, inversion_steps=a.steps, device=a.device)
    images, labels, classes = read_labeled_folder(a.data, limit=a.n)
    if images.shape[1] != pipe.resolution:
        raise ValueError(f"{a.data} holds {images.shape[1]}px images; the generator makes {pipe.resolution}px")
    t0 = time.time()
    ws, psnr = pipe.invert(images, batch=len(images))      # one batch, as inversion results depend on batching
    inversion_s = time.time() - t0
    interp = pipe.fit(ws, labels, classes, members=a.members, seed=a.seed)
    out = interp.save(a.out, meta={"n_images": len(images), "data": str(a.data),
                                   "inversion_psnr_db": float(psnr.mean())})
    print(json.dumps({"out": str(out), "n_images": len(images), "inversion_psnr_db": round(float(psnr.mean()), 2),
                      "inversion_seconds": round(inversion_s, 1), "fit_seconds": round(interp.report.seconds, 1),
                      "pixels": interp.report.pixels}))
    return 0


def _cmd_synthesize(a: argparse.Namespace) -> int:
    from model.generator.default import load_default_or, load_interpreter_for
    from model.synthesis import write_synthetic_dataset

    G = load_default_or(a.generator).to(_device(a))       # synthesis runs on the generator's device
    interp = load_interpreter_for(G, a.interpreter)
    summary = write_synthetic_dataset(G, interp, a.out, a.n, seed=a.seed, psi=a.psi, filter_frac=a.filter,
                                      chunk=a.chunk, progress=True)
    print(json.dumps(summary))
    return 0


def bench_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``model.bench.run(a.what, ...)`` from ``dgan bench`` flags."""
    kwargs: dict[str, Any] = {"generator": a.generator, "device": a.device}
    if a.what == "generator":
        kwargs["repeats"] = a.repeats
    elif a.what == "labeling-order":
        kwargs.update(quick=a.quick, draws=a.draws, cache=a.cache, baseline=a.baseline)
    elif a.what == "fgbg":
        kwargs.update(quick=a.quick, fgbg=a.fgbg)
    elif a.what == "quality":
        kwargs.update(quick=a.quick, out_dir=a.out_dir, unet_steps=a.unet_steps, draws=a.draws, rows=a.rows,
                      refiner=a.refiner)
    return kwargs


def _cmd_bench(a: argparse.Namespace, extra: Mapping[str, ExtraBench]) -> int:
    if a.what in extra:
        result = {"bench": a.what, **extra[a.what](a)}
    else:
        from model import bench

        result = bench.run(a.what, **bench_kwargs(a))
    print(json.dumps(result, indent=None if a.json else 2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def add_commands(sub: argparse._SubParsersAction, extra_benches: Mapping[str, ExtraBench] | None = None,
                 bench_options: Callable[[argparse.ArgumentParser], None] | None = None,
                 project_images: Callable | None = None) -> None:
    """Register the model commands on ``sub`` (the ``dgan`` parser's subparsers).

    ``project_images``: the backend's reader of a Label Studio project's task images, for
    ``dgan refine train --project`` (see model.refine_cli).

    ``extra_benches``: more ``dgan bench`` targets (name → function of the parsed arguments returning the
    result dict), run instead of model/bench.py's; ``bench_options`` adds their flags to ``dgan bench``
    (before the shared ones)."""
    extra = dict(extra_benches or {})

    dom = sub.add_parser("domain", help="the embedded default domain").add_subparsers(dest="domain_cmd", required=True)
    r = dom.add_parser("render", help="render images + exact part labels")
    r.add_argument("--n", type=int, required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--size", type=int, default=64)
    r.add_argument("--start", type=int, default=0, help="first sample index (to extend a dataset)")
    r.add_argument("--variant", default="default", choices=["default", "shifted"])
    r.add_argument("--out", required=True)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=_cmd_domain_render)

    s = sub.add_parser("sample", help="a sample grid from a generator (the shipped default if none given)")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--psi", type=float, default=1.0, help="truncation (1 = none)")
    s.add_argument("--generator", default=None, help="checkpoint (.pt ours/rosinality, .pkl NVlabs)")
    s.add_argument("--cols", type=int, default=8)
    s.add_argument("--scale", type=int, default=2)
    s.add_argument("--out", default="samples.png")
    add_device_option(s)
    s.set_defaults(func=_cmd_sample)

    c = sub.add_parser("convert", help="convert an NVlabs .pkl / rosinality .pt to our weights-only format")
    c.add_argument("src")
    c.add_argument("dst")
    c.set_defaults(func=_cmd_convert)

    t = sub.add_parser("train-gan", help="train a StyleGAN2 on a folder of images")
    t.add_argument("--data", required=True, help="folder of images (or a dataset folder with images/)")
    t.add_argument("--out", default="runs/gan")
    t.add_argument("--resolution", type=int, default=64)
    t.add_argument("--z-dim", type=int, default=128)
    t.add_argument("--w-dim", type=int, default=128)
    t.add_argument("--channels", default=None, help='JSON width table, e.g. \'{"4":128,"8":128,"16":64}\'')
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=0.0025)
    t.add_argument("--r1-gamma", type=float, default=0.05)
    t.add_argument("--pl-weight", type=float, default=0.0, help="path-length regularisation (0 = off)")
    t.add_argument("--augment", default="translation", help="comma list of translation,color,cutout ('' = none)")
    t.add_argument("--kimg", type=float, default=10_000, help="stop after this many thousand images")
    t.add_argument("--checkpoint-minutes", type=float, default=10)
    t.add_argument("--max-images", type=int, default=None)
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")
    t.add_argument("--device", default=None, help=DEVICE_HELP + " (a run started on one resumes on the other)")
    t.add_argument("--time-limit-minutes", type=float, default=None,
                   help="stop and checkpoint after this much wall time (for time-boxed sessions)")
    t.set_defaults(func=_cmd_train_gan)

    pv = sub.add_parser("preview", help="domain samples with labels and a generator sample grid (seconds)")
    pv.add_argument("--out", default="preview-out")
    pv.add_argument("--n", type=int, default=32)
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--generator", default=None)
    pv.add_argument("--interpreter", default=None, help="for the synthesized-labels panel (default: the shipped one)")
    add_device_option(pv)
    pv.set_defaults(func=_cmd_preview)

    ts = sub.add_parser("train-segmenter", help="train the U-Net on a labeled folder; report test mIoU")
    ts.add_argument("--data", required=True, help="labeled folder (images/, labels/, labels.json)")
    ts.add_argument("--n", type=int, default=None, help="use the first N labeled images")
    ts.add_argument("--test", default=None, help="labeled folder to evaluate on")
    ts.add_argument("--steps", type=int, default=1500)
    ts.add_argument("--batch", type=int, default=16)
    ts.add_argument("--base", type=int, default=16)
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--out", default=None)
    add_device_option(ts)
    ts.set_defaults(func=_cmd_train_segmenter)

    eg = sub.add_parser("eval-gan", help="Fréchet distance of U-Net features, per checkpoint, with the real floor")
    eg.add_argument("--run", required=True, help="a train-gan run folder (all snapshots) or one checkpoint")
    eg.add_argument("--real", required=True, help="labeled folder of real images (≥ 2n)")
    eg.add_argument("--evaluator", required=True, help="segmenter checkpoint (dgan train-segmenter --out)")
    eg.add_argument("--n", type=int, default=2000)
    eg.add_argument("--last", type=int, default=None, help="only the last K snapshots")
    eg.set_defaults(func=_cmd_eval_gan)

    te = sub.add_parser("train-encoder", help="train the inversion encoder on generator samples")
    te.add_argument("--generator", default=None)
    te.add_argument("--steps", type=int, default=3000)
    te.add_argument("--batch", type=int, default=32)
    te.add_argument("--base", type=int, default=32)
    te.add_argument("--seed", type=int, default=0)
    te.add_argument("--out", default=None, help="default: the shipped encoder next to the shipped generator")
    add_device_option(te)
    te.set_defaults(func=_cmd_train_encoder)

    fi = sub.add_parser("fit", help="fit an interpreter on labeled real images (through inversion)")
    fi.add_argument("--data", required=True, help="labeled folder (images/, labels/, labels.json)")
    fi.add_argument("--n", type=int, default=16)
    fi.add_argument("--generator", default=None)
    fi.add_argument("--encoder", default=None)
    fi.add_argument("--steps", type=int, default=30, help="inversion optimisation steps")
    fi.add_argument("--members", type=int, default=10)
    fi.add_argument("--seed", type=int, default=0)
    fi.add_argument("--out", required=True)
    add_device_option(fi)
    fi.set_defaults(func=_cmd_fit)

    sy = sub.add_parser("synthesize", help="write a labeled synthetic dataset (images, labels, manifest)")
    sy.add_argument("--n", type=int, required=True)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--psi", type=float, default=1.0)
    sy.add_argument("--filter", type=float, default=0.1, help="drop this fraction, most uncertain first")
    sy.add_argument("--chunk", type=int, default=500)
    sy.add_argument("--generator", default=None)
    sy.add_argument("--interpreter", default=None, help="default: the shipped interpreter")
    sy.add_argument("--out", required=True)
    add_device_option(sy)
    sy.set_defaults(func=_cmd_synthesize)

    from model.refine_cli import add_refine_commands

    add_refine_commands(sub, add_device_option, project_images)

    from model.fgbg_cli import add_fgbg_commands

    add_fgbg_commands(sub, add_device_option)

    b = sub.add_parser("bench", help="benchmarks (JSON)")
    b.add_argument("what", choices=[*MODEL_BENCHES, *extra])
    if bench_options is not None:
        bench_options(b)
    b.add_argument("--json", action="store_true", help="print one compact JSON object")
    b.add_argument("--out", default=None, help="also write the JSON here")
    b.add_argument("--generator", default=None)
    add_device_option(b)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--quick", action="store_true", help="quality, labeling-order: a smoke run of minutes instead "
                                                        "of about an hour; fgbg: 100 test images instead of 500")
    b.add_argument("--fgbg", default=None, help="fgbg: the alpha-net checkpoint (default: the shipped one)")
    b.add_argument("--out-dir", default=None, help="quality: write quality.json and quality.md here")
    b.add_argument("--unet-steps", type=int, default=None,
                   help="quality: steps of the few-shot U-Net and the teacher (default 800; the student 1.5×)")
    b.add_argument("--draws", type=int, default=None, help="quality, labeling-order: draws of the labeled images "
                                                            "(default 3)")
    b.add_argument("--cache", default=None,
                   help="labeling-order: keep every fit in this folder and reuse it on the next run (resumes an "
                        "interrupted run; a changed pick rule refits only the ranked curve)")
    b.add_argument("--baseline", default=None,
                   help="labeling-order: reuse the random order's curves from this earlier report (same settings; "
                        "each draw's first fit is refitted and must reproduce it) and fit only the ranked order")
    b.add_argument("--rows", choices=("all", "default", "shifted"), default="all",
                   help="quality: every row, only the default-domain ones, or the domain-shift (refiner) rows "
                        "with the baselines they are compared with")
    b.add_argument("--refiner", default=None, help="quality: a refiner trained on unlabeled shifted images "
                                                   "(dgan refine train) instead of training one")
    b.set_defaults(func=partial(_cmd_bench, extra=extra))
