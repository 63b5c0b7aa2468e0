"""A compact U-Net for semantic segmentation, trained on labeled images (real or synthetic).

Used as the downstream segmenter of DatasetGAN (trained on real and synthesized labeled images, it
serves a project's pre-annotations once ready), as every U-Net baseline of the quality table (one
recipe for all), and as the feature extractor of the GAN quality figure (Fréchet distance of its
features, since no Inception weights exist offline).

Device: training runs on ``train_segmenter(device=...)`` (default ``DGAN_DEVICE``), with batches drawn
and augmented on the CPU as before and moved there; prediction runs on the model's device; results are
numpy and checkpoints hold CPU tensors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .device import module_device, resolve_device
from .interpreter import Prediction


@dataclass
class UNetConfig:
    n_classes: int
    base: int = 16          # channels at full resolution; doubled per level
    depth: int = 4          # number of downsamplings
    in_channels: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """images float32 [N, 3, H, W] in [-1, 1] (H, W divisible by 2**depth) → logits [N, n_classes, H, W]."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths = [cfg.base * 2 ** i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList([_block(cfg.in_channels, widths[0])] +
                                  [_block(widths[i], widths[i + 1]) for i in range(cfg.depth)])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(cfg.depth))
        self.dec = nn.ModuleList(_block(2 * widths[i], widths[i]) for i in range(cfg.depth))
        self.head = nn.Conv2d(widths[0], cfg.n_classes, 1)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        bottleneck = x
        for i in reversed(range(self.cfg.depth)):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return x, bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._forward(x)[0])

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image feature vector [N, base + base·2**depth]: the spatial means of the penultimate
        (full-resolution) features and of the bottleneck."""
        pen, bott = self._forward(x)
        return torch.cat([pen.mean(dim=[2, 3]), bott.mean(dim=[2, 3])], dim=1)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] → float32 [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@dataclass
class SegTrainResult:
    model: UNet
    seconds: float
    steps: int
    final_loss: float


IGNORE = 255   # label value of pixels that carry no training signal (e.g. doubtful pseudo-labels)
STOP_CHECK_EVERY = 25   # steps between two calls of train_segmenter's should_stop


class TrainingStopped(Exception):
    """``should_stop`` asked a training to end early (e.g. a newer fit is waiting); nothing was produced."""


def class_weights(labels: torch.Tensor, n_classes: int, mode: str = "sqrt") -> torch.Tensor | None:
    """Per-class loss weights float32 [C] from label maps (``IGNORE`` pixels skipped).

    ``"sqrt"``: 1/√frequency, normalised so the pixel-averaged weight is 1 — small parts (a nose is 0.14 %
    of pixels) are learned without swamping the large ones; ``"none"``: plain cross-entropy (None)."""
    if mode == "none":
        return None
    if mode != "sqrt":
        raise ValueError(f"class weighting must be 'sqrt' or 'none', got {mode!r}")
    valid = labels[labels != IGNORE].long()
    freq = torch.bincount(valid, minlength=n_classes)[:n_classes].double()
    freq = freq / freq.sum().clamp_min(1)
    w = torch.where(freq > 0, freq.clamp_min(1e-6).rsqrt(), torch.zeros_like(freq))
    w = w / (w * freq).sum().clamp_min(1e-12)
    # A class absent from the training labels gets the largest weight seen (it may appear in pseudo-labels).
    return torch.where(freq > 0, w, w.max()).float()


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, shift_px: int = 4,
            jitter: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-preserving augmentation of a batch: random horizontal flip, a shift of up to ``shift_px``
    pixels (edge-replicated), per-image brightness / contrast / saturation jitter of strength ``jitter``.

    x float32 [B, 3, H, W] in [-1, 1]; y int64 [B, H, W] → the same shapes."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    y = torch.where(flip[:, None, None], y.flip(2), y)
    if shift_px > 0:
        p = shift_px
        xp = F.pad(x, (p, p, p, p), mode="replicate")
        yp = F.pad(y[:, None].float(), (p, p, p, p), mode="replicate")[:, 0].long()
        dy, dx = torch.randint(0, 2 * p + 1, (2, b), generator=g).tolist()
        x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
        y = torch.stack([yp[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if jitter > 0:
        r = (torch.rand(3, b, 1, 1, 1, generator=g) * 2 - 1) * jitter
        gray = x.mean(1, keepdim=True)
        x = gray + (x - gray) * (1 + r[2])                              # saturation
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (mean + (x - mean) * (1 + r[1]) + r[0]).clamp(-1, 1)        # contrast, brightness
    return x, y


def cutmix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix for segmentation: every image gets a random box (30–70 % of each side) pasted from another
    image of the batch, with its labels. x float32 [B, 3, H, W]; y int64 [B, H, W] → the same shapes."""
    b, _, h, w = x.shape
    if b < 2:
        return x, y
    perm = torch.randperm(b, generator=g)
    frac = torch.rand(2, b, generator=g) * 0.4 + 0.3
    bh, bw = (frac[0] * h).long(), (frac[1] * w).long()
    y0 = (torch.rand(b, generator=g) * (h - bh + 1)).long()
    x0 = (torch.rand(b, generator=g) * (w - bw + 1)).long()
    rows, cols = torch.arange(h), torch.arange(w)
    box = (((rows[None] >= y0[:, None]) & (rows[None] < (y0 + bh)[:, None]))[:, :, None]
           & ((cols[None] >= x0[:, None]) & (cols[None] < (x0 + bw)[:, None]))[:, None, :])     # [B, H, W]
    return torch.where(box[:, None], x[perm], x), torch.where(box, y[perm], y)


