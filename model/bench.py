"""Benchmarks that print JSON (``dgan bench …``). Speeds are reported next to a baseline measured in
the same process (an fp32 matmul peak), so figures from a busy or different machine stay comparable."""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def _best_time(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Achieved fp32 GFLOP/s of an n×n×n matmul (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    dt = _best_time(lambda: a @ b, repeats)
    return 2 * n ** 3 / dt / 1e9


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (multiply-adds count 2) of the convolutions and matmuls ``fn`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def machine() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def bench_generator(generator: str | None = None, repeats: int = 5) -> dict[str, Any]:
    """Images/s of the generator's forward pass (z → image, const noise) at batch 1 and 16, and the
    achieved GFLOP/s at batch 16 as a fraction of the fp32 matmul peak measured in the same run."""
    from .generator.checkpoints import num_params
    from .generator.default import load_default_or

    G = load_default_or(generator)
    torch.manual_seed(0)
    results: dict[str, Any] = {"generator": generator or "shipped default", "resolution": G.cfg.resolution,
                               "params_m": round(num_params(G) / 1e6, 3), "upsample": G.cfg.upsample}
    peak = matmul_peak_gflops(repeats=repeats)
    with torch.no_grad():
        for batch in (1, 16):
            z = torch.randn(batch, G.cfg.z_dim)
            dt = _best_time(lambda: G(z), repeats)
            results[f"images_per_s_b{batch}"] = round(batch / dt, 2)
            if batch == 16:
                flops = count_flops(lambda: G(z))
                results["gflop_per_image"] = round(flops / batch / 1e9, 4)
                results["gflops_b16"] = round(flops / dt / 1e9, 2)
    # Measure the peak again after the generator and keep the best, so a busy moment is not the baseline.
    peak = max(peak, matmul_peak_gflops(repeats=repeats))
    results["matmul_peak_gflops"] = round(peak, 2)
    results["ratio"] = round(results["gflops_b16"] / peak, 3)
    results["machine"] = machine()
    return results


BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "generator": lambda a: bench_generator(a.generator, a.repeats),
}


def run(what: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"bench": what, **BENCHES[what](args)}
