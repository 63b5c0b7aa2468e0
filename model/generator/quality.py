"""GAN quality without Inception weights: Fréchet distance between the features of a segmentation
U-Net trained on real domain images, for generated vs real images, next to the floor given by two
disjoint real sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..images import to_uint8
from ..metrics import frechet_distance
from ..segmenter import UNet, embed
from .checkpoints import load_generator
from .stylegan2 import Generator


def generated_features(G: Generator, evaluator: UNet, n: int, seed: int = 0, psi: float = 1.0) -> np.ndarray:
    """Evaluator features [n, D] of n generated images (random noise, no truncation by default)."""
    feats = []
    for start in range(0, n, 250):
        imgs = G.sample(min(250, n - start), seed=seed + start, psi=psi, noise_mode="random")
        feats.append(embed(evaluator, to_uint8(imgs)))
    return np.concatenate(feats)


def fd_report(snapshots: list[Path], evaluator: UNet, real_a: np.ndarray, real_b: np.ndarray,
              n: int = 2000) -> dict:
    """{"floor": FD(real_a, real_b), "snapshots": [{"path", "kimg", "fd"}]} with n images per set."""
    fa, fb = embed(evaluator, real_a[:n]), embed(evaluator, real_b[:n])
    report = {"n": n, "floor": round(frechet_distance(fa, fb), 4), "snapshots": []}
    for path in snapshots:
        m = re.search(r"kimg(\d+(?:\.\d+)?)", path.name)
        G = load_generator(path)
        fd = frechet_distance(generated_features(G, evaluator, n), fa)
        report["snapshots"].append({"path": str(path), "kimg": float(m.group(1)) if m else None, "fd": round(fd, 4)})
    return report


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
