"""The ``dgan`` command line. Each subcommand imports what it needs when it runs (fast ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_domain_render(a: argparse.Namespace) -> int:
    from model.domain.dataset import write_domain_dataset

    out = write_domain_dataset(a.out, a.n, seed=a.seed, size=a.size, variant=a.variant, start=a.start,
                               progress=not a.quiet)
    print(f"wrote {a.n} images and labels to {out} (classes in {out / 'labels.json'})")
    return 0


def _cmd_sample(a: argparse.Namespace) -> int:
    from model.generator.default import load_default_or
    from model.images import save_grid, to_uint8

    G = load_default_or(a.generator)
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
                      max_images=a.max_images, generator=gen)
    trainer = train_gan(cfg, resume=a.resume)
    print(f"trained to {trainer.nimg / 1000:.1f} kimg; generator at {Path(a.out) / 'generator.pt'}")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from model import bench

    result = bench.run(a.what, a)
    print(json.dumps(result, indent=None if a.json else 2))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dgan", description="DatasetGAN labeling backend for Label Studio")
    sub = p.add_subparsers(dest="command", required=True)

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
    t.set_defaults(func=_cmd_train_gan)

    b = sub.add_parser("bench", help="benchmarks (JSON)")
    b.add_argument("what", choices=["generator"])
    b.add_argument("--json", action="store_true", help="print one compact JSON object")
    b.add_argument("--out", default=None, help="also write the JSON here")
    b.add_argument("--generator", default=None)
    b.add_argument("--repeats", type=int, default=5)
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"dgan {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