def train_segmenter(images: np.ndarray, labels: np.ndarray, n_classes: int, steps: int = 1500, batch: int = 16,
                    lr: float = 2e-3, base: int = 16, seed: int = 0, progress: bool = False,
                    desc: str = "unet", class_weighting: str = "sqrt", shift_px: int = 4, jitter: float = 0.2,
                    extra_images: np.ndarray | None = None, extra_labels: np.ndarray | None = None,
                    real_fraction: float = 0.5, init: UNet | None = None,
                    extra_cutmix: bool = False, should_stop: Callable[[], bool] | None = None,
                    device: str | torch.device | None = None) -> SegTrainResult:
    """Train a U-Net with class-weighted cross-entropy, AdamW, a one-cycle schedule and augmentation
    (:func:`augment`). The same recipe trains every U-Net of the product and of its baselines.

    images: uint8 [N, H, W, 3]; labels: uint8 [N, H, W] in [0, n_classes) or ``IGNORE``.
    extra_images / extra_labels (optional, e.g. synthetic images with pseudo-labels): a second set;
    each batch then draws ``real_fraction`` of its images from the first set and the rest from it.
    init: start from this model's weights (same architecture) instead of a random initialisation.
    extra_cutmix: mix the second set's images in pairs (:func:`cutmix`), a strong augmentation that
    keeps a student from merely copying its teacher's pseudo-labels.
    should_stop: asked every ``STOP_CHECK_EVERY`` steps; when it answers True, :class:`TrainingStopped`
    is raised (a job makes way for a fit instead of delaying it by minutes).
    device: where to train (default ``DGAN_DEVICE``, else the CPU); the returned model stays there."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need the same non-zero number of images and labels, got {len(images)} and {len(labels)}")
    for name, lab in (("labels", labels), ("extra_labels", extra_labels)):
        if lab is not None and len(lab) and int(lab[lab != IGNORE].max(initial=0)) >= n_classes:
            raise ValueError(f"{name} hold value {int(lab[lab != IGNORE].max())}, outside the {n_classes} classes")
    if (extra_images is None) != (extra_labels is None) or (extra_images is not None and len(extra_images) != len(extra_labels)):
        raise ValueError("extra_images and extra_labels go together, with one label map per image")
    if not 0 < real_fraction <= 1:
        raise ValueError(f"real_fraction must be in (0, 1], got {real_fraction}")
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UNet(UNetConfig(n_classes=n_classes, base=base) if init is None else init.cfg)
    if init is not None:
        model.load_state_dict(init.state_dict())
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1 if steps >= 20 else 0.5)
    x_all, y_all = to_input(images), torch.from_numpy(labels.astype(np.int64))
    has_extra = extra_images is not None and len(extra_images) > 0
    if has_extra:
        x_ex, y_ex = to_input(extra_images), torch.from_numpy(extra_labels.astype(np.int64))
        n_real = max(1, round(batch * real_fraction)) if real_fraction < 1 else batch
        weight = class_weights(torch.cat([y_all.flatten(), y_ex.flatten()]), n_classes, class_weighting)
    else:
        n_real = batch
        weight = class_weights(y_all, n_classes, class_weighting)
    if weight is not None:
        weight = weight.to(dev)
    t0 = time.time()
    loss_val = float("nan")
    for step in tqdm(range(steps), disable=not progress, desc=desc, unit="step"):
        if should_stop is not None and step % STOP_CHECK_EVERY == 0 and should_stop():
            raise TrainingStopped(f"stopped at step {step} of {steps}")
        idx = torch.randint(0, len(x_all), (n_real,), generator=g)
        x, y = x_all[idx], y_all[idx]
        if has_extra and n_real < batch:
            jdx = torch.randint(0, len(x_ex), (batch - n_real,), generator=g)
            xe, ye = x_ex[jdx], y_ex[jdx]
            if extra_cutmix:
                xe, ye = cutmix(xe, ye, g)
            x, y = torch.cat([x, xe]), torch.cat([y, ye])
        x, y = augment(x, y, g, shift_px, jitter)
        x, y = x.to(dev), y.to(dev)
        loss = F.cross_entropy(model(x), y, weight=weight, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_val = loss.item()
    return SegTrainResult(model.eval(), time.time() - t0, steps, loss_val)


@torch.no_grad()
def predict_probs(model: UNet, images: np.ndarray, batch: int = 64, flip_tta: bool = True) -> np.ndarray:
    """uint8 images [N, H, W, 3] → class probabilities float32 [N, C, H, W] (averaged with the mirrored
    image's when ``flip_tta``). Runs on the model's device."""
    model.eval()
    dev = module_device(model)
    out = []
    for i in range(0, len(images), batch):
        x = to_input(images[i:i + batch]).to(dev)
        p = model(x).softmax(1)
        if flip_tta:
            p = (p + model(x.flip(3)).softmax(1).flip(3)) / 2
        out.append(p.cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def predict(model: UNet, images: np.ndarray, batch: int = 64, flip_tta: bool = True) -> np.ndarray:
    """uint8 images [N, H, W, 3] → predicted class map uint8 [N, H, W]."""
    return np.concatenate([predict_probs(model, images[i:i + batch], batch, flip_tta).argmax(1).astype(np.uint8)
                           for i in range(0, len(images), batch)])


def pseudo_labels(probs: np.ndarray, min_confidence: float = 0.0) -> np.ndarray:
    """Probabilities float32 [N, C, H, W] → label maps uint8 [N, H, W]; pixels whose top probability is
    below ``min_confidence`` become ``IGNORE``."""
    labels = probs.argmax(1).astype(np.uint8)
    if min_confidence > 0:
        labels[probs.max(1) < min_confidence] = IGNORE
    return labels


@torch.no_grad()
def embed(model: UNet, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """uint8 images [N, H, W, 3] → feature vectors float64 [N, D] (see :meth:`UNet.embed`)."""
    model.eval()
    dev = module_device(model)
    return torch.cat([model.embed(to_input(images[i:i + batch]).to(dev)).cpu()
                      for i in range(0, len(images), batch)]).double().numpy()


class Segmenter:
    """A trained U-Net plus what it belongs to: the class names and the generator whose project fitted it."""

    def __init__(self, model: UNet, class_names: list[str], generator_id: str | None = None,
                 meta: dict | None = None) -> None:
        if model.cfg.n_classes != len(class_names):
            raise ValueError(f"{len(class_names)} class names for a U-Net of {model.cfg.n_classes} classes")
        self.model, self.class_names = model.eval(), list(class_names)
        self.generator_id, self.meta = generator_id, meta or {}
        # The SimGAN refiner (model.refiner.Refiner) its student learned from when the project's images had
        # drifted from the generator's (Pipeline.train_segmenter); saved separately; push --refine uses it.
        self.refiner = None

    @property
    def device(self) -> torch.device:
        return module_device(self.model)

    def to(self, device: str | torch.device) -> "Segmenter":
        """Move the U-Net to ``device`` (in place); :meth:`label` runs there. Returns self."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def label(self, images: np.ndarray, batch: int = 64) -> Prediction:
        """uint8 images [N, H, W, 3] (H, W divisible by 16) → :class:`~model.interpreter.Prediction`;
        uncertainty: per-pixel entropy of the probabilities, in [0, log C]; score: mean of the top-10 %
        pixel entropies."""
        probs = predict_probs(self.model, images, batch)
        p = torch.from_numpy(probs)
        ent = -(p * p.clamp_min(1e-12).log()).sum(1)                                 # [N, H, W]
        flat = ent.reshape(len(images), -1)
        top = max(1, int(round(0.1 * flat.shape[1])))
        return Prediction(probs.argmax(1).astype(np.uint8), probs, ent.numpy(),
                             flat.topk(top, dim=1).values.mean(1).numpy())

    def save(self, path: str | Path) -> Path:
        """Write config, class names, generator id, weights (CPU tensors) and ``meta`` atomically."""
        state = {k: v.cpu() for k, v in self.model.state_dict().items()}
        return save_checkpoint(path, "unet", {"config": self.model.cfg.to_dict(), "state_dict": state,
                                              "class_names": self.class_names, "generator_id": self.generator_id,
                                              "meta": self.meta})

    @classmethod
    def load(cls, path: str | Path, generator_id: str | None = None) -> "Segmenter":
        data = load_checkpoint(path, "unet", generator_id)
        model = UNet(UNetConfig(**data["config"]))
        model.load_state_dict(data["state_dict"])
        names = data.get("class_names") or data.get("meta", {}).get("classes") or \
            [f"class{i}" for i in range(model.cfg.n_classes)]
        return cls(model, names, data.get("generator_id"), data.get("meta"))


def save_segmenter(model: UNet, path: str | Path, meta: dict | None = None) -> Path:
    """Write a bare U-Net (class names from ``meta["classes"]`` when given) atomically."""
    names = (meta or {}).get("classes") or [f"class{i}" for i in range(model.cfg.n_classes)]
    return Segmenter(model, names, meta=meta).save(path)


def load_segmenter(path: str | Path) -> UNet:
    """The bare U-Net of a checkpoint written by :func:`save_segmenter` or :meth:`Segmenter.save`."""
    return Segmenter.load(path).model
