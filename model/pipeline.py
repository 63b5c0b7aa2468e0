"""The DatasetGAN pipeline as one object: a generator and what is fitted to it.

:class:`Pipeline` holds a StyleGAN2 generator, its inversion encoder and feature extractor, and exposes
the verbs the product uses — every caller (the Label Studio backend, push, the quality table, the CLI,
the scripts) goes through it instead of wiring the pieces by hand:

- ``invert``            real images → W+ latents (encoder start + optimisation);
- ``seed_latents``      synthesis seeds → exact W+ latents;
- ``fit``               (latents, masks) → an :class:`~model.interpreter.Interpreter` (dimensions derived);
- ``fit_label_branch``  (latents, masks) → SemanticGAN's convolutional label branch;
- ``label``             latents → images + labels and uncertainty (interpreter or label branch);
- ``cross_validate``    k-fold mIoU and per-class IoU of the interpreter on the labeled images;
- ``train_segmenter``   labeled real images (+ a synthesized pool labeled by a teacher) → a
                        :class:`~model.segmenter.Segmenter` that pre-annotates images directly;
- ``synthesize``        seeds → labeled samples (by the interpreter, or by a segmenter when given);
- ``certainty``         an image uncertainty score → the [0, 1] certainty shown to reviewers;
- ``foreground``        latents → Labels4Free's zero-label foreground opacity α (an alpha-net on the
                        generator's features; ``train_fgbg`` trains one, :mod:`model.fgbg`).

Images cross this interface as uint8 [N, H, W, 3]; label maps as uint8 [N, H, W] with class ids in
[0, C); latents as float32 [N, num_ws, w_dim] CPU tensors. The models run on the pipeline's ``device``
(``DGAN_DEVICE`` unless given; :func:`model.device.resolve_device`): the generator and encoder are moved
there at construction, and interpreters, label branches and segmenters when they are used or trained;
whatever leaves the pipeline is numpy or on the CPU, whatever device it ran on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .device import resolve_device
from .features import FeatureExtractor
from .generator.checkpoints import generator_id
from .generator.stylegan2 import Generator
from .images import to_uint8
from .interpreter import Interpreter, InterpreterConfig, Prediction
from .inversion import LatentEncoder, images_to_tensor, invert
from .label_branch import LabelBranch, LabelBranchConfig, fit_label_branch
from .labeling import fit_from_latents, label_latents
from .metrics import confusion, iou_from_confusion, per_class_percent
from .drift import measure_drift
from .fgbg import FgBg, FgBgConfig, train_fgbg
from .refiner import Refiner, RefinerConfig, train_refiner
from .segmenter import IGNORE, Segmenter, predict_probs, pseudo_labels, train_segmenter
from .synthesis import Sample, generate_chunk, latents_for_seeds


@dataclass
class SegmenterRecipe:
    """How a project's pre-annotating U-Net is trained (``Pipeline.train_segmenter``).

    A teacher U-Net is trained on the labeled real images alone; it labels ``pool`` generator samples
    (pixels below ``min_confidence`` are ignored); the served student is trained on the real images
    and the pseudo-labeled samples, ``real_fraction`` of every batch real, the samples CutMixed in pairs
    (``cutmix``). Figures behind the defaults: docs/results.md ("Segmenter recipe")."""

    teacher_steps: int = 800
    student_steps: int = 1200
    pool: int = 2000
    min_confidence: float = 0.7
    real_fraction: float = 0.5
    cutmix: bool = True
    batch: int = 16
    base: int = 16
    lr: float = 2e-3
    psi: float = 1.0
    seed_offset: int = 50_000_000     # pool seeds start here (far from pushed seeds)
    # Domain drift (SimGAN): "auto" trains a refiner on the project's unlabeled images when their drift
    # from the generator's samples is large (model.drift), "always" whenever unlabeled images are given,
    # "never" not at all. The student then learns from the pool and its refined copy, labels unchanged.
    refine: str = "auto"
    refiner_steps: int = 1200
    refiner_self_reg: float = 10.0
    refiner_part_colours: bool = True   # the refiner maps each part's colour, the parts read by the teacher
    # With a refiner the student's synthetic half holds the pool and its refined copy: this many times the
    # steps keeps each default-look sample's share of training (the default domain then loses nothing).
    refined_student_steps: float = 2.0
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> "SegmenterRecipe":
        """A seconds-long recipe for tests and smoke runs (quality far below the default's)."""
        return cls(teacher_steps=20, student_steps=20, pool=32, batch=4, base=4, lr=1e-2, refiner_steps=20)

    def __post_init__(self) -> None:
        if self.refine not in ("auto", "always", "never"):
            raise ValueError(f"refine must be 'auto', 'always' or 'never', got {self.refine!r}")
        if not self.refined_student_steps > 0:
            raise ValueError(f"refined_student_steps must be above 0 (a multiple of student_steps), "
                             f"got {self.refined_student_steps!r}")


@dataclass
class CrossValidation:
    miou: float                      # mean IoU (%) over the classes present
    per_class: dict[str, float]      # IoU (%) per class name (NaN-free: absent classes are left out)
    folds: int

    def to_dict(self) -> dict:
        return {"miou": self.miou, "per_class": self.per_class, "folds": self.folds}


def per_class_iou(cm: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Confusion matrix [C, C] → {class name: IoU %} for the classes present in it."""
    return per_class_percent(iou_from_confusion(cm), class_names, digits=2)


LABEL_SOURCES = ("interpreter", "label-branch")


def fit_label_source(pipe: "Pipeline", source: str, ws: torch.Tensor, masks: np.ndarray, class_names: list[str],
                     images: np.ndarray | None = None, seed: int = 0) -> Interpreter | LabelBranch:
    """Fit the named label source ("interpreter" or "label-branch") with its default settings."""
    if source == "interpreter":
        return pipe.fit(ws, masks, class_names, seed=seed)
    if source == "label-branch":
        return pipe.fit_label_branch(ws, masks, class_names, images, seed=seed)
    raise ValueError(f"label source must be one of {', '.join(LABEL_SOURCES)}, got {source!r}")


def load_label_source(path: str | Path, generator_id: str | None = None) -> Interpreter | LabelBranch:
    """An interpreter or a label branch checkpoint, whichever ``path`` holds (same identity check)."""
    try:
        kind = torch.load(path, map_location="cpu", weights_only=True).get("format")
    except Exception:  # noqa: BLE001 - the checked load below says what is wrong with the file
        kind = None
    if kind == "dgan-label-branch":
        return LabelBranch.load(path, generator_id=generator_id)
    return Interpreter.load(path, generator_id=generator_id)


def certainty(score: float, n_classes: int) -> float:
    """Image uncertainty score (nats; 0 … log C) → certainty in [0, 1] (1 = sure), as shown to reviewers."""
    return float(np.clip(1.0 - score / math.log(max(n_classes, 2)), 0.0, 1.0))


class Pipeline:
    """A generator and what is fitted to it; see the module docstring for the verbs."""

    def __init__(self, G: Generator, encoder: LatentEncoder | None = None, inversion_steps: int = 30,
                 device: str | torch.device | None = None) -> None:
        """``device``: where the models run (``cpu``, ``cuda``, ``cuda:N``, ``auto``; default ``DGAN_DEVICE``,
        else the CPU). ``G`` and ``encoder`` are moved there."""
        self.device = resolve_device(device)
        self.G = G.to(self.device).eval().requires_grad_(False)
        self.encoder = encoder.to(self.device) if encoder is not None else None
        self.inversion_steps = inversion_steps
        self._invert_seconds: float | None = None

    @classmethod
    def load(cls, generator: str | None = None, encoder: str | None = None, inversion_steps: int = 30,
             device: str | torch.device | None = None) -> "Pipeline":
        """The shipped default generator and encoder, or the given checkpoints (an encoder is looked for
        beside the generator when none is given), on ``device`` (default ``DGAN_DEVICE``, else the CPU)."""
        from .generator.default import load_default_or, load_encoder_for

        device = resolve_device(device)          # a wrong device fails before any checkpoint is read
        G = load_default_or(generator)
        return cls(G, load_encoder_for(G, encoder), inversion_steps, device)

    @property
    def resolution(self) -> int:
        return self.G.cfg.resolution

    @cached_property
    def generator_id(self) -> str:
        return generator_id(self.G)

    @cached_property
    def features(self) -> FeatureExtractor:
        return FeatureExtractor(self.G)

    # -- images at the generator's resolution -----------------------------------------------------
    def to_resolution(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] (or one [H, W, 3]) → the same at the generator's R×R (bilinear)."""
        return _resize(images, self.resolution, Image.BILINEAR)

    def masks_to_resolution(self, masks: np.ndarray) -> np.ndarray:
        """uint8 label maps [N, H, W] (or one [H, W]) → R×R (nearest: class ids stay class ids)."""
        return _resize(masks, self.resolution, Image.NEAREST)

    @staticmethod
    def masks_to_size(masks: np.ndarray, height: int, width: int) -> np.ndarray:
        """uint8 label map [H', W'] → [height, width] (nearest)."""
        if masks.shape[:2] == (height, width):
            return masks
        return np.asarray(Image.fromarray(masks).resize((width, height), Image.NEAREST))

    # -- latents ------------------------------------------------------------------------------------
    def invert(self, images: np.ndarray, steps: int | None = None, batch: int = 50,
               refiner: Refiner | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """uint8 images [N, H, W, 3] (any size; resized to R) → (W+ float32 [N, num_ws, w_dim],
        reconstruction PSNR float32 [N] in dB). ``refiner``: one trained on these images' domain (drifted
        from the generator's): the latents are found through it (out-of-domain inversion; see
        :func:`model.inversion.invert`)."""
        steps = self.inversion_steps if steps is None else steps
        x = self.to_resolution(np.asarray(images))
        look = None
        if refiner is not None:
            refiner.to(self.device).net.eval().requires_grad_(False)
            look = refiner.net
        ws, psnr = [], []
        for i in range(0, len(x), batch):
            res = invert(self.G, images_to_tensor(x[i:i + batch]).to(self.device), encoder=self.encoder, steps=steps,
                         appearance=look)
            ws.append(res.ws.cpu())
            psnr.append(np.asarray(res.psnr_db, np.float32))
        return torch.cat(ws), np.concatenate(psnr)

    def invert_seconds_per_image(self, remeasure: bool = False) -> float:
        """Wall-clock seconds one image's inversion takes at ``inversion_steps`` on this device: measured
        (a 1-step and a 2-step inversion of one generator sample give the fixed cost and the cost per
        step) once and cached, or again with ``remeasure``. Lets a caller with a deadline decide how many
        new images it can invert."""
        if self._invert_seconds is None or remeasure:
            x = self.sample_images([0])
            self.invert(x, steps=1)     # untimed: a process's first inversion pays one-off warm-up costs
            t = time.perf_counter()
            self.invert(x, steps=1)
            one = time.perf_counter() - t
            t = time.perf_counter()
            self.invert(x, steps=2)
            two = time.perf_counter() - t
            per_step = two - one if two > one else one / 2     # timer noise: a step costs at most all of one
            self._invert_seconds = max(one - per_step, 0.0) + per_step * self.inversion_steps
        return self._invert_seconds

    def seed_latents(self, seeds: list[int], psi: float = 1.0) -> torch.Tensor:
        """W+ latents float32 [len(seeds), num_ws, w_dim] (CPU); seed s always gives the same latent."""
        return latents_for_seeds(self.G, seeds, psi).cpu()

    @torch.no_grad()
    def sample_images(self, seeds: list[int], psi: float = 1.0, batch: int = 64) -> np.ndarray:
        """Generator samples of the seeds: uint8 [len(seeds), R, R, 3]."""
        out = [to_uint8(self.G.synthesis(latents_for_seeds(self.G, seeds[i:i + batch], psi), noise_mode="const"))
               for i in range(0, len(seeds), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.resolution, self.resolution, 3), np.uint8)

    # -- the interpreter ------------------------------------------------------------------------------
    def fit(self, ws: torch.Tensor, masks: np.ndarray, class_names: list[str], members: int = 10,
            epochs: float | None = None, seed: int = 0) -> Interpreter:
        """Fit DatasetGAN's interpreter on latents [N, num_ws, w_dim] and masks uint8 [N, R, R]."""
        cfg = InterpreterConfig(in_dim=self.features.dim, n_classes=len(class_names), members=members)
        if epochs is not None:
            cfg = replace(cfg, epochs=epochs)
        return fit_from_latents(self.G, ws, masks, class_names, cfg, seed=seed)

    def fit_label_branch(self, ws: torch.Tensor, masks: np.ndarray, class_names: list[str],
                         images: np.ndarray | None = None, cfg: LabelBranchConfig | None = None,
                         seed: int = 0) -> LabelBranch:
        """Fit SemanticGAN's label branch on latents [N, num_ws, w_dim] and masks uint8 [N, R, R];
        ``images`` (uint8 [N, R, R, 3], the labeled images) are the discriminator's real pairs."""
        real = images_to_tensor(self.to_resolution(images)).to(self.device) if images is not None else None
        return fit_label_branch(self.G, ws, torch.as_tensor(np.asarray(masks)).long(), class_names, cfg, real, seed)

    def label(self, interp: Interpreter | LabelBranch, ws: torch.Tensor) -> tuple[np.ndarray, Prediction]:
        """Latents [N, num_ws, w_dim] → (images uint8 [N, R, R, 3], :class:`Prediction` of the label source:
        the interpreter or the label branch)."""
        images, pred = label_latents(self.G, interp, ws)
        return to_uint8(images), pred

    def cross_validate(self, ws: torch.Tensor, masks: np.ndarray, class_names: list[str], folds: int = 4,
                       source: str = "interpreter", images: np.ndarray | None = None,
                       branch_steps: int = 300) -> CrossValidation:
        """k-fold IoU of a lighter label source (interpreter: 3 members, half the training; label branch:
        half the steps) on the labeled images themselves: a quick, slightly pessimistic estimate of the
        fitted source's quality. ``images`` (uint8 [N, R, R, 3]) feed the label branch's discriminator."""
        if source not in LABEL_SOURCES:
            raise ValueError(f"label source must be one of {', '.join(LABEL_SOURCES)}, got {source!r}")
        n, n_cls = len(ws), len(class_names)
        folds = min(folds, n)
        cm = np.zeros((n_cls, n_cls), np.int64)
        order = np.arange(n)
        for k in range(folds):
            test = order[k::folds]
            train = np.setdiff1d(order, test)
            if source == "interpreter":
                model = self.fit(ws[train], masks[train], class_names, members=3, epochs=6, seed=k)
            else:
                model = self.fit_label_branch(ws[train], masks[train], class_names,
                                              None if images is None else images[train],
                                              LabelBranchConfig(n_classes=n_cls, steps=branch_steps), seed=k)
            cm += confusion(self.label(model, ws[test])[1].labels, masks[test], n_cls)
        per_class = per_class_iou(cm, class_names)
        return CrossValidation(round(float(np.mean(list(per_class.values()))), 2), per_class, folds)

    # -- the segmenter that pre-annotates -----------------------------------------------------------
    def train_segmenter(self, images: np.ndarray, masks: np.ndarray, class_names: list[str],
                        recipe: SegmenterRecipe | None = None, seed: int = 0, teacher: Segmenter | None = None,
                        log: Callable[[str], None] = lambda _m: None,
                        should_stop: Callable[[], bool] | None = None, unlabeled: np.ndarray | None = None,
                        refiner: Refiner | None = None, refiner_state: str | Path | None = None) -> Segmenter:
        """Labeled real images uint8 [N, R, R, 3] and masks uint8 [N, R, R] → a :class:`Segmenter`.

        Teacher on the real images → pseudo-labels for ``recipe.pool`` generator samples → student on
        both (see :class:`SegmenterRecipe`). ``teacher``: one already trained on these images with this
        recipe (skips that step). ``meta`` records timings and how much of the pool was used.
        ``should_stop`` is asked every few steps; True ends training with
        :class:`~model.segmenter.TrainingStopped`.

        Domain drift: ``unlabeled`` (uint8 [M, R, R, 3], the project's task images) is measured against
        the pool in the teacher's features (``meta["drift"]``, :mod:`model.drift`); when it has drifted
        (``recipe.refine``), a SimGAN refiner is trained on the pool towards those images (resumable through
        ``refiner_state``) unless ``refiner`` is given, and the student learns from the pool and its refined
        copy with the same pseudo-labels. The refiner is returned as the segmenter's ``refiner``."""
        r = recipe or SegmenterRecipe()
        n_cls = len(class_names)
        t0 = time.time()
        meta: dict = {"n_real": int(len(images)), "recipe": dict(r.__dict__)}
        if teacher is None:
            trained = train_segmenter(images, masks, n_cls, steps=r.teacher_steps, batch=r.batch, base=r.base, lr=r.lr,
                                      seed=seed, should_stop=should_stop, device=self.device)
            teacher = Segmenter(trained.model, class_names, self.generator_id)
            meta["teacher_seconds"] = round(trained.seconds, 1)
            log(f"teacher trained in {trained.seconds:.0f} s")
        teacher.to(self.device)
        model = teacher.model
        if r.pool > 0:
            seeds = list(range(r.seed_offset + seed * r.pool, r.seed_offset + (seed + 1) * r.pool))
            pool = self.sample_images(seeds, r.psi)
            # Labelled in slices: the teacher's probabilities of the whole pool at once are [pool, C, R, R]
            # float32 (5.2 GB for 2,000 samples at 256 px), with about 3.4x that at the peak.
            labels = np.concatenate([pseudo_labels(predict_probs(teacher.model, pool[i:i + 256]), r.min_confidence)
                                     for i in range(0, len(pool), 256)])
            meta["pool_ignored_frac"] = round(float((labels == IGNORE).mean()), 4)
            refiner = self._adapt(teacher, pool, unlabeled, r, seed, refiner, refiner_state, meta, log, should_stop)
            extra_images, extra_labels = pool, labels
            if refiner is not None:
                extra_images = np.concatenate([pool, refiner.refine(pool)])
                extra_labels = np.concatenate([labels, labels])
            steps = r.student_steps if refiner is None else round(r.student_steps * r.refined_student_steps)
            student = train_segmenter(images, masks, n_cls, steps=steps, batch=r.batch, base=r.base, lr=r.lr,
                                      seed=seed, extra_images=extra_images, extra_labels=extra_labels,
                                      real_fraction=r.real_fraction, extra_cutmix=r.cutmix, should_stop=should_stop,
                                      device=self.device)
            log(f"student trained in {student.seconds:.0f} s ({steps} steps) on {len(images)} real + "
                f"{len(extra_images)} synthetic")
            meta["student_seconds"], meta["student_steps"] = round(student.seconds, 1), steps
            model = student.model
        else:
            refiner = None
        meta["seconds"] = round(time.time() - t0, 1)
        seg = Segmenter(model, class_names, self.generator_id, meta)
        seg.refiner = refiner
        return seg

    def _adapt(self, teacher: Segmenter, pool: np.ndarray, unlabeled: np.ndarray | None, r: SegmenterRecipe,
               seed: int, refiner: Refiner | None, refiner_state, meta: dict, log, should_stop) -> Refiner | None:
        """Drift of ``unlabeled`` from ``pool`` into ``meta``; the refiner to use (given, trained, or None)."""
        if unlabeled is None or len(unlabeled) < 8 or len(pool) < 16 or r.refine == "never":
            if refiner is not None:
                meta["refiner"] = dict(refiner.meta)
            return refiner           # too few images to measure drift (or not asked to): as given
        drift = measure_drift(teacher.model, unlabeled, pool)
        meta["drift"] = drift.to_dict()
        log(f"drift of the project's images: {drift.ratio}x the floor ({'drifted' if drift.drifted else 'no drift'})")
        if refiner is None and (drift.drifted or r.refine == "always"):
            cfg = RefinerConfig(steps=r.refiner_steps, self_reg=r.refiner_self_reg, part_colours=r.refiner_part_colours)
            refiner = train_refiner(pool, unlabeled, cfg, seed=seed, parts=teacher.model if cfg.part_colours else None,
                                    generator_id=self.generator_id, state_path=refiner_state,
                                    should_stop=should_stop, log=log, device=self.device)
            log(f"refiner trained in {refiner.meta['seconds']:.0f} s on {len(unlabeled)} project images")
        if refiner is not None:
            meta["refiner"] = dict(refiner.meta)
        return refiner

    # -- synthesis -------------------------------------------------------------------------------------
    @torch.no_grad()
    def synthesize(self, seeds: list[int], interp: Interpreter | None = None, psi: float = 1.0,
                   segmenter: Segmenter | None = None, batch: int = 32) -> list[Sample]:
        """Image, labels and uncertainty for every seed (nothing filtered). Labels come from the segmenter
        when given (it labels generated images better than the interpreter and costs a fraction of its
        FLOPs; docs/results.md), else from the interpreter."""
        if segmenter is None:
            if interp is None:
                raise ValueError("synthesize needs an interpreter or a segmenter to label the samples")
            return generate_chunk(self.G, interp, seeds, psi, fx=self.features)
        segmenter.to(self.device)
        out: list[Sample] = []
        for i in range(0, len(seeds), batch):
            part = seeds[i:i + batch]
            ws = latents_for_seeds(self.G, part, psi)
            images = to_uint8(self.G.synthesis(ws, noise_mode="const"))
            pred = segmenter.label(images)
            ws_np = ws.cpu().numpy()
            out += [Sample(int(s), ws_np[j], images[j], pred.labels[j], float(pred.score[j]))
                    for j, s in enumerate(part)]
        return out

    # -- zero-label foreground (Labels4Free) ---------------------------------------------------------
    def foreground(self, fgbg: FgBg, ws: torch.Tensor) -> np.ndarray:
        """Latents [N, num_ws, w_dim] → foreground opacity α float32 [N, R, R] in [0, 1] (numpy); the mask
        is ``fgbg.mask(α)`` (α above the alpha-net's threshold)."""
        return fgbg.to(self.device).alpha(self.G, ws)

    def foreground_labels(self, fgbg: FgBg, ws: torch.Tensor, class_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Latents [N, num_ws, w_dim] → (label maps uint8 [N, R, R]: ``class_id`` where α is above the alpha-net's
        threshold, 0 elsewhere; certainty float64 [N] in [0, 1], 1 − the mean binary entropy of the top 10 %
        pixels of α)."""
        if not 0 < class_id < 256:
            raise ValueError(f"class_id must be in 1..255 (0 is the background), got {class_id}")
        alpha = self.foreground(fgbg, ws)
        return fgbg.mask(alpha).astype(np.uint8) * np.uint8(class_id), 1.0 - fgbg.uncertainty(alpha)

    def train_fgbg(self, cfg: FgBgConfig | None = None, real: np.ndarray | None = None, seed: int = 0,
                   state_path: str | Path | None = None, log: Callable[[str], None] = lambda _m: None) -> FgBg:
        """Train Labels4Free's alpha-net for this (frozen) generator (:func:`model.fgbg.train_fgbg`); with
        ``cfg.d_init == "pretrained"`` its discriminator starts from the one trained with the generator."""
        cfg = cfg or FgBgConfig()
        D_init = None
        if cfg.d_init == "pretrained":
            from .generator.default import load_discriminator_for

            D_init = load_discriminator_for(self.G)
            if D_init is None:
                raise ValueError("d_init='pretrained' needs the discriminator trained with this generator (the "
                                 "discriminator.pt `dgan train-gan` writes beside it); none was found: use "
                                 "d_init='random'")
            D_init.to(self.device)
        real = self.to_resolution(real) if real is not None else None
        return train_fgbg(self.G, cfg, real, seed, state_path, D_init, log)

    certainty = staticmethod(certainty)


def _resize(arr: np.ndarray, size: int, resample: int) -> np.ndarray:
    one = arr.ndim == (2 if resample == Image.NEAREST else 3)
    batch = arr[None] if one else arr
    if batch.shape[1:3] == (size, size):
        return arr
    out = np.stack([np.asarray(Image.fromarray(a).resize((size, size), resample)) for a in batch])
    return out[0] if one else out
