"""How well the zero-label foreground matches the truth (``dgan bench fgbg``), and its picture.

The score is Labels4Free's: IoU of the foreground (here the union of every non-background class of the
embedded domain) and of the background, and their mean, accumulated over the whole test set (pixels of
all images together, as PASCAL VOC), with precision and recall. The test images are the quality
table's (``render_batch(n, seed=1000)``), taken the way ``/predict`` takes a real image: inverted with
the product's inversion, then the alpha-net on the inverted latent. Two trivial masks give the floor:
everything foreground, and the best fixed mask (the test set's own mean foreground above ½, so
optimistic). Generator samples have no exact ground truth; their masks are compared with the masks of
the same images inverted (how much inversion costs), and with the foreground of the shipped
interpreter's labels (an agreement, not a ground truth) when an interpreter for the generator exists.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .fgbg import FgBg, background


def foreground_scores(mask: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Predicted and true foreground masks bool [N, H, W] → fg_iou, bg_iou, miou (their mean), precision,
    recall (all over the whole set, in [0, 1]) and fg_iou_per_image_mean (the mean of per-image IoUs)."""
    if mask.shape != truth.shape:
        raise ValueError(f"mask {mask.shape} and truth {truth.shape} must have the same shape")
    m, t = mask.astype(bool), truth.astype(bool)
    tp, fp, fn = (m & t).sum(), (m & ~t).sum(), (~m & t).sum()
    tn = m.size - tp - fp - fn
    inter = (m & t).reshape(len(m), -1).sum(1)
    union = (m | t).reshape(len(m), -1).sum(1)
    fg, bg = tp / max(tp + fp + fn, 1), tn / max(tn + fp + fn, 1)
    return {"fg_iou": round(float(fg), 4), "bg_iou": round(float(bg), 4), "miou": round(float(fg + bg) / 2, 4),
            "precision": round(float(tp / max(tp + fp, 1)), 4), "recall": round(float(tp / max(tp + fn, 1)), 4),
            "fg_iou_per_image_mean": round(float(np.mean(inter / np.maximum(union, 1))), 4)}


def bench_fgbg(generator: str | None = None, fgbg: str | None = None, quick: bool = False,
               device: str | None = None) -> dict[str, Any]:
    """``dgan bench fgbg``: the zero-label foreground on 500 (``quick``: 100) default-domain test images
    through inversion, and on generator samples (see the module docstring)."""
    from .domain import render_batch
    from .generator.default import load_fgbg_for, load_interpreter_for
    from .pipeline import Pipeline

    pipe = Pipeline.load(generator, device=device)
    model = load_fgbg_for(pipe.G, fgbg)
    if model is None:
        raise FileNotFoundError("no alpha-net for this generator: train one with `dgan train-fgbg"
                                + (f" --generator {generator} --out fgbg.pt` and pass --fgbg fgbg.pt" if generator
                                   else "` (it writes the shipped one)"))
    n = 100 if quick else 500
    t0 = time.time()
    images, labels = render_batch(n, seed=1000, size=pipe.resolution)
    truth = labels != 0
    ws, psnr = pipe.invert(images)
    t_inv = time.time() - t0
    t1 = time.time()
    alpha = pipe.foreground(model, ws)
    t_alpha = time.time() - t1
    mask = model.mask(alpha)
    out: dict[str, Any] = {"n_test": n, "threshold": model.cfg.threshold, **foreground_scores(mask, truth)}
    out["at_threshold_0.9"] = foreground_scores(alpha > 0.9, truth)   # Labels4Free's evaluation threshold
    prior = truth.mean(0) > 0.5
    out["trivial"] = {"all_foreground_fg_iou": foreground_scores(np.ones_like(truth), truth)["fg_iou"],
                      "best_fixed_mask_fg_iou": foreground_scores(np.broadcast_to(prior, truth.shape), truth)["fg_iou"]}
    out["inversion_psnr_db"] = round(float(psnr.mean()), 2)
    out["seconds_per_image"] = {"inversion": round(t_inv / n, 4), "alpha": round(t_alpha / n, 5)}

    # generator samples: exact latents vs the same images inverted; the interpreter's foreground
    k = min(n, 100)
    seeds = list(range(90_000_000, 90_000_000 + k))
    exact = pipe.seed_latents(seeds)
    sample_mask = model.mask(pipe.foreground(model, exact))
    inv_mask = model.mask(pipe.foreground(model, pipe.invert(pipe.sample_images(seeds))[0]))
    samples: dict[str, Any] = {"n": k, "ground_truth": None,
                               "inverted_vs_exact_latent": foreground_scores(inv_mask, sample_mask)}
    try:
        interp = load_interpreter_for(pipe.G)
    except (FileNotFoundError, ValueError):
        interp = None
    if interp is not None:
        interp_fg = pipe.label(interp, exact)[1].labels != 0
        samples["vs_interpreter_foreground"] = foreground_scores(sample_mask, interp_fg)
    out["samples"] = samples
    out["alpha_net"] = {"steps": model.meta.get("steps"), "training_seconds": model.meta.get("seconds"),
                        "generator_id": model.generator_id,
                        "parameters": int(sum(p.numel() for p in model.net.parameters()))}
    return out


def grid_rows(pipe, model: FgBg, ws, images: np.ndarray | None = None, with_background: bool = False) -> np.ndarray:
    """Three rows for a picture, uint8 [3·N, R, R, 3]: the image (``images``, uint8 [N, R, R, 3], or the
    generator's rendering of ``ws``), α (grey), and the image over a swapped background (the next latent's
    object-free background pass): α · image + (1 − α) · background. ``with_background``: a fourth row, the
    swapped-in background itself."""
    import torch

    from .images import to_uint8

    with torch.no_grad():
        dev = pipe.device
        fg = pipe.G.synthesis(ws.to(dev), noise_mode="const").clamp(-1, 1).cpu()
        bg = background(pipe.G, ws.roll(1, 0).to(dev)).clamp(-1, 1).cpu()
    if images is not None:
        fg = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    a = torch.from_numpy(pipe.foreground(model, ws))[:, None]
    comp = a * fg + (1 - a) * bg
    grey = (a.repeat(1, 3, 1, 1) * 2 - 1)
    rows = [to_uint8(fg), to_uint8(grey), to_uint8(comp)] + ([to_uint8(bg)] if with_background else [])
    return np.concatenate(rows)
