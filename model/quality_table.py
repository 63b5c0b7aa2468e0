"""The DatasetGAN comparison on the embedded domain, with exact ground truth (``dgan bench quality``).

Methods, each scored by mIoU (%) on a held-out real test set, mean ± std over draws of the labeled set:
1. ``unet_16_real``          U-Net trained on the 16 labeled real images;
2. ``interpreter_inversion`` interpreter fitted on the 16 images paired with their inverted latents,
                             applied to each test image through inversion;
3. ``unet_synthetic_N``      U-Net trained on N synthetic images labeled by that interpreter;
4. ``unet_5000_real``        U-Net on 5,000 labeled real images (the ceiling, one run);
5. ``*_shifted``             methods 2 and 3 (and the ceiling) evaluated on the shifted domain variant.

Diagnostics (what limits method 3), per draw:
- ``interpreter_generated_16``: DatasetGAN's own protocol — the 16 labeled images are *generated*, so
  their latents are exact; the ceiling U-Net stands in for the annotators. Against method 2 it shows
  what the inversion pairing costs.
- ``synthetic_label_agreement``: mIoU of method 2's interpreter labels on the synthetic pool against
  the ceiling U-Net's labels of the same images — how good the labels method 3 trains on are.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .domain import CLASSES, render_batch
from .generator.stylegan2 import Generator
from .images import to_uint8
from .interpreter import InterpreterConfig
from .inversion import LatentEncoder, images_to_tensor, invert
from .labeling import fit_from_latents, label_latents
from .metrics import mean_iou
from .segmenter import predict, train_segmenter
from .synthesis import generate_chunk, keep_most_certain, latents_for_seeds


@dataclass
class QualitySettings:
    n_labeled: int = 16
    draws: int = 3
    n_test: int = 500
    synthetic_sizes: tuple[int, ...] = (1000, 5000)
    n_ceiling: int = 5000
    unet_steps: int = 1500
    inversion_steps: int = 30
    filter_frac: float = 0.1
    members: int = 10
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> "QualitySettings":
        return cls(draws=1, n_test=100, synthetic_sizes=(200,), n_ceiling=500, unet_steps=300, members=5)


def _invert_all(G: Generator, enc: LatentEncoder | None, images: np.ndarray, steps: int, batch: int = 50) -> torch.Tensor:
    parts = [invert(G, images_to_tensor(images[i:i + batch]), encoder=enc, steps=steps).ws
             for i in range(0, len(images), batch)]
    return torch.cat(parts)


def _summ(values: list[float]) -> dict:
    return {"miou_mean": round(float(np.mean(values)), 2), "miou_std": round(float(np.std(values)), 2),
            "runs": [round(v, 2) for v in values]}


def run_quality(G: Generator, enc: LatentEncoder | None, s: QualitySettings, log=print,
                on_partial=None) -> dict:
    """Run the whole table; returns {"settings", "methods": {name: {miou_mean, miou_std, runs}}, "seconds"}.

    ``on_partial(report)``, if given, receives the table so far after every draw (an hour-long run
    leaves its finished draws behind when it is stopped)."""
    t0 = time.time()
    res, n_cls, classes = G.cfg.resolution, len(CLASSES), list(CLASSES)
    test_img, test_lab = render_batch(s.n_test, seed=1000 + s.seed, size=res)
    sh_img, sh_lab = render_batch(s.n_test, seed=1000 + s.seed, size=res, variant="shifted")
    log(f"inverting {2 * s.n_test} test images ...")
    test_ws = _invert_all(G, enc, test_img, s.inversion_steps)
    sh_ws = _invert_all(G, enc, sh_img, s.inversion_steps)
    scores: dict[str, list[float]] = {}
    diagnostics: dict[str, list[float]] = {}

    def report(done: bool) -> dict:
        return {"settings": dict(s.__dict__), "methods": {k: _summ(v) for k, v in scores.items()},
                "diagnostics": {k: _summ(v) for k, v in diagnostics.items()},
                "seconds": round(time.time() - t0, 1), "complete": done}

    def add(name: str, value: float, table: dict | None = None) -> None:
        (scores if table is None else table).setdefault(name, []).append(100 * value)
        log(f"  {name}: {100 * value:.2f}")

    # The ceiling first: it also stands in for the annotators of generated images (diagnostics).
    log("ceiling")
    ceil_img, ceil_lab = render_batch(s.n_ceiling, seed=3000 + s.seed, size=res)
    ceiling = train_segmenter(ceil_img, ceil_lab, n_cls, steps=s.unet_steps).model
    add(f"unet_{s.n_ceiling}_real", mean_iou(predict(ceiling, test_img), test_lab, n_cls))
    add(f"unet_{s.n_ceiling}_real_shifted", mean_iou(predict(ceiling, sh_img), sh_lab, n_cls))
    cfg = InterpreterConfig(in_dim=0, n_classes=n_cls, members=s.members)
    if on_partial is not None:
        on_partial(report(False))

    for draw in range(s.draws):
        log(f"draw {draw + 1}/{s.draws}")
        lab_img, lab_lab = render_batch(s.n_labeled, seed=2000 + s.seed, size=res, start=draw * s.n_labeled)
        few = train_segmenter(lab_img, lab_lab, n_cls, steps=s.unet_steps, seed=draw).model
        add(f"unet_{s.n_labeled}_real", mean_iou(predict(few, test_img), test_lab, n_cls))
        ws = _invert_all(G, enc, lab_img, s.inversion_steps)
        interp = fit_from_latents(G, ws, lab_lab, classes, cfg, seed=draw)
        add("interpreter_inversion", mean_iou(label_latents(G, interp, test_ws)[1].labels, test_lab, n_cls))
        add("interpreter_inversion_shifted", mean_iou(label_latents(G, interp, sh_ws)[1].labels, sh_lab, n_cls))
        gen_ws = latents_for_seeds(G, list(range(draw * 10**6 + 900_000, draw * 10**6 + 900_000 + s.n_labeled)))
        gen_img = label_latents(G, interp, gen_ws)[0]
        gen_interp = fit_from_latents(G, gen_ws, predict(ceiling, to_uint8(gen_img)), classes, cfg, seed=draw)
        add(f"interpreter_generated_{s.n_labeled}", mean_iou(label_latents(G, gen_interp, test_ws)[1].labels, test_lab, n_cls),
            diagnostics)
        add(f"interpreter_generated_{s.n_labeled}_shifted",
            mean_iou(label_latents(G, gen_interp, sh_ws)[1].labels, sh_lab, n_cls), diagnostics)
        # Seeds draw·10⁶ + i: every size's seed range is a prefix of the largest one, so synthesize once.
        n_seeds = {n: int(n / (1 - s.filter_frac) + 0.5) for n in s.synthetic_sizes}
        pool = generate_chunk(G, interp, list(range(draw * 10**6, draw * 10**6 + max(n_seeds.values()))))
        add("synthetic_label_agreement", mean_iou(np.stack([x.labels for x in pool]),
                                                  predict(ceiling, np.stack([x.image for x in pool])), n_cls), diagnostics)
        for n_syn in s.synthetic_sizes:
            samples = keep_most_certain(pool[:n_seeds[n_syn]], s.filter_frac)[:n_syn]
            syn_img = np.stack([x.image for x in samples])
            syn_lab = np.stack([x.labels for x in samples])
            model = train_segmenter(syn_img, syn_lab, n_cls, steps=s.unet_steps, seed=draw).model
            add(f"unet_synthetic_{n_syn}", mean_iou(predict(model, test_img), test_lab, n_cls))
            add(f"unet_synthetic_{n_syn}_shifted", mean_iou(predict(model, sh_img), sh_lab, n_cls))
        if on_partial is not None:
            on_partial(report(False))
    return report(True)


def to_markdown(report: dict) -> str:
    rows = ["| method | mIoU % (mean ± std) | runs |", "|---|---|---|"]
    for name, m in [*report["methods"].items(), *report.get("diagnostics", {}).items()]:
        kind = "" if name in report["methods"] else " (diagnostic)"
        rows.append(f"| {name}{kind} | {m['miou_mean']:.2f} ± {m['miou_std']:.2f} | {len(m['runs'])} |")
    return "\n".join(rows) + "\n"


def write(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "quality.md").write_text(to_markdown(report))
    return out / "quality.json", out / "quality.md"
