"""Glue between the generator and the interpreter: fit from (latent, mask) pairs; label latents.

Both run on the generator's device (latents are moved there); what they return is on the CPU (the
fitted interpreter stays on the generator's device)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .device import module_device
from .features import FeatureExtractor
from .generator.checkpoints import generator_id
from .generator.stylegan2 import Generator
from .interpreter import Interpreter, InterpreterConfig, Prediction, balanced_pixel_sample
from .label_branch import LabelBranch


def fit_from_latents(G: Generator, ws: torch.Tensor, masks: np.ndarray | torch.Tensor, class_names: list[str],
                     cfg: InterpreterConfig | None = None, seed: int = 0, batch: int = 16,
                     noise_mode: str = "const") -> Interpreter:
    """Fit an interpreter on images given by latents and their label maps.

    ws: float32 [N, num_ws, w_dim]; masks: uint8 [N, H, W] (H = W = generator resolution), values
    in [0, len(class_names)). Memory: features only for the sampled pixels (≤ per_class per class)."""
    masks_t = torch.as_tensor(np.asarray(masks)).long()
    res = G.cfg.resolution
    if masks_t.shape[0] != ws.shape[0] or tuple(masks_t.shape[1:]) != (res, res):
        raise ValueError(f"masks must be [{ws.shape[0]}, {res}, {res}] to match the latents and the generator, "
                         f"got {list(masks_t.shape)}")
    fx = FeatureExtractor(G)
    dev = module_device(G)
    cfg = cfg or InterpreterConfig(in_dim=fx.dim, n_classes=len(class_names))
    cfg = replace(cfg, in_dim=fx.dim, n_classes=len(class_names))
    g = torch.Generator().manual_seed(seed)
    flat, weights = balanced_pixel_sample(masks_t, cfg.per_class, cfg.n_classes, generator=g)
    flat, order = flat.sort()
    weights = weights[order]
    n_idx, rem = flat // (res * res), flat % (res * res)
    ys, xs = rem // res, rem % res
    feats = torch.empty(flat.numel(), fx.dim, dtype=torch.float16)
    for start in range(0, ws.shape[0], batch):
        sel = (n_idx >= start) & (n_idx < start + batch)
        if not sel.any():
            continue
        _, maps = fx.native(ws[start:start + batch].to(dev), noise_mode)
        feats[sel] = fx.sample_maps(maps, (n_idx[sel] - start).to(dev), ys[sel].to(dev), xs[sel].to(dev),
                                    res).to(torch.float16).cpu()
    interp = Interpreter(cfg, class_names, generator_id(G))
    interp.fit(feats, masks_t.reshape(-1)[flat], weights if cfg.class_weighting == "natural" else None, seed=seed,
               device=dev)
    return interp


@torch.no_grad()
def label_latents(G: Generator, interp: Interpreter | LabelBranch, ws: torch.Tensor, batch: int = 16,
                  noise_mode: str = "const") -> tuple[torch.Tensor, Prediction]:
    """Images and interpreter labels for latents ws [N, num_ws, w_dim] →
    (images float32 [N, 3, H, W] in ≈[-1, 1] on the CPU, :class:`Prediction` over the N images)."""
    fx = FeatureExtractor(G)
    dev = module_device(G)
    expected = getattr(interp.cfg, "in_dim", fx.dim)     # a label branch derives its inputs from the maps
    if fx.dim != expected:
        raise ValueError(f"the interpreter expects {expected}-dim features, this generator gives {fx.dim}")
    images, parts = [], []
    for start in range(0, ws.shape[0], batch):
        img, maps = fx.native(ws[start:start + batch].to(dev), noise_mode)
        images.append(img.cpu())
        parts.append(interp.predict_native(maps, fx.resolution))
    pred = Prediction(np.concatenate([p.labels for p in parts]), np.concatenate([p.probs for p in parts]),
                      np.concatenate([p.uncertainty for p in parts]), np.concatenate([p.score for p in parts]))
    return torch.cat(images), pred
