"""Benchmarks that print JSON (``dgan bench …``). Speeds are reported next to a baseline measured in
the same process (an fp32 matmul peak), so figures from a busy or different machine stay comparable.
Every bench takes ``device`` (default ``DGAN_DEVICE``, else the CPU; :func:`model.device.resolve_device`)
and reports it under ``machine``; GPU timings wait for the device's queued work."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .device import resolve_device, synchronize


def print_json(report: dict, out: str | None = None) -> None:
    """Print a report as indented JSON and, with ``out``, write the same text there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def _best_time(fn: Callable[[], Any], repeats: int, warmup: int = 2, device: torch.device | None = None) -> float:
    """Best wall time of ``fn`` over ``repeats`` runs (after ``warmup``), waiting for ``device``'s work."""
    dev = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(dev)
        t = time.perf_counter()
        fn()
        synchronize(dev)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak_gflops(n: int = 1024, repeats: int = 5, device: torch.device | None = None) -> float:
    """Achieved fp32 GFLOP/s of an n×n×n matmul (best of ``repeats``) on ``device`` (default the CPU)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    dt = _best_time(lambda: a @ b, repeats, device=device)
    return 2 * n ** 3 / dt / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (multiply-adds count 2) of the convolutions and matmuls ``fn`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """Where a bench ran: torch, CPU threads and cores, processor, and the device (its name on a GPU)."""
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "processor": platform.processor() or platform.machine(), "device": str(device or "cpu")}
    if device is not None and device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def bench_generator(generator: str | None = None, repeats: int = 5, device: str | None = None) -> dict[str, Any]:
    """Images/s of the generator's forward pass (z → image, const noise) at batch 1 and 16, and the
    achieved GFLOP/s at batch 16 as a fraction of the fp32 matmul peak measured in the same run."""
    from .generator.checkpoints import num_params
    from .generator.default import load_default_or

    dev = resolve_device(device)
    G = load_default_or(generator).to(dev)
    torch.manual_seed(0)
    results: dict[str, Any] = {"generator": generator or "shipped default", "resolution": G.cfg.resolution,
                               "params_m": round(num_params(G) / 1e6, 3), "upsample": G.cfg.upsample}
    peak = matmul_peak_gflops(repeats=repeats, device=dev)
    with torch.no_grad():
        for batch in (1, 16):
            z = torch.randn(batch, G.cfg.z_dim).to(dev)
            dt = _best_time(lambda: G(z), repeats, device=dev)
            results[f"images_per_s_b{batch}"] = round(batch / dt, 2)
            if batch == 16:
                flops = count_flops(lambda: G(z))
                results["gflop_per_image"] = round(flops / batch / 1e9, 4)
                results["gflops_b16"] = round(flops / dt / 1e9, 2)
    # Measure the peak again after the generator and keep the best, so a busy moment is not the baseline.
    peak = max(peak, matmul_peak_gflops(repeats=repeats, device=dev))
    results["matmul_peak_gflops"] = round(peak, 2)
    results["ratio"] = round(results["gflops_b16"] / peak, 3)
    results["machine"] = machine(dev)
    return results


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def interpreter_fit_once(size: int, n_images: int = 16, generator: str | None = None, members: int = 10,
                         device: str | None = None) -> dict:
    """Fit the interpreter once on n domain images at ``size`` px; run in a fresh process for clean RSS."""
    from .domain import CLASSES, render_batch
    from .generator.default import load_default_or
    from .generator.stylegan2 import Generator, GeneratorConfig, default_channels
    from .interpreter import InterpreterConfig
    from .labeling import fit_from_latents

    dev = resolve_device(device)
    torch.manual_seed(0)
    if size == 64 or generator:
        G = load_default_or(generator)
        size = G.cfg.resolution
    else:   # the same slim architecture at a larger size (random weights: the timing is what counts)
        G = Generator(GeneratorConfig(resolution=size, channels=default_channels(size))).eval().requires_grad_(False)
    G.to(dev)
    _, labels = render_batch(n_images, seed=1, size=size)
    ws = G.map(torch.randn(n_images, G.cfg.z_dim).to(dev))
    rss0 = _rss_mb()
    synchronize(dev)
    t = time.perf_counter()
    interp = fit_from_latents(G, ws, labels, list(CLASSES), InterpreterConfig(in_dim=0, n_classes=len(CLASSES),
                                                                              members=members))
    synchronize(dev)
    return {"device": str(dev), "size": size, "n_images": n_images, "fit_seconds": round(time.perf_counter() - t, 2),
            "train_seconds": round(interp.report.seconds, 2), "pixels_sampled": interp.report.pixels,
            "pixels_per_s": round(interp.report.pixels_per_s), "feature_dim": interp.cfg.in_dim,
            "rss_before_fit_mb": round(rss0), "peak_rss_mb": round(_peak_rss_mb())}


def bench_interpreter(generator: str | None = None, sizes: tuple[int, ...] = (64, 128, 256), n_images: int = 16,
                      device: str | None = None) -> dict:
    """Fit time and peak RSS for 16 images at each size, each in its own process (clean peak RSS)."""
    import json
    import subprocess
    import sys

    dev = resolve_device(device)          # resolved here, so a wrong device fails before any process starts
    runs = []
    for size in sizes:
        code = ("import json, torch; from model.bench import interpreter_fit_once; "
                f"print(json.dumps(interpreter_fit_once({size}, {n_images}, {generator!r}, device={str(dev)!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = runs[0]
    return {"n_images": first["n_images"], "size": first["size"], "fit_seconds": first["fit_seconds"],
            "peak_rss_mb": first["peak_rss_mb"], "by_size": runs, "machine": machine(dev)}


def bench_inversion(generator: str | None = None, n_images: int = 32, steps: int = 30,
                    device: str | None = None) -> dict:
    """Encoder start + ``steps`` W+ optimisation steps on n held-out domain images (one batch): seconds,
    PSNR, and how well the shipped interpreter labels the real images through the inverted latents
    (label mIoU against the exact masks). Pixel MSE (the default) next to pixel + the discriminator's
    feature loss, when a discriminator trained with this generator is available."""
    from .domain import CLASSES, render_batch
    from .generator.default import load_default_or, load_discriminator_for, load_encoder_for, load_interpreter_for
    from .inversion import DiscriminatorFeatureLoss, images_to_tensor, invert
    from .labeling import label_latents
    from .metrics import iou_per_class, per_class_percent

    dev = resolve_device(device)
    G = load_default_or(generator).to(dev)
    enc = load_encoder_for(G)
    if enc is not None:
        enc.to(dev)
    try:
        interp = load_interpreter_for(G)
    except (FileNotFoundError, ValueError):
        interp = None
    images, labels = render_batch(n_images, seed=1, size=G.cfg.resolution)
    x = images_to_tensor(images).to(dev)
    invert(G, x[:2], encoder=enc, steps=2)   # warm-up

    def run(feature_loss=None) -> tuple[dict, object]:
        res = invert(G, x, encoder=enc, steps=steps, feature_loss=feature_loss)
        row = {"seconds_per_image": round(res.seconds / n_images, 3), "psnr_db": round(float(res.psnr_db.mean()), 2)}
        if interp is not None and interp.cfg.n_classes == len(CLASSES):
            iou = iou_per_class(label_latents(G, interp, res.ws)[1].labels, labels, len(CLASSES))
            row["label_miou"] = round(100 * float(np.nanmean(iou)), 2)
            row["label_per_class"] = per_class_percent(iou, list(CLASSES))
        return row, res

    pixel, res = run()
    out = {"n_images": n_images, "steps": steps, "encoder": enc is not None, **pixel,
           "psnr_db_encoder_only": round(float(res.psnr_encoder_db.mean()), 2), "loss": "pixel MSE"}
    D = load_discriminator_for(G)
    if D is not None:
        out["with_discriminator_features"] = run(DiscriminatorFeatureLoss(D.to(dev), weight=0.1))[0]
    out["machine"] = machine(dev)
    return out


def bench_synthesis(generator: str | None = None, interpreter: str | None = None, n: int = 64,
                    device: str | None = None) -> dict:
    """Labeled images/s next to bare generator images/s, same run: labeled by the segmenter (what push uses
    once a project's segmenter is ready; ``ratio_segmenter``) and by the interpreter ensemble (``ratio``)."""
    from .features import FeatureExtractor
    from .generator.default import load_default_or, load_interpreter_for
    from .synthesis import generate_chunk, latents_for_seeds

    dev = resolve_device(device)
    G = load_default_or(generator).to(dev)
    interp = load_interpreter_for(G, interpreter).to(dev)
    fx = FeatureExtractor(G)
    seeds = list(range(n))
    generate_chunk(G, interp, seeds[:16], fx=fx)   # warm-up

    def bare() -> None:
        with torch.no_grad():
            for i in range(0, n, 16):
                G.synthesis(latents_for_seeds(G, seeds[i:i + 16]), noise_mode="const")

    t_bare = _best_time(bare, 2, warmup=1, device=dev)
    t_lab = _best_time(lambda: generate_chunk(G, interp, seeds, fx=fx), 2, warmup=0, device=dev)
    # Where the ratio can go: the interpreter's arithmetic per image against the generator's. Even at
    # equal efficiency, labeled/bare ≤ G / (G + I) — the DatasetGAN ensemble (10 × d→128→32→C per pixel)
    # outweighs a small generator many times over.
    ws = latents_for_seeds(G, seeds[:16])
    g_flops = count_flops(lambda: G.synthesis(ws, noise_mode="const")) / 16
    _, maps = fx.native(ws, "const")
    i_flops = count_flops(lambda: interp.predict_native(maps, fx.resolution)) / 16
    # What `dgan push` labels with once a project's segmenter is ready: the U-Net on each generated image
    # (flip-averaged). Its speed does not depend on its weights: an untrained one of the served shape.
    from .pipeline import Pipeline
    from .segmenter import Segmenter, UNet, UNetConfig

    pipe = Pipeline(G, device=dev)
    seg = Segmenter(UNet(UNetConfig(n_classes=interp.cfg.n_classes)), interp.class_names, pipe.generator_id).to(dev)
    pipe.synthesize(seeds[:16], segmenter=seg)   # warm-up
    t_seg = _best_time(lambda: pipe.synthesize(seeds, segmenter=seg), 2, warmup=0, device=dev)
    s_flops = count_flops(lambda: seg.label(pipe.sample_images(seeds[:16]))) / 16 - g_flops
    return {"n": n, "generator_images_per_s": round(n / t_bare, 2),
            "segmenter_labeled_images_per_s": round(n / t_seg, 2), "ratio_segmenter": round(t_bare / t_seg, 3),
            "segmenter_gflop_per_image": round(s_flops / 1e9, 4),
            "labeled_images_per_s": round(n / t_lab, 2),
            "ratio": round(t_bare / t_lab, 3), "members": interp.cfg.members,
            "generator_gflop_per_image": round(g_flops / 1e9, 4), "interpreter_gflop_per_image": round(i_flops / 1e9, 4),
            "ratio_bound_equal_efficiency": round(g_flops / (g_flops + i_flops), 3), "machine": machine(dev)}


def bench_refiner(generator: str | None = None, n: int = 1000, steps: int = 60, device: str | None = None) -> dict:
    """SimGAN refiner speed at the product's configuration (part colours read by a U-Net of the recipe's
    size, 10 classes): seconds to refine ``n`` generator samples next to the seconds the generator takes to
    draw them (same process: ``ratio_refine`` = refine / draw), and the seconds per training step,
    extrapolated to the default step count (``training_seconds_default``)."""
    from .pipeline import Pipeline, SegmenterRecipe
    from .refiner import Refiner, RefinerConfig, RefinerNet, train_refiner
    from .segmenter import UNet, UNetConfig

    dev = resolve_device(device)
    pipe = Pipeline.load(generator, device=dev)
    seeds = list(range(n))
    t_draw = _best_time(lambda: pipe.sample_images(seeds), 2, warmup=1, device=dev)
    samples = pipe.sample_images(seeds)
    recipe = SegmenterRecipe()
    cfg = RefinerConfig(part_colours=recipe.refiner_part_colours)
    parts = UNet(UNetConfig(n_classes=10, base=recipe.base)) if cfg.part_colours else None
    refiner = Refiner(RefinerNet(cfg, parts)).to(dev)     # speed does not depend on the weights
    t_refine = _best_time(lambda: refiner.refine(samples), 2, warmup=1, device=dev)
    shifted_like = np.ascontiguousarray(samples[: min(n, 512), :, :, ::-1])   # any real set: channel-swapped
    t0 = time.perf_counter()
    train_refiner(samples[:512], shifted_like, RefinerConfig(steps=steps, part_colours=cfg.part_colours), parts=parts,
                  device=dev)
    per_step = (time.perf_counter() - t0) / steps
    default_steps = recipe.refiner_steps
    return {"n": n, "resolution": pipe.resolution, "refine_seconds": round(t_refine, 4),
            "generator_seconds": round(t_draw, 4), "ratio_refine": round(t_refine / t_draw, 3),
            "refine_per_1000_s": round(t_refine * 1000 / n, 2), "train_step_s": round(per_step, 3),
            "default_steps": default_steps, "training_seconds_default": round(per_step * default_steps, 1),
            "config": cfg.to_dict(), "machine": machine(dev)}


def bench_quality(generator: str | None = None, quick: bool = False, out_dir: str | None = None,
                  unet_steps: int | None = None, draws: int | None = None, device: str | None = None,
                  rows: str = "all", refiner: str | None = None) -> dict:
    """The DatasetGAN comparison table (see model/quality_table.py); ``quick`` is a minutes-long smoke run.
    With ``out_dir`` the table so far is written after every draw, and the whole table at the end (and the
    domain-shift refiner's training state while it trains); a stopped run started again with the same
    ``out_dir`` keeps the draws it finished and its refiners (same settings, generator, torch, device, code
    and given refiner); another table found there is moved to ``out_dir/previous/`` first.
    ``rows``: ``all``; ``default`` (no domain-shift rows); ``shifted`` (the domain-shift rows and the
    baselines they are compared with, no ceiling or synthetic-size rows). ``refiner``: a refiner checkpoint
    trained on unlabeled shifted images (``dgan refine train``) to use instead of training one."""
    if rows not in ("all", "default", "shifted"):
        raise ValueError(f"rows must be all, default or shifted, got {rows!r}")
    from .pipeline import Pipeline
    from .quality_table import QualitySettings, made_with, resume_point, run_quality, write

    dev = resolve_device(device)
    # The table's own U-Nets (few-shot baseline, ceiling) train on DGAN_DEVICE: make it this device.
    os.environ["DGAN_DEVICE"] = str(dev)
    settings = QualitySettings.quick() if quick else QualitySettings()
    if unet_steps:
        settings.unet_steps = unet_steps
    if draws:
        settings.draws = draws
    settings.domain_shift = rows != "default"
    settings.default_rows = rows != "shifted"

    def save(report: dict) -> None:
        if out_dir:
            write({**report, "machine": machine(dev)}, out_dir)

    pipe = Pipeline.load(generator, inversion_steps=settings.inversion_steps, device=dev)
    from .refiner import Refiner

    trained = Refiner.load(refiner, pipe.generator_id) if refiner else None
    earlier = Path(out_dir) / "quality.json" if out_dir else None
    previous = None
    if earlier is not None and earlier.exists():
        try:
            previous = json.loads(earlier.read_text())
        except (OSError, ValueError) as e:
            print(f"{earlier} could not be read ({e}): the table starts over", file=sys.stderr)
    made = made_with(settings, pipe.generator_id, str(pipe.device), trained.meta if trained else None)
    if previous is not None and not resume_point(previous, made).same:
        # Another table: it and the refiners it kept move to previous/ (not overwritten, not reused).
        aside = Path(out_dir) / "previous"
        aside.mkdir(exist_ok=True)
        for f in [Path(out_dir) / "quality.json", Path(out_dir) / "quality.md", *Path(out_dir).glob("refiner*")]:
            if f.exists():
                f.replace(aside / f.name)
    report = run_quality(pipe, settings, log=lambda m: print(m, file=sys.stderr, flush=True), on_partial=save,
                         refiner_state=Path(out_dir) / "refiner.state" if out_dir else None, refiner=trained,
                         resume=previous)
    save(report)
    return {**report, "machine": machine(dev)}


def bench_labeling_order(**kwargs: Any) -> dict[str, Any]:
    """Labels the ranked labeling order needs to reach what 16 random labels reach (model/bench_labeling_order.py)."""
    from .bench_labeling_order import bench_labeling_order as run_bench

    return run_bench(**kwargs)


def bench_fgbg(**kwargs: Any) -> dict[str, Any]:
    """Labels4Free's zero-label foreground IoU on default-domain test images (model/fgbg_eval.py)."""
    from .fgbg_eval import bench_fgbg as run_bench

    return run_bench(**kwargs)


BENCHES: dict[str, Callable[..., dict[str, Any]]] = {
    "generator": bench_generator,
    "interpreter": bench_interpreter,
    "inversion": bench_inversion,
    "synthesis": bench_synthesis,
    "quality": bench_quality,
    "refiner": bench_refiner,
    "labeling-order": bench_labeling_order,
    "fgbg": bench_fgbg,
}


def run(what: str, **kwargs: Any) -> dict[str, Any]:
    """Benchmark ``what`` (a key of :data:`BENCHES`) called with ``kwargs`` (its function's keyword
    arguments, e.g. ``generator=``): ``{"bench": what, **its result}``."""
    if what not in BENCHES:
        raise ValueError(f"unknown benchmark {what!r}; choose one of {', '.join(BENCHES)}")
    return {"bench": what, **BENCHES[what](**kwargs)}
